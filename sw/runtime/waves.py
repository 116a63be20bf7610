"""Waves of a chip run: the VCD and a GTKWave save file that opens on the signals that matter.

``rdu sim --waves`` runs the chip model compiled with tracing (``tb.runner.build(...,
waves=True)``); Verilator writes ``dump.vcd`` into the run's folder. :func:`finish_waves` moves
it to ``DIR/waves.vcd`` and writes ``DIR/waves.gtkw`` next to it (``make waves`` opens the newest
one in GTKWave). The save file is built from the VCD's *header* only (the signal names) plus a
bounded scan of the first value changes (clock period, the first kernel launches), so it costs
about half a second however big the VCD is.

Sizes (default chip and model kjv-280k, ``rdu sim --prompt-ids 1 --tokens 1 --waves``, lean
trace): ~8,900 traced signals; 32 MB for loading the model, then ~117 MB per decode step
(~95,000 simulated cycles, ~1.2 KB per cycle); the traced simulation runs at ~7,500 cycles/s
(~14,500 without tracing). Tracing everything (``MINIRDU_TRACE=all``: 199,000 signals) writes
~16 KB per cycle at ~800 cycles/s, some 1.5 GB per step.

Groups (top to bottom; a signal the VCD does not have is left out, never an error)

``overview``            clk, ``run_done``, sequencer launch/busy/done, program busy, section phase,
                        entry and iteration, config busy and held, host DMA busy,
                        each HBM channel's busy, and every unit's busy: the one screen that shows
                        which units a kernel uses and where time goes
``host / run control``  sequencer (launch, busy, done, active, dependence stall, base, count,
                        iteration, mask, running units), host run state, CSR strobes, DMA
``section sequencer``   program start/busy/done, phase (1 lookup, 2 load, 3 kernel, 4 run),
                        section entry and iteration, error, section launches and unit mask,
                        prefetch (load with hold, held, release)
``config controller``   start/busy/done, status code, held, FSM state, config-bus writes
``HBM``                 one sub-group per channel (request ready = queue has space, request
                        accepted, busy, activate, read/write beats, row miss, refresh stall and
                        command, ports requesting it) and one per port (AGCU i / host DMA:
                        request valid/ready, granted)
``AGCU i``              start/busy/done/status, FSM state, iteration, the fabric streams (``rd``:
                        HBM -> fabric, ``wr``: fabric -> HBM) and its memory port, valid/ready
``PCU i`` / ``PMU i``   start/busy/done/status, iteration, then every input and output stream's
                        valid/ready (vector, scalar, control token); closed (click to open)

Colours: start/launch yellow, busy orange, done green, valid green, ready blue, stalls and
refresh red, HBM beats indigo; counters and iterations in decimal. The view starts just before
the first kernel launch (primary marker there) zoomed to that first kernel call; the named
markers ``a``, ``b``, ... sit on the first 26 kernel launches.

Where the signals come from (``rdu_chip`` = the simulation toplevel, ``dut`` = the chip):
``dut.host.sequencer``, ``dut.host``, ``dut.host.dma``, ``dut.config``, ``dut.memsys.hbm`` and
``.ch<c>``, ``dut.memsys.agcu<i>``, ``dut.fabric.pcu<i>`` / ``pmu<i>`` (the ports of each unit;
the waves build traces those, see ``tb/runner.py``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["VCD_NAME", "GTKW_NAME", "VcdVar", "VcdHeader", "WavesError", "scan_header",
           "collect_vcd", "write_gtkw", "finish_waves", "latest_waves"]

VCD_NAME = "waves.vcd"
GTKW_NAME = "waves.gtkw"
DUMP_NAMES = ("dump.vcd",)              # what cocotb's Verilator main writes into its cwd

# Colours (GTKWave's palette: vcd.gtkw.GTKWColor values).
NORMAL, RED, ORANGE, YELLOW, GREEN, BLUE, INDIGO, VIOLET = range(8)


class WavesError(RuntimeError):
    pass


@dataclass(frozen=True)
class VcdVar:
    path: str           # dotted scope path + name, without a bit range: "TOP.a.b.sig"
    width: int
    code: str           # the VCD identifier code
    range: str = ""     # "[7:0]" as declared ("" for a scalar)

    @property
    def gtkw_name(self) -> str:
        """The name GTKWave gives the signal (and expects in a save file)."""
        return self.path + self.range


@dataclass
class VcdHeader:
    timescale: tuple[int, str] = (1, "ps")        # (magnitude, unit)
    vars: dict[str, VcdVar] = field(default_factory=dict)
    scopes: set[str] = field(default_factory=set)
    header_bytes: int = 0                          # offset of the first byte after the header

    def get(self, path: str) -> VcdVar | None:
        return self.vars.get(path)

    def children(self, scope: str) -> list[str]:
        """Direct child scopes of ``scope`` (their last name component)."""
        pre = scope + "."
        out = {s[len(pre):] for s in self.scopes if s.startswith(pre) and "." not in s[len(pre):]}
        return sorted(out, key=_natural)


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _tokens(f, chunk=1 << 20):
    """Whitespace-separated tokens of a binary file, with the offset just past each token."""
    pos = 0
    rest = b""
    while True:
        data = f.read(chunk)
        if not data:
            if rest:
                yield rest.decode("utf-8", "replace"), pos
            return
        buf = rest + data
        start = pos - len(rest)
        parts = re.split(rb"(\s+)", buf)
        # the last part may continue in the next chunk
        off = start
        for p in parts[:-1]:
            off += len(p)
            if p and not p.isspace():
                yield p.decode("utf-8", "replace"), off
        rest = parts[-1]
        pos += len(data)


def scan_header(vcd: Path) -> VcdHeader:
    """Read the declarations of ``vcd`` (up to ``$enddefinitions``), never its value changes."""
    h = VcdHeader()
    stack: list[str] = []
    with open(vcd, "rb") as f:
        toks = _tokens(f)
        for tok, off in toks:
            if tok == "$scope":
                words = _until_end(toks)              # kind, name
                stack.append(words[-1] if words else "?")
                h.scopes.add(".".join(stack))
            elif tok == "$upscope":
                if stack:
                    stack.pop()
                _expect_end(toks)
            elif tok == "$var":
                words = _until_end(toks)
                if len(words) < 4:
                    continue
                _type, size, code, ref = words[0], words[1], words[2], words[3]
                rng = "".join(words[4:])
                m = re.match(r"^(.*?)(\[[^\]]*\])$", ref)
                if m and not rng:
                    ref, rng = m.group(1), m.group(2)
                path = ".".join(stack + [ref])
                try:
                    width = int(size)
                except ValueError:
                    width = 1
                h.vars.setdefault(path, VcdVar(path, width, code, rng))
            elif tok == "$timescale":
                words = _until_end(toks)
                m = re.match(r"^(\d+)\s*([munpf]?s)$", "".join(words))
                if m:
                    h.timescale = (int(m.group(1)), m.group(2))
            elif tok == "$enddefinitions":
                h.header_bytes = _expect_end(toks) or off
                return h
            elif tok.startswith("$") and tok != "$end":
                _expect_end(toks)                 # $date, $version, $comment
    if not h.vars:
        raise WavesError(f"{vcd}: no VCD header found (no $var before the end of the file)")
    return h


def _until_end(toks) -> list[str]:
    words = []
    for t, _ in toks:
        if t == "$end":
            break
        words.append(t)
    return words


def _expect_end(toks) -> int | None:
    """Skip to the next ``$end``; the offset just past it."""
    for t, off in toks:
        if t == "$end":
            return off
    return None


# --------------------------------------------------------------------------------------------
# Locating the chip in the VCD

@dataclass
class ChipScopes:
    top: str | None             # simulation toplevel scope (clk, rst, run_done, csr, ...)
    dut: str | None             # the chip: host, config, memsys, fabric below it


def find_chip(h: VcdHeader) -> ChipScopes:
    """The scopes of the toplevel and of the chip, found by the chip's sub-scopes (so a VCD
    from another toplevel name, or with Verilator's extra ``TOP`` level, works too)."""
    dut = None
    for s in sorted(h.scopes, key=lambda s: (s.count("."), s)):
        kids = set(h.children(s))
        if {"host", "memsys"} <= kids or {"host", "fabric"} <= kids:
            dut = s
            break
    top = None
    cands = []
    if dut is not None and "." in dut:
        cands.append(dut.rsplit(".", 1)[0])
    cands += sorted({v.path.rsplit(".", 1)[0] for v in h.vars.values()
                     if v.path.endswith(".run_done")}, key=lambda s: s.count("."))
    for c in cands:
        if f"{c}.clk" in h.vars or f"{c}.run_done" in h.vars:
            top = c
            break
    return ChipScopes(top, dut)


# --------------------------------------------------------------------------------------------
# What goes in the save file

@dataclass
class Trace:
    path: str
    alias: str
    color: int = NORMAL
    fmt: str = "hex"


@dataclass
class Group:
    name: str
    items: list = field(default_factory=list)      # Trace | Group
    closed: bool = False

    def traces(self):
        for it in self.items:
            if isinstance(it, Group):
                yield from it.traces()
            else:
                yield it


def _flag_color(sig: str) -> int:
    s = sig.lower()
    if s.endswith("valid"):
        return GREEN
    if s.endswith("ready") or s == "space":
        return BLUE
    if "start" in s or "launch" in s or s == "push":
        return YELLOW
    if "busy" in s:
        return ORANGE
    if s.endswith("done") or s == "run_done":
        return GREEN
    if "stall" in s or "refresh" in s or "error" in s or "miss" in s:
        return RED
    if "beat" in s:
        return INDIGO
    return NORMAL


_DEC = re.compile(r"(iteration|count|base|writes|beats|status|state|unit)$")


def _t(h: VcdHeader, scope: str | None, name: str, alias: str, color=None, fmt=None):
    if scope is None:
        return None
    v = h.get(f"{scope}.{name}")
    if v is None:
        return None
    if fmt is None:
        fmt = "dec" if (v.width > 1 and _DEC.search(name)) else "hex"
    return Trace(v.gtkw_name, alias, _flag_color(name) if color is None else color, fmt)


def _add(g: Group, *traces):
    for t in traces:
        if t is not None:
            g.items.append(t)


_STREAM_ORDER = {"in": ["vin", "sin", "win", "swin", "waddr", "gidx", "sidx", "ctl_in"],
                 "out": ["vout", "rout", "sout", "ctl_out"]}


def _streams(h: VcdHeader, scope: str) -> list[tuple[str, str]]:
    """(stream name as in the VCD, short label) for every ``X__valid`` of ``scope``, inputs
    first, in a fixed order by kind then index; unknown streams last."""
    pre = scope + "."
    names = set()
    for p in h.vars:
        if p.startswith(pre) and p.endswith("__valid") and "." not in p[len(pre):]:
            names.add(p[len(pre):-len("__valid")])

    def key(n):
        base = re.sub(r"__\d+$", "", n)
        idx = re.search(r"__(\d+)$", n)
        for rank, kind in enumerate(_STREAM_ORDER["in"] + _STREAM_ORDER["out"]):
            if base == kind:
                return (rank, int(idx.group(1)) if idx else 0, n)
        return (99, 0, n)
    return [(n, n.replace("__", "")) for n in sorted(names, key=key)]


def _unit_group(h, scope, label, *, ctrl_prefix="ctrl__", closed=True) -> Group:
    g = Group(label.upper(), closed=closed)
    for sig, what in (("start", "start"), ("busy", "busy"), ("done", "done"),
                      ("status", "status"), ("iteration", "iteration")):
        _add(g, _t(h, scope, ctrl_prefix + sig, f"{label} {what}"))
    for s, short in _streams(h, scope):
        _add(g, _t(h, scope, f"{s}__valid", f"{label} {short} valid"),
             _t(h, scope, f"{s}__ready", f"{label} {short} ready"))
    return g


def _units(h: VcdHeader, scope: str | None, kind: str) -> list[str]:
    if scope is None:
        return []
    return [c for c in h.children(scope) if re.fullmatch(rf"{kind}\d+", c)]


def build_groups(h: VcdHeader) -> list[Group]:
    """The save file's groups for the chip found in ``h`` (empty groups are dropped)."""
    cs = find_chip(h)
    top, dut = cs.top, cs.dut
    sub = (lambda *p: ".".join([dut, *p])) if dut else (lambda *p: None)
    seq, host, dma, cfg = sub("host", "sequencer"), sub("host"), sub("host", "dma"), sub("config")
    # Amaranth renames the host's ``sections`` submodule (``sections$N``) when a signal of the
    # same name exists in its scope: take whichever the VCD has.
    sec = next((f"{sub('host')}.{c}" for c in (h.children(sub("host")) if dut else ())
                if re.fullmatch(r"sections(\$\d+)?", c)), None)
    memsys, hbm, fabric = sub("memsys"), sub("memsys", "hbm"), sub("fabric")
    agcus = _units(h, memsys, "agcu")
    pcus = _units(h, fabric, "pcu")
    pmus = _units(h, fabric, "pmu")
    chans = _units(h, hbm, "ch")

    ov = Group("overview")
    _add(ov, _t(h, top, "clk", "clk", NORMAL), _t(h, top, "run_done", "run_done"),
         _t(h, seq, "launch", "seq launch"), _t(h, seq, "busy", "seq busy"),
         _t(h, seq, "done", "seq done"), _t(h, sec, "busy", "program busy"),
         _t(h, sec, "phase", "section phase", NORMAL, "dec"),
         _t(h, sec, "entry", "section", NORMAL, "dec"),
         _t(h, sec, "iteration", "section iteration", NORMAL, "dec"),
         _t(h, cfg, "busy", "config busy"), _t(h, cfg, "held", "config held (prefetched)"),
         _t(h, dma, "busy", "host DMA busy"))
    for c in chans:
        _add(ov, _t(h, f"{hbm}.{c}", "busy", f"HBM {c} busy"))
    for a in agcus:
        _add(ov, _t(h, f"{memsys}.{a}", "busy", f"{a} busy"))
    for u in pcus + pmus:
        _add(ov, _t(h, f"{fabric}.{u}", "ctrl__busy", f"{u} busy"))

    hc = Group("host / run control")
    _add(hc, _t(h, top, "rst", "rst", RED),
         _t(h, seq, "launch", "seq launch"), _t(h, seq, "busy", "seq busy"),
         _t(h, seq, "done", "seq done"), _t(h, seq, "active", "seq active", ORANGE),
         _t(h, seq, "dep_stall", "seq dependence stall"),
         _t(h, seq, "base", "seq base"), _t(h, seq, "count", "seq count"),
         _t(h, seq, "unit_iteration", "seq iteration"),
         _t(h, seq, "mask", "seq unit mask"), _t(h, seq, "running", "seq running units"),
         _t(h, seq, "unit_start", "seq unit start"), _t(h, seq, "unit_done", "seq unit done"),
         _t(h, host, "run_start", "host run start"), _t(h, host, "run_done", "host run done"),
         _t(h, host, "unit_busy", "host unit busy"),
         _t(h, top, "csr__w_en", "csr write"), _t(h, top, "csr__r_en", "csr read"),
         _t(h, top, "csr__addr", "csr addr", NORMAL, "hex"),
         _t(h, dma, "start", "DMA start"), _t(h, dma, "busy", "DMA busy"),
         _t(h, dma, "done", "DMA done"), _t(h, dma, "to_hbm", "DMA to HBM", NORMAL),
         _t(h, top, "h2c__valid", "h2c valid"), _t(h, top, "h2c__ready", "h2c ready"),
         _t(h, top, "c2h__valid", "c2h valid"), _t(h, top, "c2h__ready", "c2h ready"))

    sg = Group("section sequencer")
    _add(sg, _t(h, sec, "start", "program start"), _t(h, sec, "busy", "program busy"),
         _t(h, sec, "done", "program done"), _t(h, sec, "phase", "phase", NORMAL, "dec"),
         _t(h, sec, "entry", "section entry", NORMAL, "dec"),
         _t(h, sec, "iteration", "iteration", NORMAL, "dec"),
         _t(h, sec, "error", "error", NORMAL, "dec"),
         _t(h, sec, "launch", "section launch"), _t(h, sec, "mask", "section units"),
         _t(h, sec, "cc_hold", "prefetch (load with hold)"),
         _t(h, sec, "cc_held", "prefetched, held"), _t(h, sec, "cc_release", "release"),
         _t(h, sec, "to_config", "DMA -> config"))

    cc = Group("config controller")
    _add(cc, _t(h, cfg, "start", "config start"), _t(h, cfg, "busy", "config busy"),
         _t(h, cfg, "done", "config done"), _t(h, cfg, "status", "config status"),
         _t(h, cfg, "held", "config held"),
         _t(h, cfg, "fsm_state", "config state"), _t(h, cfg, "writes", "config writes"),
         _t(h, cfg, "data__valid", "bitstream valid"), _t(h, cfg, "data__ready", "bitstream ready"),
         _t(h, cfg, "cfg__we", "cfg bus write", YELLOW),
         _t(h, cfg, "cfg__unit", "cfg bus unit", NORMAL, "dec"),
         _t(h, cfg, "cfg__addr", "cfg bus reg", NORMAL, "dec"))

    hb = Group("HBM")
    n_ports = len(agcus) + 1
    port_names = {i: a for i, a in enumerate(agcus)}
    port_names[len(agcus)] = "dma"
    for c in chans:
        ci = c[2:]
        g = Group(f"HBM {c}", closed=False)
        s = f"{hbm}.{c}"
        _add(g, _t(h, s, "space", f"{c} req ready (queue space)"),
             _t(h, s, "push", f"{c} req accepted"),
             _t(h, hbm, f"c{ci}_want", f"{c} req valid (ports)", GREEN, "bin"),
             _t(h, s, "busy", f"{c} busy"), _t(h, s, "act", f"{c} activate", VIOLET),
             _t(h, s, "rd_beat", f"{c} read beat"), _t(h, s, "wr_beat", f"{c} write beat"),
             _t(h, s, "row_miss", f"{c} row miss"),
             _t(h, s, "refresh_stall", f"{c} refresh stall"),
             _t(h, s, "refresh_cmd", f"{c} refresh cmd", VIOLET))
        if g.items:
            hb.items.append(g)
    for p in range(n_ports):
        g = Group(f"HBM port {p} ({port_names.get(p, '?')})", closed=True)
        _add(g, _t(h, hbm, f"ports__{p}__req__valid", f"port{p} req valid"),
             _t(h, hbm, f"ports__{p}__req__ready", f"port{p} req ready"),
             _t(h, hbm, f"p{p}_granted", f"port{p} granted", YELLOW),
             _t(h, hbm, f"ports__{p}__rdata__valid", f"port{p} rdata valid"),
             _t(h, hbm, f"ports__{p}__wdata__valid", f"port{p} wdata valid"),
             _t(h, hbm, f"ports__{p}__wdata__ready", f"port{p} wdata ready"))
        if g.items:
            hb.items.append(g)

    groups = [ov, hc, sg, cc, hb]
    for a in agcus:
        s = f"{memsys}.{a}"
        g = Group(a.upper(), closed=False)
        _add(g, _t(h, s, "start", f"{a} start"), _t(h, s, "busy", f"{a} busy"),
             _t(h, s, "done", f"{a} done"), _t(h, s, "status", f"{a} status"),
             _t(h, s, "fsm_state", f"{a} state"), _t(h, s, "iteration", f"{a} iteration"),
             _t(h, s, "rd__valid", f"{a} rd valid (to fabric)"),
             _t(h, s, "rd__ready", f"{a} rd ready"),
             _t(h, s, "wr__valid", f"{a} wr valid (from fabric)"),
             _t(h, s, "wr__ready", f"{a} wr ready"),
             _t(h, s, "mem__req__valid", f"{a} mem req valid"),
             _t(h, s, "mem__req__ready", f"{a} mem req ready"),
             _t(h, s, "mem__rdata__valid", f"{a} mem rdata valid"),
             _t(h, s, "mem__wdata__valid", f"{a} mem wdata valid"),
             _t(h, s, "mem__wdata__ready", f"{a} mem wdata ready"))
        groups.append(g)
    for u in pcus + pmus:
        groups.append(_unit_group(h, f"{fabric}.{u}", u, closed=True))
    return [_prune(g) for g in groups if any(True for _ in g.traces())]


def _prune(g: Group) -> Group:
    g.items = [_prune(i) if isinstance(i, Group) else i for i in g.items
               if not isinstance(i, Group) or any(True for _ in i.traces())]
    return g


# --------------------------------------------------------------------------------------------
# A short look at the first value changes: clock period, first launch and the end of that call

N_NAMED_MARKERS = 26                  # GTKWave's markers 'a' .. 'z'


@dataclass
class FirstEvents:
    period: int | None = None          # clock period in VCD time units
    launch: int | None = None          # first sequencer launch
    call_done: int | None = None       # the sequencer's done rising after it
    launches: list = field(default_factory=list)   # the first N_NAMED_MARKERS launches
    end: int | None = None             # last timestamp seen by the scan


def scan_first_events(vcd: Path, h: VcdHeader, *, max_bytes: int = 256 << 20) -> FirstEvents:
    """Clock period, the first kernel launches and the end of the first call, from the value
    changes after the header; reads at most about ``max_bytes`` of them."""
    cs = find_chip(h)
    clk = h.get(f"{cs.top}.clk") if cs.top else None
    seq = f"{cs.dut}.host.sequencer" if cs.dut else None
    launch = h.get(f"{seq}.launch") if seq else None
    done = h.get(f"{seq}.done") if seq else None
    ev = FirstEvents()
    rises = []
    t = 0
    with open(vcd, "rb") as f:
        f.seek(h.header_bytes)
        read = 0
        for raw in f:
            read += len(raw)
            line = raw.strip()
            if not line:
                continue
            c = line[:1]
            if c == b"#":
                try:
                    t = int(line[1:])
                except ValueError:
                    pass
                ev.end = t
                if read > max_bytes:
                    break
                continue
            if c in (b"0", b"1") and len(line) > 1:
                val, code = c, line[1:].decode("ascii", "replace")
            else:
                continue
            if clk and code == clk.code and val == b"1" and len(rises) < 3:
                rises.append(t)
            elif launch and code == launch.code and val == b"1":
                if ev.launch is None:
                    ev.launch = t
                if len(ev.launches) < N_NAMED_MARKERS:
                    ev.launches.append(t)
            elif (done and code == done.code and val == b"1" and ev.launch is not None
                  and ev.call_done is None and t > ev.launch):
                ev.call_done = t
            if (len(rises) >= 3 and ev.call_done is not None
                    and len(ev.launches) >= N_NAMED_MARKERS):
                break
    if len(rises) >= 2:
        ev.period = rises[-1] - rises[-2]
    return ev


# --------------------------------------------------------------------------------------------
# Writing the save file

WINDOW_PX = 1100                      # the wave pane width the zoom is computed for


def _zoom_for(span: float) -> float:
    """GTKWave zoom value showing ``span`` time units across :data:`WINDOW_PX` pixels (GTKWave:
    one 200-pixel frame is ``2 ** -zoom`` time units)."""
    return -math.log2(max(span, 1.0) * 200.0 / WINDOW_PX)


def write_gtkw(vcd: Path, gtkw: Path, *, header: VcdHeader | None = None,
               events: FirstEvents | None = None) -> dict:
    """Write the GTKWave save file ``gtkw`` for ``vcd``; returns a summary (groups and their
    trace counts, the signals used, zoom and marker)."""
    from vcd.gtkw import GTKWSave

    vcd, gtkw = Path(vcd), Path(gtkw)
    h = header or scan_header(vcd)
    ev = events or scan_first_events(vcd, h)
    groups = build_groups(h)
    period = ev.period or 10
    if ev.launch is not None:
        end = ev.call_done if ev.call_done is not None else ev.launch + 2000 * period
        margin = max(20 * period, (end - ev.launch) // 20)
        start, span = max(0, ev.launch - margin), (end - ev.launch) + 2 * margin
        marker = ev.launch
    else:
        start, span, marker = 0, 2000 * period, -1
    zoom = _zoom_for(span)
    gtkw.parent.mkdir(parents=True, exist_ok=True)
    with open(gtkw, "w") as f:
        s = GTKWSave(f)
        s.comment("minirdu waves (sw/runtime/waves.py): open with  gtkwave " + gtkw.name,
                  f"first kernel launch at {ev.launch}, its call done at {ev.call_done} "
                  f"(VCD time units, timescale {h.timescale[0]}{h.timescale[1]}, "
                  f"clock period {ev.period}); markers a, b, ... at the first "
                  f"{len(ev.launches)} kernel launches")
        s.dumpfile(str(vcd.resolve()))
        s.savefile(str(gtkw.resolve()))
        s.timestart(start)
        s.size(1800, 1000)
        s.pos(-1, -1)
        s.zoom_markers(zoom, marker, **dict(zip("abcdefghijklmnopqrstuvwxyz", ev.launches)))
        cs = find_chip(h)
        for tree in (cs.top, cs.dut):
            if tree:
                s.treeopen(tree)
        s.signals_width(320)
        s.sst_expanded(True)
        for g in groups:
            _emit(s, g)
    used = [t.path for g in groups for t in g.traces()]
    return {"gtkw": str(gtkw), "groups": {g.name: sum(1 for _ in g.traces()) for g in groups},
            "signals": used, "zoom": round(zoom, 3), "marker": marker, "timestart": start,
            "clock_period": ev.period, "first_launch": ev.launch, "first_call_done": ev.call_done,
            "launch_markers": ev.launches}


def _emit(s, g: Group):
    from vcd.gtkw import GTKWColor
    with s.group(g.name, closed=g.closed):
        for it in g.items:
            if isinstance(it, Group):
                _emit(s, it)
            else:
                s.trace(it.path, alias=it.alias, color=GTKWColor(it.color), datafmt=it.fmt)


# --------------------------------------------------------------------------------------------
# The run's files

def collect_vcd(out: Path, search=()) -> Path:
    """Move the VCD the simulation wrote (``dump.vcd`` in ``out`` or one of ``search``) to
    ``out/waves.vcd`` and return that path. An existing ``waves.vcd`` with no newer dump is
    kept (a second call is harmless)."""
    out = Path(out)
    target = out / VCD_NAME
    cands = [Path(d) / n for d in (out, *search) for n in DUMP_NAMES]
    found = [c for c in cands if c.is_file()]
    if found:
        src = max(found, key=lambda p: p.stat().st_mtime)
        try:
            os.replace(src, target)
        except OSError:                  # another filesystem
            shutil.move(str(src), str(target))
    if not target.is_file():
        raise WavesError(f"no VCD in {out} (looked for {', '.join(str(c) for c in cands)}); "
                         f"was the chip built with waves=True?")
    return target


def finish_waves(out: Path, *, search=(), quiet: bool = False, strict: bool = False) -> dict:
    """After a ``--waves`` run: ``out/waves.vcd`` and ``out/waves.gtkw``; returns the summary of
    :func:`write_gtkw` plus the VCD's path and size. Prints where they are unless ``quiet``.

    Without a usable VCD (the simulation died before writing one) it says so on stderr and
    returns ``{"error": ...}`` (so the run's own error is the one reported), or raises
    :class:`WavesError` if ``strict``."""
    out = Path(out)
    try:
        vcd = collect_vcd(out, search)
        info = write_gtkw(vcd, out / GTKW_NAME)
    except (WavesError, OSError) as e:
        if strict:
            raise
        print(f"waves:            none ({e})", file=sys.stderr)
        return {"error": str(e)}
    info["vcd"] = str(vcd)
    info["vcd_bytes"] = vcd.stat().st_size
    if not quiet:
        print(f"waves:            {vcd} ({info['vcd_bytes'] / 1e6:,.1f} MB), "
              f"{out / GTKW_NAME} ({sum(info['groups'].values())} signals in "
              f"{len(info['groups'])} groups); `make waves` opens it", file=sys.stderr)
    return info


def latest_waves(root: Path = Path("sim_results")) -> Path | None:
    """The newest ``root/*/waves.gtkw`` (by modification time), or None."""
    found = [p for p in Path(root).glob(f"*/{GTKW_NAME}") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _main(argv=None) -> int:
    """``python -m sw.runtime.waves [DIR|VCD]``: (re)write the save file of a run; ``--latest``
    prints the newest run's save file (for ``make waves``)."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m sw.runtime.waves")
    ap.add_argument("path", nargs="?", help="a run folder or a VCD")
    ap.add_argument("--latest", action="store_true",
                    help="print the newest sim_results/*/waves.gtkw and exit")
    a = ap.parse_args(argv)
    if a.latest:
        p = latest_waves()
        if p is None:
            print("no run with waves under sim_results/ (run `rdu sim --waves` first)",
                  file=sys.stderr)
            return 1
        print(p)
        return 0
    if not a.path:
        ap.error("give a run folder or a VCD (or --latest)")
    p = Path(a.path)
    try:
        if p.is_dir():
            info = finish_waves(p)
        else:
            info = write_gtkw(p, p.with_suffix(".gtkw"))
            print(info["gtkw"])
    except (OSError, WavesError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())

"""The mapping report and the manifest of a compiled decode (``rdu compile``).

Contract
--------
:func:`step_plan` takes a :class:`sw.compiler.program.DecodeProgram` and the decode step to
describe (``pos``, ``token``) and returns a :class:`StepPlan`: the step's calls in order and its
*distinct* kernels (each with a file label, the calls that launch it, its bitstream), plus the
HBM traffic of every call, read from the kernels' AGCU programs and classified by HBM region.
:func:`mapping_report` turns a plan into the readable report (text), :func:`manifest` into the
machine-readable description (a JSON-able dict) that ``rdu compile`` writes beside the
bitstreams. Both only read the program: the compiler and the kernel builders own the data.

Kernel labels: the kernel builder's name (``wq``, ``norm_attn``, ``attn_softmax``...), plus
``.pos<P>`` for a kernel built for one decode position (its metadata has ``pos``: RoPE, KV
append, attention scores, weighted sum) and ``.tok<T>`` for one built for one input token (the
embedding row load); a clash gets ``_2``, ``_3``... Per-layer kernels are built once and
launched once per layer at sequencer iteration ``l``.

What the report holds:

- header: model, shape, mode, context, chip geometry, the step described, compile time;
- a table of the kernels (units, routes, bitstream bytes, launches, HBM bytes per launch);
- per kernel: the units used (name, id, grid position, role, what the builder configured), a
  grid picture of the tiles used, the routes (network, source -> destinations, hops), the PMU
  buffer map decoded from the PMU register writes (buffers, base, size in beats, both address
  programs), the AGCU programs decoded from the AGCU register writes (mode, base, counts,
  strides, iteration stride, the HBM region hit) and the bytes read/written per launch;
- the HBM layout: regions, the layout of a layer block, the KV cache geometry;
- layer/looped modes: the programs of sections (per section: table entry, kernel, units used,
  bitstream bytes, watchdog), the section table (entry, HBM slot, slot and bitstream bytes,
  file) and the host launches of a token (first entry, sections, iterations, the updates the
  host DMAs before it);
- per token: launches, bitstream bytes loaded, HBM bytes by category (GEMV weights incl. their
  REQUANT words and the embedding row; other constants and tables; KV cache; activations; in
  layer/looped mode ``config``: the section bitstreams the chip reads from HBM, once per
  section run, plus the position's bitstreams the host DMAs into their slots) and by
  kernel, at the described position and at the last position of the context.

The HBM bytes of a call are the beats of its AGCU programs (READ and WRITE, one iteration) times
the beat size, every beat address classified by the region of the map it falls in (a region owns
its burst padding). Checks, printed as warnings at the top of the report (there should be none):
the AGCU bytes differ from the kernel's declared ``reads``/``writes``; a beat outside every
region; a call of layer ``l`` touching another layer's block or KV cache. Beats moved past an
operand's declared size but inside its region's burst padding are listed as notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from hdl.agcu import AgcuMode, AgcuReg, agcu_count_reg, agcu_stride_reg
from hdl.pmu import Ctrl, PmuReg, RdMode, WrMode, pmu_depth, rd_count_reg, rd_stride_reg, \
    wr_count_reg, wr_stride_reg
from hdl.unitmap import unit_map
from sw.kernels.builder import agcu_writable_counters

__all__ = ["StepPlan", "KernelEntry", "AgcuView", "PmuView", "CATEGORIES", "step_plan",
           "agcu_programs", "pmu_buffers", "classify", "hbm_touch", "mapping_report", "manifest"]

CATEGORIES = ("weights", "constants", "KV cache", "activations")
_CATEGORY_NOTE = {
    "weights": "GEMV weight blobs with their REQUANT words, the embedding row",
    "constants": "norm/RoPE/attention/SwiGLU blobs, RoPE table rows",
    "KV cache": "K and V rows read and the appended row",
    "activations": "x, h, q, k, v, e, sums, ... between kernels; the next token",
    "config": "section bitstreams: read by the chip's config controller, the position's "
              "sections DMA'd by the host",
}


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _s16(v: int) -> int:
    v &= 0xFFFF
    return v - (1 << 16) if v & 0x8000 else v


def _up(v: int, a: int) -> int:
    return -(-v // a) * a


def _n(v: int) -> str:
    return f"{v:,}"


# ---- decoded unit programs -----------------------------------------------------------------

@dataclass
class AgcuView:
    """One AGCU program of a kernel, decoded from its register writes."""
    unit: str
    pos: tuple | None
    role: str
    mode: str                 # "read" | "write"
    base: int                 # beat address at iteration 0
    counts: tuple
    strides: tuple
    iter_stride: int          # beats per sequencer iteration
    region: tuple             # (first beat, beats) the AGCU may touch

    @property
    def beats(self) -> int:
        n = 1
        for c in self.counts:
            n *= max(c, 1)
        return n

    def beat_addrs(self, iteration: int = 0):
        """Every beat address the program moves at ``iteration`` (numpy array)."""
        a = np.array([self.base + iteration * self.iter_stride], dtype=np.int64)
        for c, s in zip(self.counts, self.strides):
            a = np.add.outer(np.arange(max(c, 1), dtype=np.int64) * s, a).ravel()
        return a

    def to_json(self, beat_bytes: int) -> dict:
        return {"unit": self.unit, "role": self.role, "mode": self.mode, "base_beat": self.base,
                "base_addr": self.base * beat_bytes, "counts": list(self.counts),
                "strides": list(self.strides), "iter_stride_beats": self.iter_stride,
                "region_beats": list(self.region), "beats": self.beats,
                "bytes": self.beats * beat_bytes}


def agcu_programs(kernel) -> list[AgcuView]:
    """The AGCU programs of ``kernel`` (a :class:`DecodeKernel`), in unit order."""
    p = kernel.params
    out = []
    for cfg in sorted(kernel.builder.units.values(), key=lambda c: c.unit.id):
        if cfg.unit.kind != "agcu":
            continue
        w = dict(cfg.writes)
        counts, strides = [], []
        for j in range(agcu_writable_counters(p)):
            if agcu_count_reg(j) not in w:
                break
            counts.append(w[agcu_count_reg(j)])
            strides.append(_s32(w.get(agcu_stride_reg(j), 0)))
        while len(counts) > 1 and counts[-1] <= 1:
            counts.pop()
            strides.pop()
        mode = AgcuMode(w.get(AgcuReg.MODE, 0)).name.lower()
        out.append(AgcuView(cfg.unit.name, cfg.unit.pos, cfg.role, mode, w.get(AgcuReg.BASE, 0),
                            tuple(counts), tuple(strides), _s32(w.get(AgcuReg.ITER_STRIDE, 0)),
                            (w.get(AgcuReg.REGION_BASE, 0), w.get(AgcuReg.REGION_BEATS, 0))))
    return out


@dataclass
class PmuView:
    """One PMU configuration of a kernel, decoded from its register writes (``hdl/pmu.py``)."""
    unit: str
    pos: tuple | None
    role: str
    depth: int                # beats in the scratchpad
    ctrl: int
    buf_base: int
    buf_size: int
    n_buf: int
    wr_mode: int
    wr_passes: int
    wr_base: int
    wr_iter_stride: int
    wr_counts: tuple
    wr_strides: tuple
    rd_mode: int
    rd_service: bool
    rd_passes: int
    rd_repeat: int
    rd_base: int
    rd_iter_stride: int
    tbl_size: int
    rd_counts: tuple
    rd_strides: tuple

    @property
    def region(self) -> tuple[int, int]:
        """[first beat, end beat) of the buffer region."""
        return self.buf_base, self.buf_base + self.n_buf * self.buf_size

    def ctrl_text(self) -> str:
        names = [f.name for f in Ctrl if self.ctrl & f]
        return " ".join(names) if names else "no SYNC"

    def write_text(self) -> str:
        if not self.wr_passes:
            return "idle"
        src = "words from swin" if self.wr_mode & WrMode.SCALAR else "beats from win"
        unit = "word" if self.wr_mode & WrMode.SCALAR else "beat"
        t = (f"{self.wr_passes} pass{'es' if self.wr_passes != 1 else ''}, {src}, base "
             f"{unit} {self.wr_base}, counts {list(self.wr_counts)} strides "
             f"{list(self.wr_strides)}")
        if self.wr_mode & WrMode.ADDR_STREAM:
            t += ", + waddr offsets"
        if self.wr_iter_stride:
            t += f", {self.wr_iter_stride:+d} per iteration"
        return t

    def read_text(self) -> str:
        mode = RdMode(self.rd_mode)
        what = {RdMode.VECTOR: "vector beats to rout", RdMode.GATHER: "gather (gidx -> rout)",
                RdMode.SCALAR: "scalar words to sout",
                RdMode.SGATHER: "scalar gather (sidx -> sout)"}[mode]
        unit = "beat" if mode == RdMode.VECTOR else "word"
        if self.rd_service:
            return (f"LUT service, {what}, table of {self.tbl_size} words at word "
                    f"{self.rd_base}")
        if not self.rd_passes:
            return "idle"
        t = (f"{self.rd_passes} pass{'es' if self.rd_passes != 1 else ''} x {self.rd_repeat} "
             f"repeat{'s' if self.rd_repeat != 1 else ''}, {what}, base {unit} {self.rd_base}, "
             f"counts {list(self.rd_counts)} strides {list(self.rd_strides)}")
        if mode in (RdMode.GATHER, RdMode.SGATHER):
            t += f", table {self.tbl_size} words"
        if self.rd_iter_stride:
            t += f", {self.rd_iter_stride:+d} per iteration"
        return t

    def bar(self, width: int = 32) -> str:
        lo, hi = self.region
        cells = []
        for i in range(width):
            a, b = i * self.depth / width, (i + 1) * self.depth / width
            cells.append("#" if lo < b and hi > a else ".")
        return "|" + "".join(cells) + "|"

    def to_json(self) -> dict:
        return {"unit": self.unit, "role": self.role, "ctrl": self.ctrl_text(),
                "buf_base": self.buf_base, "buf_size": self.buf_size, "n_buf": self.n_buf,
                "region_beats": list(self.region), "depth_beats": self.depth,
                "write": self.write_text(), "read": self.read_text()}


def pmu_buffers(kernel) -> list[PmuView]:
    """The PMU configurations of ``kernel``, in unit order."""
    p = kernel.params
    nc = getattr(p, "pmu_counters", 3)
    depth = pmu_depth(p)
    out = []
    for cfg in sorted(kernel.builder.units.values(), key=lambda c: c.unit.id):
        if cfg.unit.kind != "pmu":
            continue
        w = dict(cfg.writes)

        def chain(count_reg, stride_reg):
            cs = [w.get(count_reg(j), 1) for j in range(nc)]
            ss = [_s16(w.get(stride_reg(j), 0)) for j in range(nc)]
            while len(cs) > 1 and cs[-1] <= 1:
                cs.pop()
                ss.pop()
            return tuple(cs), tuple(ss)

        wc, ws = chain(wr_count_reg, wr_stride_reg)
        rc, rs = chain(rd_count_reg, rd_stride_reg)
        rd = w.get(PmuReg.RD_MODE, 0)
        out.append(PmuView(
            cfg.unit.name, cfg.unit.pos, cfg.role, depth, w.get(PmuReg.CTRL, 0),
            w.get(PmuReg.BUF_BASE, 0), w.get(PmuReg.BUF_SIZE, depth), w.get(PmuReg.N_BUF, 1),
            w.get(PmuReg.WR_MODE, 0), w.get(PmuReg.WR_PASSES, 0),
            _s16(w.get(PmuReg.WR_BASE, 0)), _s16(w.get(PmuReg.WR_ITER_STRIDE, 0)), wc, ws,
            rd & 3, bool(rd & 4), w.get(PmuReg.RD_PASSES, 0), max(w.get(PmuReg.RD_REPEAT, 1), 1),
            _s16(w.get(PmuReg.RD_BASE, 0)), _s16(w.get(PmuReg.RD_ITER_STRIDE, 0)),
            w.get(PmuReg.TBL_SIZE, 0), rc, rs))
    return out


# ---- HBM regions --------------------------------------------------------------------------

PAD_MARK = "in the burst padding it owns"


def _category(group: str, pattern: str) -> str:
    if group == "activation":
        return "activations"
    if group == "kv":
        return "KV cache"
    if group == "embedding":
        return "weights"
    if group == "config":
        return "config"
    if group in ("layer", "final"):
        return "weights" if pattern == "gemv" else "constants"
    return "constants"


def _rows(offs, row_bytes: int, bb: int, n_rows: int) -> str:
    lo = int(offs.min()) // row_bytes
    hi = min((int(offs.max()) + bb) // row_bytes - 1, n_rows - 1)
    return f"row {lo}" if hi <= lo else f"rows {lo}..{hi}"


def _where(prog, name: str, group: str, offs) -> str:
    bb = prog.params.beat_bytes
    if group == "kv":
        cache = _up(prog.context * prog.kv_row_bytes, bb)
        parts = []
        for half, sel in (("K", offs[offs < cache]), ("V", offs[offs >= cache] - cache)):
            if len(sel):
                parts.append(f"{half} {_rows(sel, prog.kv_row_bytes, bb, prog.context)}")
        return f"{name.replace('K, V cache', 'KV cache')}: {', '.join(parts)}"
    if group == "layer":
        names = sorted(prog.blob_offsets, key=prog.blob_offsets.get)
        starts = np.array([prog.blob_offsets[n] for n in names])
        hit = np.unique(np.searchsorted(starts, offs, side="right") - 1)
        return f"{name}: {', '.join(names[i] for i in hit)}"
    if group == "embedding":
        return f"embedding {_rows(offs, prog.emb_row_bytes, bb, prog.qm.config.vocab_size)}"
    if group == "activation":
        return f"activation {name}"
    return name


def hbm_touch(prog, beats, pattern: str = "") -> list[tuple[str, str, int]]:
    """``[(category, where, beats)]``: the HBM regions of ``prog``'s map that the beat
    addresses ``beats`` fall in, classified (``pattern``: the kernel's; GEMV blobs are weights,
    other blobs constants). Beats outside every region are category ``"other"``."""
    bb = prog.params.beat_bytes
    burst = bb * prog.params.hbm_burst_beats
    regs = sorted(prog.regions, key=lambda r: r[2])
    starts = np.array([r[2] for r in regs], dtype=np.int64)
    # a region owns whole bursts (sw/compiler/program.py's allocator): its padding is its own
    ends = np.array([r[2] + _up(max(r[3], 1), burst) for r in regs], dtype=np.int64)
    addr = np.asarray(beats, dtype=np.int64).ravel() * bb
    idx = np.searchsorted(starts, addr, side="right") - 1
    ok = (idx >= 0) & (addr < ends[np.clip(idx, 0, None)])
    out = []
    for i in np.unique(idx[ok]):
        name, group, base, n = regs[i]
        sel = addr[ok & (idx == i)] - base
        where = _where(prog, name, group, sel)
        pad = int((sel >= _up(max(n, 1), bb)).sum())
        if pad:
            where += f" (+{pad} beat{'s' if pad != 1 else ''} past its {n} B, {PAD_MARK})"
        out.append((_category(group, pattern), where, len(sel)))
    if (~ok).any():
        bad = addr[~ok]
        out.append(("other", f"{len(bad)} beats outside every region (first 0x{int(bad[0]):06x})",
                    len(bad)))
    return out


def classify(prog, addr: int, pattern: str = "") -> tuple[str, str]:
    """``(category, where)`` of HBM byte ``addr``."""
    cat, where, _ = hbm_touch(prog, [addr // prog.params.beat_bytes], pattern)[0]
    return cat, where


# ---- the plan of one step ------------------------------------------------------------------

@dataclass
class KernelEntry:
    """A distinct kernel of a decode step."""
    label: str                     # file label: builder name [+ .pos<P>] [+ .tok<T>]
    kernel: object                 # DecodeKernel
    calls: list = field(default_factory=list)        # call labels
    iterations: list = field(default_factory=list)   # sequencer iteration of each call
    position: int | None = None
    token: int | None = None
    bitstream: bytes = b""
    agcus: list = field(default_factory=list)
    pmus: list = field(default_factory=list)

    @property
    def hbm_bytes(self) -> int:
        return sum(a.beats for a in self.agcus) * self.kernel.params.beat_bytes


@dataclass
class StepPlan:
    prog: object
    pos: int
    token: int
    calls: list                    # [Call]
    kernels: list                  # [KernelEntry], first-launch order
    call_kernel: list              # index into kernels for each call
    traffic: list                  # per call: {category: bytes}
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    # layer / looped modes: the host launches of the step (Call and ProgramLaunch objects)
    launch_list: list | None = None

    @property
    def launches(self) -> int:
        """Host launches per token (op: every kernel call; layer/looped: embed + programs)."""
        return len(self.launch_list if self.launch_list is not None else self.calls)

    @property
    def programs(self) -> list:
        return [x for x in self.launch_list or [] if x.kind == "program"]

    @property
    def sections_run(self) -> int:
        """Sections the chip's section sequencer runs per token (0 in op mode)."""
        return sum(x.n_sections * x.count for x in self.programs)

    @property
    def config_traffic(self) -> dict:
        """HBM bytes of configuration per token: ``section reads`` (the chip's config
        controller reads every section's bitstream from its slot, once per section run) and
        ``host updates`` (the position-dependent bitstreams the host DMAs). Empty in op mode
        (bitstreams go from the host to the config controller, not through HBM)."""
        if self.launch_list is None:
            return {}
        reads = sum(x.count * sum(len(b) for b in x.images) for x in self.programs)
        ups = sum(len(d) for x in self.programs for _, d in x.updates)
        return {"section reads": reads, "host updates": ups}

    def bytes_by_category(self) -> dict:
        tot = dict.fromkeys(CATEGORIES, 0)
        for t in self.traffic:
            for k, v in t.items():
                tot[k] = tot.get(k, 0) + v
        if self.launch_list is not None:
            tot["config"] = sum(self.config_traffic.values())
        return tot

    @property
    def hbm_bytes(self) -> int:
        return sum(sum(t.values()) for t in self.traffic) + sum(self.config_traffic.values())

    @property
    def kernel_hbm_bytes(self) -> int:
        """HBM bytes the kernels' AGCUs move per token (every mode alike)."""
        return sum(sum(t.values()) for t in self.traffic)

    @property
    def bitstream_bytes(self) -> int:
        """Bitstream bytes configured per token (op: loaded by the host before every call;
        layer/looped: the embedding's from the host plus every section run from HBM)."""
        if self.launch_list is None:
            return sum(len(self.kernels[i].bitstream) for i in self.call_kernel)
        host = sum(len(x.kernel.to_bytes()) for x in self.launch_list if x.kind == "call")
        return host + self.config_traffic["section reads"]


def _label_of(kernel, call_label: str) -> tuple[str, int | None, int | None]:
    md = kernel.builder.metadata
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", kernel.builder.name or
                  re.sub(r"^l\d+\.", "", call_label)) or "kernel"
    pos = md.get("pos") if isinstance(md.get("pos"), int) else None
    tok = md.get("token") if isinstance(md.get("token"), int) else None
    label = base + (f".pos{pos}" if pos is not None else "") + \
        (f".tok{tok}" if tok is not None else "")
    return label, pos, tok


def call_traffic(prog, call, agcus, warnings: list | None = None) -> dict:
    """HBM bytes of one call by category (its AGCU programs at the call's iteration). With
    ``warnings``, a call of layer ``l`` (label ``l<l>.``) touching another layer's block or KV
    cache is appended to it."""
    bb = prog.params.beat_bytes
    m = re.match(r"l(\d+)\.", call.label)
    out = {}
    for a in agcus:
        for cat, where, n in hbm_touch(prog, a.beat_addrs(call.iteration), call.kernel.pattern):
            out[cat] = out.get(cat, 0) + n * bb
            other = re.match(r"layer (\d+) ", where)
            if warnings is not None and m and other and other.group(1) != m.group(1):
                warnings.append(f"call {call.label} (iteration {call.iteration}): {a.unit} "
                                f"({a.role}) touches {where}")
    return out


def step_plan(prog, pos: int = 0, token: int = 0, *, calls=None) -> StepPlan:
    """The calls and distinct kernels of the decode step at ``pos`` for ``token``."""
    calls = prog.token_calls(pos, token) if calls is None else calls
    entries, index, call_kernel, traffic, warnings = [], {}, [], [], []
    labels = set()
    for c in calls:
        i = index.get(id(c.kernel))
        if i is None:
            label, kpos, ktok = _label_of(c.kernel, c.label)
            base, n = label, 2
            while label in labels:
                label, n = f"{base}_{n}", n + 1
            labels.add(label)
            e = KernelEntry(label, c.kernel, position=kpos, token=ktok,
                            bitstream=c.kernel.to_bytes(), agcus=agcu_programs(c.kernel),
                            pmus=pmu_buffers(c.kernel))
            declared = c.kernel.hbm_bytes
            if declared != e.hbm_bytes:
                warnings.append(f"kernel {label}: its AGCU programs move {e.hbm_bytes} B per "
                                f"launch, it declares {declared} B (reads + writes)")
            i = index[id(c.kernel)] = len(entries)
            entries.append(e)
        entries[i].calls.append(c.label)
        entries[i].iterations.append(c.iteration)
        call_kernel.append(i)
        traffic.append(call_traffic(prog, c, entries[i].agcus, warnings))
    notes = []
    for e in entries:
        for a in e.agcus:
            touched = [t for it in sorted(set(e.iterations))
                       for t in hbm_touch(prog, a.beat_addrs(it))]
            if any(cat == "other" for cat, _, _ in touched):
                warnings.append(f"kernel {e.label}: {a.unit} ({a.role}) addresses HBM outside "
                                f"every region of the map")
            pads = sorted({w for _, w, _ in touched if PAD_MARK in w})
            if pads:
                notes.append(f"kernel {e.label}: {a.unit} ({a.role}) moves beats past its "
                             f"operand's declared size: {pads[0]}")
    launch_list = None if prog.mode == "op" else prog.token_launches(pos, token)
    return StepPlan(prog, pos, token, calls, entries, call_kernel, traffic, warnings, notes,
                    launch_list)


# ---- text ------------------------------------------------------------------------------------

def _calls_text(labels: list) -> str:
    if len(labels) <= 3:
        return ", ".join(labels)
    return f"{labels[0]}, {labels[1]}, ..., {labels[-1]}"


def _its_text(its: list) -> str:
    s = sorted(set(its))
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}..{s[-1]}"
    return ", ".join(map(str, s))


def _grid(p, used: dict) -> list[str]:
    """ASCII picture of the grid: ``used`` maps unit name -> short role ('' for none)."""
    units = unit_map(p)
    at = {u.pos: u for u in units if u.pos is not None and u.kind in ("pcu", "pmu", "agcu")}

    def cell(pos):
        u = at.get(pos)
        if u is None:
            return ""
        if u.name in used:
            return f"[{u.name}{' ' + used[u.name] if used[u.name] else ''}]"
        return f" {u.name} "
    rows = range(p.grid_rows)
    cols = range(-1, p.grid_cols + 1)
    cells = {(r, c): cell((r, c)) for r in rows for c in cols}
    w = max(len(v) for v in cells.values()) + 1
    head = " " * 10 + "".join((f"col {c}" if 0 <= c < p.grid_cols else
                               ("west" if c < 0 else "east")).ljust(w) for c in cols)
    out = [head.rstrip()]
    for r in rows:
        out.append(f"    row {r} " + "".join(cells[(r, c)].ljust(w) for c in cols).rstrip())
    return out


def _role_short(kernel) -> dict:
    roles = kernel.builder.metadata.get("roles")
    if isinstance(roles, dict):
        return {u: r for r, u in roles.items() if isinstance(u, str)}
    return {}


def _kernel_section(plan: StepPlan, k: int, files: dict | None) -> list[str]:
    prog, e = plan.prog, plan.kernels[k]
    p, kern, b = prog.params, e.kernel, e.kernel.builder
    bb = p.beat_bytes
    kinds = {"pcu": 0, "pmu": 0, "agcu": 0}
    for cfg in b.units.values():
        kinds[cfg.unit.kind] = kinds.get(cfg.unit.kind, 0) + 1
    unit_writes = sum(len(c.writes) for c in b.units.values())
    n_writes = len(b.writes())
    fname = files.get(e.label) if files else None
    L = []
    L.append("-" * 100)
    L.append(f"kernel {k + 1}/{len(plan.kernels)}: {e.label}   (pattern {kern.pattern}"
             f"{', builder ' + b.name if b.name != e.label else ''})")
    L.append(f"  bitstream  {fname + ', ' if fname else ''}{_n(len(e.bitstream))} B: "
             f"{unit_writes} unit writes + {n_writes - unit_writes} switch writes; "
             f"unit ids {' '.join(map(str, kern.unit_ids))}")
    note = ""
    if e.position is not None:
        note = f"; built for position {e.position} (rebuilt for every position)"
    if e.token is not None:
        note += f"; built for token {e.token} (rebuilt for every token)"
    L.append(f"  launched   {len(e.calls)}x per token ({_calls_text(e.calls)}) at "
             f"sequencer iteration{'s' if len(set(e.iterations)) > 1 else ''} "
             f"{_its_text(e.iterations)}{note}")
    L.append(f"  units      {kinds['pcu']}/{p.n_pcus} PCUs, {kinds['pmu']}/{p.n_pmus} PMUs, "
             f"{kinds['agcu']}/{p.n_agcus} AGCUs; {len(b.routes)} routes; watchdog "
             f"{_n(kern.watchdog)} cycles")
    rd = " + ".join(f"{n} {_n(v)}" for n, v in kern.reads.items()) or "-"
    wr = " + ".join(f"{n} {_n(v)}" for n, v in kern.writes.items()) or "-"
    L.append(f"  HBM/launch reads {rd} B; writes {wr} B; total {_n(kern.hbm_bytes)} B")
    short = _role_short(kern)
    L.append("")
    L.append("  units:")
    for cfg in sorted(b.units.values(), key=lambda c: c.unit.id):
        u = cfg.unit
        pos = "" if u.pos is None else f"({u.pos[0]},{u.pos[1]})"
        role = (short.get(u.name, "") + " " + cfg.role).strip() if short.get(u.name) \
            else cfg.role
        L.append(f"    {u.name:<6} id {u.id:<3} {pos:<7} {role:<26} {cfg.summary}".rstrip())
    L.append("")
    L.append("  grid ([unit role] = configured, bare name = idle; AGCUs on the west/east edges):")
    L += _grid(p, {cfg.unit.name: short.get(cfg.unit.name, "") for cfg in b.units.values()})
    L.append("")
    nout = sum(len(r.route.hops) for r in b.routes)
    L.append(f"  routes ({len(b.routes)}, {nout} switch outputs; hops = switches crossed = "
             f"cycles):")
    for r in b.routes:
        rt = r.route
        dst = ", ".join(f"{d} ({rt.latency.get(d, '?')} hop{'s' if rt.latency.get(d) != 1 else ''})"
                        for d in rt.dsts)
        L.append(f"    {rt.net:<4} {rt.src:<11} -> {dst}" + (f"   {r.what}" if r.what else ""))
    if e.pmus:
        L.append("")
        L.append(f"  PMU buffer map (beats of {bb} B; a PMU holds {e.pmus[0].depth} beats; "
                 f"region = buffers x beats from the base beat):")
        for m in e.pmus:
            lo, hi = m.region
            role = (short.get(m.unit, "") + " " + m.role).strip()
            L.append(f"    {m.unit:<6} {role:<24} {m.n_buf} buffer{'s' if m.n_buf != 1 else ''} "
                     f"x {m.buf_size} beats at beat {m.buf_base} -> [{lo}, {hi}) "
                     f"{_n((hi - lo) * bb)} B  {m.bar()}  {m.ctrl_text()}")
            L.append(f"           write: {m.write_text()}")
            L.append(f"           read:  {m.read_text()}")
    L.append("")
    it0 = e.iterations[0]
    L.append(f"  AGCU programs (beats of {bb} B; HBM region at iteration {it0}"
             f"{' = layer ' + str(it0) if len(set(e.iterations)) > 1 else ''}):")
    for a in e.agcus:
        where = "; ".join(w for _, w, _ in hbm_touch(prog, a.beat_addrs(it0), kern.pattern))
        role = (short.get(a.unit, "") + " " + a.role).strip()
        its = (f", iteration stride {a.iter_stride:+d} beats ({_n(a.iter_stride * bb)} B)"
               if a.iter_stride else ", iteration stride 0")
        L.append(f"    {a.unit:<6} {role:<24} {a.mode:<5} {a.beats:>4} beats "
                 f"({_n(a.beats * bb):>6} B)  {where}")
        L.append(f"           base beat {a.base} (0x{a.base * bb:06x}), counts {list(a.counts)} "
                 f"strides {list(a.strides)}{its}; region beats [{a.region[0]}, "
                 f"{a.region[0] + a.region[1]})")
    L.append(f"    per launch: {_n(sum(a.beats for a in e.agcus if a.mode == 'read') * bb)} B "
             f"read, {_n(sum(a.beats for a in e.agcus if a.mode == 'write') * bb)} B written")
    return L


def _hbm_section(prog) -> list[str]:
    from sw.compiler.layout import fmt_bytes
    p, c = prog.params, prog.qm.config
    bb = p.beat_bytes
    L = ["=" * 100, "HBM layout", "=" * 100]
    L.append(f"  {fmt_bytes(prog.hbm_end)} used of {fmt_bytes(p.hbm_bytes)} "
             f"({100 * prog.hbm_end / p.hbm_bytes:.1f}%); regions start on "
             f"{bb * p.hbm_burst_beats} B bursts; per-layer strides are multiples of "
             f"{bb * p.hbm_burst_beats * p.hbm_channels} B (every layer's copy on the same "
             f"channel)")
    L.append("")
    L.append(f"  {'address':<10} {'end':<10} {'bytes':>9}  {'group':<11} region")
    for name, group, addr, n in prog.regions:
        L.append(f"  0x{addr:06x}   0x{addr + n:06x}   {n:>9,}  {group:<11} {name}")
    L.append("")
    L.append(f"  layer block (layer l at 0x{prog.layer_base:06x} + l x {prog.layer_stride:,} B):")
    offs = sorted(prog.blob_offsets.items(), key=lambda kv: kv[1])
    for i, (name, off) in enumerate(offs):
        end = offs[i + 1][1] if i + 1 < len(offs) else prog.layer_stride
        L.append(f"    +0x{off:05x}  {end - off:>7,} B  {name}")
    L.append("")
    cache = _up(prog.context * prog.kv_row_bytes, bb)
    L.append(f"  KV cache: layer l at 0x{prog.kv_base:06x} + l x {prog.kv_layer_stride:,} B; "
             f"K cache then V cache at +{cache:,} B; {prog.context} rows of "
             f"{c.n_kv_heads * c.head_dim} B (int8, [kv_head][d]) padded to "
             f"{prog.kv_row_bytes} B" + (f" ({bb // prog.kv_row_bytes} rows per beat)"
                                        if prog.kv_row_bytes < bb else ""))
    L.append(f"  embedding: {c.vocab_size} rows of {prog.emb_row_bytes} B (int16) at "
             f"0x{prog.emb_base:06x}; RoPE tables at 0x{prog.rope_tables:06x}; next token at "
             f"0x{prog.next_token:06x} (int32, lane 0)")
    if prog.sections:
        n_dep = sum(s.position_dependent for s in prog.sections)
        L.append(f"  config region: 0x{prog.config_base:06x}..0x"
                 f"{prog.config_base + prog.config_bytes:06x} ({_n(prog.config_bytes)} B) after "
                 f"the KV cache, one slot per section-table entry ({len(prog.sections)}); the "
                 f"{n_dep} position-dependent slots are sized for the larger bitstream of "
                 f"positions 0 and {prog.context - 1} plus a margin")
    return L


def _kernel_label_of(plan: StepPlan) -> dict:
    return {id(e.kernel): e.label for e in plan.kernels}


def section_file_names(prog, stem_name: str, pos: int) -> dict:
    """``{entry: file name}`` of the section bitstreams ``rdu compile`` writes (layer/looped):
    ``<stem>.s<entry>.<section>[.pos<P>].rbit``, what each slot holds at ``pos``."""
    return {s.entry: f"{stem_name}.s{s.entry:02d}.{s.name}"
                     f"{f'.pos{pos}' if s.position_dependent else ''}.rbit"
            for s in prog.sections}


def _records(data: bytes, p) -> int:
    from sw.bitstream import Bitstream
    return len(Bitstream.from_bytes(data, p).writes)


def _programs_section(plan: StepPlan, files: dict | None,
                      section_files: dict | None = None) -> list[str]:
    """Programs of sections, the section table and the launches of a token (layer/looped)."""
    prog = plan.prog
    p = prog.params
    label_of = _kernel_label_of(plan)
    kernels = prog.section_kernels(plan.pos)
    images = prog.section_images(plan.pos)
    L = ["=" * 100, "Programs of sections (loaded and run by the chip's section sequencer)",
         "=" * 100]
    L.append("  A section is one op kernel: the chip loads its bitstream from its HBM slot into "
             "the config controller,")
    L.append("  runs its units, waits until they are done and HBM is quiet, then goes on; after "
             "the last section of an")
    L.append("  iteration the next iteration (layer) starts at once. The embedding stays a host "
             "call (its bitstream depends on the token).")
    if prog.delta:
        L.append("  Slots hold delta bitstreams: a program's first section whole (without ROUTES), "
                 "every later one only the")
        L.append("  register writes whose value the sections before it (same iteration) have not "
                 "already put in the fabric.")
    else:
        L.append("  Slots hold the kernels' own bitstreams (compiled without delta configuration).")
    for name, (first, n) in prog.programs().items():
        secs = prog.sections[first:first + n]
        what = ("the kernels of one decoder layer, run at iteration l for layer l"
                if name == "layer" else "final norm, LM head, argmax")
        L.append("")
        L.append(f"  {name} program: entries {first}..{first + n - 1} ({n} sections: {what})")
        L.append(f"    {'entry':>5} {'section':<11} {'kernel':<24} {'PCU':>3} {'PMU':>3} "
                 f"{'AGCU':>4}  {'unit ids':<34} {'bitstream':>9} {'watchdog':>9}")
        for s in secs:
            k = kernels[s.entry]
            kinds = [sum(1 for u in k.builder.units.values() if u.unit.kind == kk)
                     for kk in ("pcu", "pmu", "agcu")]
            ids = " ".join(map(str, k.unit_ids))
            L.append(f"    {s.entry:>5} {s.name:<11} {label_of.get(id(k), '?'):<24} "
                     f"{kinds[0]:>3} {kinds[1]:>3} {kinds[2]:>4}  {ids:<34} "
                     f"{_n(len(k.to_bytes())):>9} {_n(k.watchdog):>9}"
                     + ("  per position" if s.position_dependent else ""))
        union = sorted({u for s in secs for u in kernels[s.entry].unit_ids})
        L.append(f"    units: {len(union)} distinct unit ids over the program (one section at a "
                 f"time on the {p.grid_rows}x{p.grid_cols} grid)")
    L.append("")
    L.append(f"  section table ({len(prog.sections)} of {p.program_entries} entries; slots in "
             f"the config region at 0x{prog.config_base:06x}, {_n(prog.config_bytes)} B):")
    L.append(f"    {'entry':>5} {'program':<7} {'section':<11} {'slot':<10} {'slot B':>8} "
             f"{'kernel B':>9} {'records':>7} {'in slot B':>9} {'records':>7}  file")
    for s in prog.sections:
        k = kernels[s.entry]
        full, img = k.to_bytes(), images[s.entry]
        f = (section_files or {}).get(s.entry, "")
        L.append(f"    {s.entry:>5} {s.program:<7} {s.name:<11} 0x{s.slot:06x}  "
                 f"{_n(s.slot_bytes):>8} {_n(len(full)):>9} {_n(_records(full, p)):>7} "
                 f"{_n(len(img)):>9} {_n(_records(img, p)):>7}  {f}"
                 + ("   (rewritten per position by the host)" if s.position_dependent else ""))
    tot_full = sum(len(k.to_bytes()) for k in kernels)
    tot_img = sum(len(b) for b in images)
    L.append(f"    total: kernels {_n(tot_full)} B, slots {_n(tot_img)} B at position {plan.pos}"
             + (f" ({100 * tot_img / tot_full:.0f}%)" if prog.delta else ""))
    L.append("")
    L.append(f"  launches of a token in mode {prog.mode} ({plan.launches} host launches, "
             f"{plan.sections_run} sections run on the chip):")
    for x in plan.launch_list:
        if x.kind == "call":
            L.append(f"    {x.label:<8} host call: bitstream {_n(len(x.kernel.to_bytes()))} B "
                     f"from the host, units {' '.join(map(str, x.kernel.unit_ids))}")
            continue
        its = (f"iteration {x.iteration}" if x.count == 1 else
               f"iterations {x.iteration}..{x.iteration + x.count - 1}")
        up = ""
        if x.updates:
            up = (f"; first the host DMAs {len(x.updates)} position bitstreams "
                  f"({_n(sum(len(d) for _, d in x.updates))} B) and sets their table entries")
        L.append(f"    {x.label:<8} program {x.program}: entries {x.first}.."
                 f"{x.first + x.n_sections - 1}, {its} ({x.n_sections * x.count} sections); "
                 f"watchdog {_n(x.budget())} cycles{up}")
    return L


def _totals_section(plan: StepPlan, last: StepPlan | None, last_error: str | None) -> list[str]:
    prog = plan.prog
    c = prog.qm.config
    L = ["=" * 100, f"Per token (decode step at position {plan.pos})", "=" * 100]
    per_layer = sum(1 for x in plan.calls if x.label.startswith("l0."))
    if plan.launch_list is None:
        L.append(f"  launches        {plan.launches} = 1 embedding + {per_layer} x {c.n_layers} "
                 f"layers + {plan.launches - 1 - per_layer * c.n_layers} final "
                 f"(op mode: each one reconfigures the fabric)")
        L.append(f"  bitstreams      {_n(plan.bitstream_bytes)} B loaded per token "
                 f"({len(plan.kernels)} distinct kernels, "
                 f"{_n(sum(len(e.bitstream) for e in plan.kernels))} B)")
    else:
        n_layer_launches = len(plan.programs) - 1
        shape = (f"1 embedding + {n_layer_launches} layer-program launches + 1 head program"
                 if prog.mode == "layer" else
                 "1 embedding + 1 layer-program launch (every layer) + 1 head program")
        L.append(f"  launches        {plan.launches} = {shape} (mode {prog.mode})")
        L.append(f"  sections        {plan.sections_run} run on the chip per token = {per_layer} x "
                 f"{c.n_layers} layers + {prog.programs()['head'][1]} head")
        cfg = plan.config_traffic
        emb = plan.bitstream_bytes - cfg["section reads"]
        L.append(f"  bitstreams      {_n(plan.bitstream_bytes)} B configured per token: "
                 f"{_n(emb)} B (embedding) from the host, {_n(cfg['section reads'])} B of "
                 f"sections read from HBM by the chip; the host DMAs "
                 f"{_n(cfg['host updates'])} B of position-dependent sections into their slots")
    total = plan.hbm_bytes
    what = "kernel reads + writes" if plan.launch_list is None else (
        f"kernel reads + writes {_n(plan.kernel_hbm_bytes)} B + configuration "
        f"{_n(sum(plan.config_traffic.values()))} B")
    L.append(f"  HBM bytes       {_n(total)} B per token ({what})")
    by = plan.bytes_by_category()
    for cat in CATEGORIES + tuple(k for k in by if k not in CATEGORIES):
        v = by.get(cat, 0)
        L.append(f"    {cat:<12} {v:>10,} B  {100 * v / total if total else 0:5.1f}%   "
                 f"{_CATEGORY_NOTE.get(cat, '')}")
    L.append("")
    L.append(f"  {'kernel':<24} {'launches':>8} {'B/launch':>10} {'B/token':>10} {'share':>6}  "
             f"{'read':>8} {'written':>8}")
    for i, e in enumerate(plan.kernels):
        n = sum(1 for j in plan.call_kernel if j == i)
        tok = sum(sum(plan.traffic[j].values()) for j, kk in enumerate(plan.call_kernel)
                  if kk == i)
        rd = sum(a.beats for a in e.agcus if a.mode == "read") * prog.params.beat_bytes
        L.append(f"  {e.label:<24} {n:>8} {_n(e.hbm_bytes):>10} {_n(tok):>10} "
                 f"{100 * tok / total if total else 0:5.1f}%  {_n(rd):>8} "
                 f"{_n(e.hbm_bytes - rd):>8}")
    L.append("")
    if last is not None:
        lb = last.bytes_by_category()
        L.append(f"  at the last position of the context ({last.pos}): {_n(last.hbm_bytes)} B per "
                 f"token (KV cache {_n(lb.get('KV cache', 0))} B, activations "
                 f"{_n(lb.get('activations', 0))} B); the attention kernels read every cached "
                 f"position, so the traffic grows with the position")
    elif last_error:
        L.append(f"  at the last position of the context: not computed ({last_error})")
    return L


def mapping_report(prog, pos: int = 0, token: int = 0, *, plan: StepPlan | None = None,
                   files: dict | None = None, model: str | None = None,
                   timings: dict | None = None, last: bool = True,
                   section_files: dict | None = None) -> str:
    """The mapping report of ``prog`` (a DecodeProgram) for the step at ``pos``/``token``.
    ``files``: kernel label -> bitstream file name; ``model``: a name/path for the header;
    ``timings``: phase -> seconds for the compile-time line; ``last``: also give the HBM bytes
    per token at the last position of the context."""
    plan = plan or step_plan(prog, pos, token)
    p, c = prog.params, prog.qm.config
    from sw.compiler.layout import fmt_bytes
    L = ["=" * 100, "minirdu mapping report", "=" * 100]
    L.append(f"model      {model or 'model'}")
    L.append(f"shape      dim {c.dim}, {c.n_layers} layers, {c.n_heads} heads / {c.n_kv_heads} "
             f"KV heads, head_dim {c.head_dim}, MLP {c.hidden_dim}, vocab {c.vocab_size}, "
             f"max_seq_len {c.max_seq_len}, {'tied' if c.tie_embeddings else 'untied'} "
             f"embeddings")
    mode_note = {"op": "one kernel per pattern; the host reconfigures the fabric before each "
                       "launch; every activation goes through HBM",
                 "layer": "a layer kernel = an on-chip program of 17 sections; one host launch "
                          "per layer, then the head program",
                 "looped": "a layer kernel = an on-chip program of 17 sections; one host launch "
                           "runs it for every layer, then the head program"}.get(prog.mode, "")
    L.append(f"mode       {prog.mode}" + (f" ({mode_note})" if mode_note else ""))
    L.append(f"context    {prog.context} positions of KV cache")
    L.append(f"chip       {p.grid_rows}x{p.grid_cols} grid: {p.n_pcus} PCUs ({p.lanes} lanes x "
             f"{p.word_bits} bit, {p.pcu_stages} FU stages, {p.pcu_vector_inputs} vector + "
             f"{p.pcu_scalar_inputs} scalar inputs), {p.n_pmus} PMUs ({fmt_bytes(p.pmu_bytes)}, "
             f"{pmu_depth(p)} beats), {p.n_agcus} AGCUs (one HBM program each); HBM "
             f"{fmt_bytes(p.hbm_bytes)}, {p.hbm_channels} channels x {p.hbm_bytes_per_cycle} "
             f"B/cycle, {p.beat_bytes} B beats; {p.clock_mhz} MHz")
    L.append(f"params     digest {p.digest().hex()}")
    pos_dep = [e.label for e in plan.kernels if e.position is not None]
    tok_dep = [e.label for e in plan.kernels if e.token is not None]
    L.append(f"step       position {plan.pos}, token {plan.token}: {len(plan.kernels)} distinct "
             f"kernels, {plan.launches} launches")
    if pos_dep:
        L.append(f"           built for position {plan.pos} only (the runtime rebuilds them per "
                 f"position): {', '.join(pos_dep)}")
    if tok_dep:
        L.append(f"           built for token {plan.token} only (rebuilt per token): "
                 f"{', '.join(tok_dep)}")
    if timings:
        tot = timings.get("total", sum(v for k, v in timings.items() if k != "total"))
        parts = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k != "total")
        L.append(f"compile    {tot:.2f} s ({parts})")
    for w in plan.warnings:
        L.append(f"WARNING    {w}")
    for w in plan.notes:
        L.append(f"note       {w}")
    L.append("")
    L.append("Kernels of the step (in first-launch order):")
    L.append(f"  {'#':>2} {'kernel':<24} {'pattern':<13} {'PCU':>3} {'PMU':>3} {'AGCU':>4} "
             f"{'routes':>6} {'bitstream':>9} {'launches':>8} {'HBM B/launch':>12}")
    for i, e in enumerate(plan.kernels):
        b = e.kernel.builder
        kinds = [sum(1 for u in b.units.values() if u.unit.kind == k)
                 for k in ("pcu", "pmu", "agcu")]
        L.append(f"  {i + 1:>2} {e.label:<24} {e.kernel.pattern:<13} {kinds[0]:>3} {kinds[1]:>3} "
                 f"{kinds[2]:>4} {len(b.routes):>6} {_n(len(e.bitstream)):>9} {len(e.calls):>8} "
                 f"{_n(e.hbm_bytes):>12}")
    L.append("")
    L.append("Call order of a token: " + ", ".join(
        x.label for x in plan.calls if not re.match(r"l[1-9]\d*\.", x.label)).replace(
        "l0.", "l<L>.") + f"  (the l<L>. block once per layer, L = 0..{c.n_layers - 1})")
    L.append("")
    for i in range(len(plan.kernels)):
        L += _kernel_section(plan, i, files)
        L.append("")
    if plan.launch_list is not None:
        L += _programs_section(plan, files, section_files)
        L.append("")
    L += _hbm_section(prog)
    L.append("")
    last_plan, last_err = None, None
    if last:
        lp = prog.context - 1
        if lp != plan.pos:
            try:
                last_plan = step_plan(prog, lp, plan.token)
            except ValueError as e:           # KernelError, CompileError are ValueErrors
                last_err = str(e).splitlines()[0]
    L += _totals_section(plan, last_plan, last_err)
    return "\n".join(L) + "\n"


def _programs_json(plan: StepPlan, files: dict, section_files: dict | None) -> dict | None:
    """layer/looped: the section table, the programs and the host launches of a token."""
    if plan.launch_list is None:
        return None
    prog = plan.prog
    label_of = _kernel_label_of(plan)
    kernels = prog.section_kernels(plan.pos)
    images = prog.section_images(plan.pos)
    launches = []
    for x in plan.launch_list:
        if x.kind == "call":
            launches.append({"label": x.label, "kind": "call", "iteration": x.iteration,
                             "count": x.count, "unit_ids": list(x.kernel.unit_ids)})
        else:
            launches.append({"label": x.label, "kind": "program", "program": x.program,
                             "first": x.first, "sections": x.n_sections,
                             "iteration": x.iteration, "count": x.count,
                             "watchdog_cycles": x.budget(),
                             "updates": [{"addr": a, "bytes": len(d)} for a, d in x.updates],
                             "table": [list(t) for t in x.table]})
    return {
        "delta": prog.delta,
        "config_region": {"addr": prog.config_base, "bytes": prog.config_bytes},
        "programs": {n: {"first": f, "sections": k} for n, (f, k) in prog.programs().items()},
        "sections": [{"entry": s.entry, "name": s.name, "program": s.program, "slot": s.slot,
                      "slot_bytes": s.slot_bytes,
                      "kernel_bytes": len(kernels[s.entry].to_bytes()),
                      "bitstream_bytes": len(images[s.entry]),
                      "records": _records(images[s.entry], prog.params),
                      "position_dependent": s.position_dependent,
                      "kernel": label_of.get(id(kernels[s.entry])),
                      "kernel_file": files.get(label_of.get(id(kernels[s.entry]), "")),
                      "file": (section_files or {}).get(s.entry)}
                     for s in prog.sections],
        "launches": launches,
    }


def manifest(plan: StepPlan, *, files: dict, report: str | None = None,
             model: dict | None = None, timings: dict | None = None,
             section_files: dict | None = None) -> dict:
    """The manifest of a compile (JSON-able): mode, model, params digest, HBM map, the call
    order of a token with labels and bitstream files, the kernels (files, iterations, unit ids,
    bytes per launch, AGCU programs)."""
    import dataclasses
    import hashlib

    prog = plan.prog
    p, c = prog.params, prog.qm.config
    bb = p.beat_bytes
    h = hashlib.sha256()
    for addr, data in sorted(prog.images(), key=lambda x: x[0]):
        h.update(addr.to_bytes(8, "little"))
        h.update(data)
    kernels = []
    for e in plan.kernels:
        k = e.kernel
        kernels.append({
            "label": e.label, "file": files.get(e.label), "pattern": k.pattern,
            "builder": k.builder.name, "bitstream_bytes": len(e.bitstream),
            "position": e.position, "token": e.token,
            "calls": list(e.calls), "iterations": sorted(set(e.iterations)),
            "unit_ids": list(k.unit_ids),
            "units": {cfg.unit.name: cfg.role for cfg in
                      sorted(k.builder.units.values(), key=lambda x: x.unit.id)},
            "reads": dict(k.reads), "writes": dict(k.writes),
            "hbm_bytes_per_launch": k.hbm_bytes, "watchdog_cycles": k.watchdog,
            "agcu_programs": [a.to_json(bb) for a in e.agcus],
            "pmu_buffers": [m.to_json() for m in e.pmus],
        })
    calls = []
    for c_, i, t in zip(plan.calls, plan.call_kernel, plan.traffic):
        calls.append({"label": c_.label, "kernel": plan.kernels[i].label,
                      "file": files.get(plan.kernels[i].label), "iteration": c_.iteration,
                      "count": c_.count, "hbm_bytes": sum(t.values()), "hbm_by_category": t,
                      "trace": list(c_.trace) if c_.trace else None,
                      "output": list(c_.output) if c_.output else None})
    return {
        "format": "minirdu-compile", "version": 1,
        "mode": prog.mode, "model": model or {}, "config": dataclasses.asdict(c),
        "params_digest": p.digest().hex(), "params": p.to_dict(),
        "context": prog.context, "position": plan.pos, "token": plan.token,
        "report": report,
        "hbm": {
            "bytes_used": prog.hbm_end, "image_sha256": h.hexdigest(),
            "regions": [{"name": n, "group": g, "addr": a, "bytes": b}
                        for n, g, a, b in prog.regions],
            "activations": {n: {"addr": a, "bytes": prog.act_bytes[n]}
                            for n, a in prog.act.items()},
            "next_token": prog.next_token,
            "layer_base": prog.layer_base, "layer_stride": prog.layer_stride,
            "blob_offsets": dict(prog.blob_offsets), "final": dict(prog.final),
            "embedding": {"addr": prog.emb_base, "row_bytes": prog.emb_row_bytes},
            "rope_tables": prog.rope_tables,
            "kv": {"base": prog.kv_base, "layer_stride": prog.kv_layer_stride,
                   "row_bytes": prog.kv_row_bytes,
                   "v_offset": _up(prog.context * prog.kv_row_bytes, bb)},
        },
        "kernels": kernels,
        "calls": calls,
        "per_token": {"position": plan.pos, "launches": plan.launches,
                      "sections": plan.sections_run,
                      "hbm_bytes": plan.hbm_bytes, "by_category": plan.bytes_by_category(),
                      "kernel_hbm_bytes": plan.kernel_hbm_bytes,
                      "config_bytes": plan.config_traffic,
                      "bitstream_bytes": plan.bitstream_bytes},
        "programs": _programs_json(plan, files, section_files),
        "timings": timings or {},
        "warnings": list(plan.warnings),
        "notes": list(plan.notes),
    }

"""GEMV on the chip: ``y = requant(W @ x)`` with int8 ``W`` (rows x cols, row-major in HBM),
int8 ``x`` (cols) and int8 ``y`` (rows), built with :class:`sw.kernels.builder.KernelBuilder`.

Mappings (``pcus`` = PCUs that stream weights)

``pcus=1`` (one weight stream; at most 1 beat/cycle = half the HBM peak)::

    agcu0.rd (W, all rows) ----------------------------> P.vin0
    agcu1.rd (x, once) -> M.win ; M.rout (x per row) -> P.vin1
    P: DP4 + per-lane row accumulate, SUM tree, post REQUANT, pack 64 int8 -> P.vout -> agcu2.wr

``pcus=2`` (split-K: two weight streams, up to the HBM peak)::

    agcu0.rd (left  kb beats of every W row) -> B.vin0      (kb = nb // 2, nb = cols / 64)
    agcu1.rd (right ka beats of every W row) -> A.vin0      (ka = nb - kb)
    agcu2.rd (x, once) -> multicast -> MB.win, MA.win  (both store all nb beats)
    MB.rout (x[0:kb] re-read per row) -> B.vin1 ; MA.rout (x[kb:nb] per row) -> A.vin1
    B: DP4 + accumulate + SUM tree -> int32 partial per row -> B.sout -> A.sin0
    A: DP4 + accumulate + SUM tree, post ADD sin0 (popped once per row) -> A.sout -> C.sin0
    C: post REQUANT(sin0), pack 64 int8 -> C.vout -> agcu3.wr

The requant stage needs its own PCU because the post stage has one FU (ADD *or* REQUANT) and a
PCU has one vector output; a fused "ADD then REQUANT" post stage (or a second post FU) would
save PCU C. With only four AGCUs (two weight streams, x, y) more than two weight streams are
not possible in one kernel.

Placement: the roles are assigned to PCUs/PMUs by the smallest total Manhattan distance of
the routes that then also routes without conflicts (``place``).

The requant scale: ``(m, s) = intops.quantize_multiplier(127 / (4 * std(W @ x)))`` (a
calibration on the data itself), so ``y`` spreads over int8 and the tails saturate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hdl.pcu import AccOp, FuOp, PcuConfig, Red, Src
from hdl.pmu import PmuConfig, pmu_depth
from hdl.params import RduParams
from hdl.unitmap import units_of_kind
from sw import intops
from sw.kernels.builder import AgcuProgram, KernelBuilder, agcu_writable_counters, place

__all__ = ["GemvError", "GemvLayout", "GemvKernel", "make_data", "choose_requant", "golden",
           "build_gemv", "REDUCED_PARAMS"]

# The reduced geometry the tests and a quick CLI run use: 2x3 tiles (3 PCUs, 3 PMUs; AGCUs 0/1
# west, 2/3 east of rows 0/1), 2 PCU stages and 2 vector inputs (GEMV needs no more), 1 MiB
# HBM (R = C = 512 fits). Its Verilator build is several times smaller than the default chip.
REDUCED_PARAMS = RduParams(grid_rows=2, grid_cols=3, hbm_bytes=1024 * 1024, pcu_stages=2,
                          pcu_vector_inputs=2)


class GemvError(ValueError):
    """The GEMV cannot be built for these arguments (shape, memory, geometry)."""


@dataclass(frozen=True)
class GemvLayout:
    """HBM byte addresses of W, x and y."""
    w: int
    x: int
    y: int
    end: int


def _align(v, a):
    return -(-v // a) * a


def layout(p: RduParams, rows: int, cols: int, layers: int = 1) -> GemvLayout:
    """W of every layer (one after the other), then x, then y of every layer. With several
    layers y of layer ``l`` is x of layer ``l + 1``: x and the y's form one activation array,
    layer ``l`` reads beat ``x / beat_bytes + l * cols / beat_bytes`` onwards."""
    bb = p.beat_bytes
    w = 0
    x = _align(w + layers * rows * cols, bb)
    y = _align(x + cols, bb)
    end = _align(y + layers * _align(rows, bb), bb)
    if end > p.hbm_bytes:
        raise GemvError(f"W ({layers} x {rows}x{cols} = {layers * rows * cols} B) + x + y need "
                        f"{end} B of HBM; the chip has {p.hbm_bytes} B")
    return GemvLayout(w, x, y, end)


def make_data(rows: int, cols: int, seed: int):
    """Random int8 W (rows, cols) and x (cols,) over the full int8 range."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, size=(rows, cols), dtype=np.int64).astype(np.int8)
    x = rng.integers(-128, 128, size=cols, dtype=np.int64).astype(np.int8)
    return w, x


def choose_requant(w, x) -> tuple[int, int]:
    """(m, s) mapping 4 standard deviations of ``W @ x`` to 127."""
    acc = intops.gemv(w, x).astype(np.float64)
    spread = max(1.0, 4.0 * float(np.std(acc)))
    return intops.quantize_multiplier(127.0 / spread)


def golden(w, x, m: int, s: int) -> np.ndarray:
    """y = requant(W x); for W of shape (layers, rows, cols) the chain x_{l+1} = requant(W_l
    x_l), all layers' outputs concatenated."""
    w = np.asarray(w)
    if w.ndim == 2:
        return intops.requant(intops.gemv(w, x), m, s, 8).astype(np.int8)
    ys = []
    for wl in w:
        x = intops.requant(intops.gemv(wl, x), m, s, 8).astype(np.int8)
        ys.append(x)
    return np.concatenate(ys)


@dataclass
class GemvKernel:
    """A built GEMV: the builder (bitstream, describe), the layout and the roles."""
    params: RduParams
    rows: int
    cols: int
    pcus: int
    m: int
    s: int
    layout: GemvLayout
    builder: KernelBuilder
    roles: dict = field(default_factory=dict)      # role -> unit name
    w_blocks: list = field(default_factory=list)   # column blocks (in beats) of the W image
    layers: int = 1

    def w_image(self, w) -> bytes:
        """The bytes of W (one layer, or (layers, rows, cols)) as the kernel expects them in HBM
        at ``layout.w``: layer after layer."""
        bb = self.params.beat_bytes
        w = np.asarray(w, dtype=np.int8)
        if w.ndim == 3:
            return b"".join(self.w_image(wl) for wl in w)
        return b"".join(np.ascontiguousarray(w[:, a * bb:b * bb]).tobytes()
                        for a, b in self.w_blocks)

    def calls(self, mode: str) -> list[dict]:
        """The kernel calls that run every layer: ``layer`` = one call per layer (each pays the
        launch, the fill and the drain), ``looped`` = one call of ``layers`` iterations in which
        only the true dependence waits: the x load of layer ``l + 1`` after the y store of
        layer ``l`` (through HBM); weights of the next layer stream as soon as their AGCU is
        free."""
        if mode == "layer":
            return [{"iteration": l, "count": 1, "deps": {}} for l in range(self.layers)]
        if mode == "looped":
            from hdl.sequencer import dep_word
            ids = {u.name: u.id for u in units_of_kind(self.params, "agcu")}
            deps = {}
            if self.layers > 1:
                deps[ids[self.roles["x"]]] = dep_word(ids[self.roles["y"]])
            return [{"iteration": 0, "count": self.layers, "deps": deps}]
        raise GemvError(f"unknown mode {mode!r} (layer or looped)")

    @property
    def w_layout(self) -> str:
        return w_layout_name(self.w_blocks, self.params.beat_bytes)

    @property
    def unit_ids(self):
        return self.builder.unit_ids()

    @property
    def hbm_bytes(self) -> int:
        """Bytes the kernel moves between HBM and the chip (per layer: W, x once, y)."""
        bb = self.params.beat_bytes
        return self.layers * (self.rows * self.cols + _align(self.cols, bb)
                              + _align(self.rows, bb))

    def watchdog_cycles(self) -> int:
        return self.layers * (8 * self.rows * (self.cols // self.params.beat_bytes) + 20_000)

    def to_bytes(self) -> bytes:
        return self.builder.to_bytes()


def build_gemv(p: RduParams, rows: int, cols: int, *, pcus: int = 2, m: int, s: int,
               name: str = "gemv", layers: int = 1) -> GemvKernel:
    """Build the GEMV kernel (see the module docstring for the mapping). ``layers > 1``: a
    chain of square GEMVs, iteration ``l`` reads W_l and x_l = y_{l-1} through per-iteration
    AGCU offsets (the same bitstream serves every layer)."""
    bb = p.beat_bytes
    if layers < 1:
        raise GemvError("layers must be >= 1")
    if layers > 1 and rows != cols:
        raise GemvError(f"a chain of layers needs square W (rows == cols), not {rows}x{cols}")
    if rows < 1 or cols < 1:
        raise GemvError("rows and cols must be positive")
    if cols % bb:
        raise GemvError(f"cols ({cols}) must be a multiple of {bb} (one beat of int8)")
    nb = cols // bb
    if nb > pmu_depth(p):
        raise GemvError(f"x ({cols} int8 = {nb} beats) does not fit a PMU ({pmu_depth(p)} beats)")
    if rows > 65535:
        raise GemvError(f"rows ({rows}) > 65535 (PMU RD_REPEAT and PCU counters are 16 bit)")
    if pcus not in (1, 2):
        raise GemvError(f"--pcus {pcus}: this mapping uses 1 or 2 weight-streaming PCUs (four "
                        f"AGCUs = two weight streams + x + y)")
    if pcus == 2 and nb < 2:
        raise GemvError(f"split-K over 2 PCUs needs cols >= {2 * bb}")
    if p.n_agcus < 3 + (pcus == 2):
        raise GemvError(f"the mapping needs {3 + (pcus == 2)} AGCUs; the chip has {p.n_agcus}")
    lay = layout(p, rows, cols, layers)
    wb, xb, yb = lay.w // bb, lay.x // bb, lay.y // bb
    ybeats = -(-rows // bb)
    # per-iteration offsets (0 for a single layer) and the regions every layer's addresses need
    w_it, x_it, y_it = rows * nb, nb, ybeats
    w_reg = {"iter_stride": w_it, "region": (wb, layers * rows * nb)} if layers > 1 else {}
    x_reg = {"iter_stride": x_it, "region": (xb, layers * nb)} if layers > 1 else {}
    y_reg = {"iter_stride": y_it, "region": (yb, layers * ybeats)} if layers > 1 else {}
    agcus = {u.index: u.pos for u in units_of_kind(p, "agcu")}

    if pcus == 1:
        pcu_roles, pmu_roles = ["P"], ["M"]
        ag = {"W": 0, "x": 1, "y": 2}
        edges = [("a0", "P"), ("a1", "M"), ("M", "P"), ("P", "a2")]
    else:
        pcu_roles, pmu_roles = ["B", "A", "C"], ["MB", "MA"]
        ag = {"WL": 0, "WR": 1, "x": 2, "y": 3}
        edges = [("a0", "B"), ("a1", "A"), ("a2", "MB"), ("a2", "MA"), ("MB", "B"),
                 ("MA", "A"), ("B", "A"), ("A", "C"), ("C", "a3")]
    agcu_pos = {f"a{i}": pos for i, pos in agcus.items()}

    def try_route(units):
        kb = KernelBuilder(p, name)
        P = {r: units[r] for r in pcu_roles}
        M = {r: units[r] for r in pmu_roles}
        if pcus == 1:
            kb.agcu(ag["W"], AgcuProgram.read(wb, (rows * nb,), (1,), **w_reg), role="W stream")
            kb.agcu(ag["x"], AgcuProgram.read(xb, (nb,), (1,), **x_reg), role="x load")
            kb.agcu(ag["y"], AgcuProgram.write(yb, (ybeats,), (1,), **y_reg), role="y store")
            kb.pmu(M["M"], PmuConfig.resident_vector(nb, repeat=rows), role="x resident",
                   summary=f"x: {nb} beats written once, read {rows} times")
            kb.pcu(P["P"], PcuConfig.gemv(p, rows, nb, m=m, s=s, out_bits=8), role="gemv",
                   summary=f"DP4 x {nb} beats/row, SUM, REQUANT(m={m}, s={s}), pack int8")
            kb.route(f"agcu{ag['W']}.rd", f"{P['P']}.vin0", what="W")
            kb.route(f"agcu{ag['x']}.rd", f"{M['M']}.win", what="x load")
            kb.route(f"{M['M']}.rout", f"{P['P']}.vin1", what="x per row")
            kb.route(f"{P['P']}.vout", f"agcu{ag['y']}.wr", what="y int8")
        else:
            kl = nb // 2
            kr = nb - kl
            if w_blocks == [(0, nb)]:      # row-major W: 2-counter programs
                kb.agcu(ag["WL"], AgcuProgram.read(wb, (kl, rows), (1, nb), **w_reg),
                        role="W left")
                kb.agcu(ag["WR"], AgcuProgram.read(wb + kl, (kr, rows), (1, nb), **w_reg),
                        role="W right")
            else:                           # column blocks, each row-major: sequential reads
                kb.agcu(ag["WL"], AgcuProgram.read(wb, (kl * rows,), (1,), **w_reg),
                        role="W left")
                kb.agcu(ag["WR"], AgcuProgram.read(wb + kl * rows, (kr * rows,), (1,), **w_reg),
                        role="W right")
            kb.agcu(ag["x"], AgcuProgram.read(xb, (nb,), (1,), **x_reg), role="x load")
            kb.agcu(ag["y"], AgcuProgram.write(yb, (ybeats,), (1,), **y_reg), role="y store")
            for role, base, k in (("MB", 0, kl), ("MA", kl, kr)):
                cfg = PmuConfig(sync=True, buf_base=0, buf_size=nb, n_buf=1, wr_passes=1,
                                wr_counts=(nb,), wr_strides=(1,), rd_passes=1, rd_repeat=rows,
                                rd_base=base, rd_counts=(k,), rd_strides=(1,))
                kb.pmu(M[role], cfg, role=f"x {'left' if role == 'MB' else 'right'}",
                       summary=f"x: {nb} beats written once, beats [{base}, {base + k}) "
                               f"read {rows} times")
            b = (PcuConfig(p).counters(kl, rows).vin(0).vin(1)
                 .stage(0, FuOp.DP4, Src.VIN0, Src.VIN1, Src.ZERO, acc_op=AccOp.SUM, acc_level=1)
                 .emit(1).reduce(Red.SUM).post(FuOp.PASS, Src.PREV)
                 .output(vout=False, sout=True))
            a = (PcuConfig(p).counters(kr, rows).vin(0).vin(1).sin(0, pop_level=1)
                 .stage(0, FuOp.DP4, Src.VIN0, Src.VIN1, Src.ZERO, acc_op=AccOp.SUM, acc_level=1)
                 .emit(1).reduce(Red.SUM).post(FuOp.ADD, Src.PREV, Src.SIN0)
                 .output(vout=False, sout=True))
            c = (PcuConfig(p).counters(rows).sin(0).emit(0).reduce(Red.FIRST)
                 .post(FuOp.REQUANT, Src.SIN0, Src.IMM, Src.ZERO,
                       imm=PcuConfig.requant_word(m, s), bits=8)
                 .output(vout=True, sout=False, pack_bits=8))
            kb.pcu(P["B"], b, role="dot left",
                   summary=f"DP4 x {kl} beats/row, SUM -> int32 partial on sout")
            kb.pcu(P["A"], a, role="dot right+add",
                   summary=f"DP4 x {kr} beats/row, SUM, + partial (sin0) -> int32 on sout")
            kb.pcu(P["C"], c, role="requant",
                   summary=f"REQUANT(m={m}, s={s}) of sin0, pack 64 int8 per beat")
            kb.route(f"agcu{ag['WL']}.rd", f"{P['B']}.vin0", what="W left halves")
            kb.route(f"agcu{ag['WR']}.rd", f"{P['A']}.vin0", what="W right halves")
            kb.route(f"agcu{ag['x']}.rd", [f"{M['MB']}.win", f"{M['MA']}.win"], what="x load")
            kb.route(f"{M['MB']}.rout", f"{P['B']}.vin1", what="x left per row")
            kb.route(f"{M['MA']}.rout", f"{P['A']}.vin1", what="x right per row")
            kb.route(f"{P['B']}.sout", f"{P['A']}.sin0", what="int32 partial sums")
            kb.route(f"{P['A']}.sout", f"{P['C']}.sin0", what="int32 row sums")
            kb.route(f"{P['C']}.vout", f"agcu{ag['y']}.wr", what="y int8")
        roles = {**{r: P[r] for r in P}, **{r: M[r] for r in M},
                 **{r: f"agcu{i}" for r, i in ag.items()}}
        return kb, roles

    # W in HBM: row-major, unless a split needs 2-counter AGCU programs the bitstream cannot
    # configure (see agcu_writable_counters): then column blocks [0, kl) and [kl, nb) of beats,
    # each stored row-major, one after the other (a compiler-chosen weight layout).
    w_blocks = [(0, nb)]
    if pcus == 2 and agcu_writable_counters(p) < 2:
        w_blocks = [(0, nb // 2), (nb // 2, nb)]
    # (GEMV pins its AGCUs by index; only PCUs and PMUs are placed, the AGCUs' positions
    # count in the route length)
    kb, roles = place(p, pcus=pcu_roles, pmus=pmu_roles, fixed=agcu_pos, edges=edges,
                      build=try_route, tries=200, error=GemvError)
    kb.metadata.update({"pattern": "gemv", "rows": rows, "cols": cols, "pcus": pcus,
                        "layers": layers,
                        "requant": {"m": m, "s": s},
                        "hbm": {"w": lay.w, "x": lay.x, "y": lay.y}, "roles": roles,
                        "w_layout": w_layout_name(w_blocks, bb)})
    return GemvKernel(p, rows, cols, pcus, m, s, lay, kb, roles, w_blocks, layers)


def w_layout_name(blocks, bb) -> str:
    if len(blocks) == 1:
        return "row-major"
    return "column blocks " + " + ".join(f"[{a * bb}:{b * bb}]" for a, b in blocks) + \
        " each row-major"


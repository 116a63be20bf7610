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

Decode GEMV (the decode step's kernel, contract of ``sw/kernels/kernel.py``)
===========================================================================

``build_decode_gemv(p, *, rows, cols, x_bits, out_bits, w, x, y, iterations=1, pcus=None,
name="gemv", roles=None) -> DecodeKernel`` computes ``GoldenDecoder.gemv(W, x, m, s,
out_bits)``: ``y[r] = REQUANT(W[r] . x, m[r], s[r], out_bits)``; ``gemv_constants(p, w_int8,
m, s) -> bytes`` makes its per-layer blob; ``decode_gemv_layout(p, rows, cols, x_bits,
out_bits)`` gives the sizes; ``gemv_case(...)`` wraps it as a testbench case.

Operands (HBM ``Ref``s, beat-aligned, little-endian)

- ``w``: the blob (per layer: give the layer stride; launched at iteration ``l`` the kernel
  reads ``w.addr + l * w.iter_stride``).
- ``x``: int8 [cols] (``x_bits=8``: ``nb = ceil(cols / 64)`` beats) or int16 [cols]
  (``x_bits=16``: ``ceil(cols / 32)`` beats), zero-padded to whole beats.
- ``y``: ``out_bits`` (8, 16 or 32) [rows] packed, ``ceil(rows * out_bits / 512)`` beats; the
  kernel writes every beat of it, the padding lanes 0.

The blob (``L`` = lanes = 16 rows per *sub-block*, ``nb`` beats per row)::

    sub-block j = rows L*j .. L*j+L-1, S = L*nb + 1 beats:
        beats 0 .. L*nb-1   the L W rows, each nb beats (row i at beats i*nb ..), int8, columns
                            >= cols and rows >= rows zero (cols 32 or 96: zero weights)
        beat  L*nb          the REQUANT words: lane i = PcuConfig.requant_word(m, s) of row
                            L*j + i (m | s << 16; 0 for rows >= rows)
    nsub = ceil(rows / L), rounded up to even (then the last sub-block is all zero)
    half 0 at beat 0: sub-blocks 0, 2, 4, ...   (nsub / 2 of them)
    half 1 at beat H: sub-blocks 1, 3, 5, ...
    blob = 2 * H beats (zero padding after each half)

  H = the half's size rounded up to a burst; for halves of 224 beats or more, the offset (of
  16 candidates in 32-beat steps) with the fewest bank conflicts between the two weight
  streams in HBM's address map (``_half_offset``: two lockstep streams some offsets apart
  ping-pong the same banks; measured 2,074 against 730 cycles for 2 x 544 beats).

Mapping, ``pcus=2`` (row split: B runs the even sub-blocks, A the odd ones)::

    aWB.rd (half 0, sequential) -> multicast -> WB.win, SB.win
      WB: a ring of sub-block buffers (S beats each, up to 4): keeps all S beats, reads the
          L*nb W beats of each -> B.vin0
      SB: a ring of 1-beat buffers: all S beats of a sub-block go to offset 0, so the words
          beat (the last) stays; reads its L words as scalars -> B.sin0 (one per row)
    aWA.rd (half 1) -> WA, SA -> A, the same
    x8 : ax.rd (x) -> MX.win; MX re-reads x once per row -> multicast B.vin1, A.vin1
    x16: ax.rd (x int16, read twice) -> X.vin0 (unpack 16); X: stage 0 counts the beats,
         stages 1-3 turn "first pass" into the shift 8 (second pass 0), stage 4 SHLR(x, .);
         packed 8 bit (the packer keeps the low byte) and flushed per pass: nb beats of high
         bytes x >> 8, then nb beats of low bytes x & 0xFF -> multicast MX.win, ML.win;
         MX re-reads the high plane per row -> B.vin1, A.vin1; ML the low plane -> vin2
    B, A: DP4(W, x) accumulated over the row (x16: DP4(W, hi) << 8 + DP4U(W, lo), as
          PcuConfig.gemv(x_bits=16)), SUM tree, post REQUANT(sum, sin0 word) saturating to
          out_bits; packed 32 bit, so one vout beat = the L rows of one sub-block
          -> B.vout -> C.vin0, A.vout -> C.vin1
    C: beat pairs (B's sub-block 2k, A's 2k+1), vin0/vin1 popped once per pair: stage 0
       accumulates IMM 1 over the pair (1, 2), stage 1 subtracts 1 (f = 0, 1), stage 2
       SELECT(f ? vin1 : vin0); vector mode, packed out_bits -> C.vout -> ay.wr (y)
    out_bits 32 with an odd count of real sub-blocks: C's last beat is the all-zero
       sub-block; MY (a ring of 1-beat buffers, one more written than read) drops it

``pcus=1``: B alone reads the blob in row order (a 3-counter AGCU program alternating the
halves), packs out_bits itself; no A, C (MY when it must drop the zero sub-block).

Why this shape. Most decode GEMVs have cols = 64: one beat per row, so ``build_gemv``'s split
of K over two PCUs is impossible; splitting the rows is, and C merges the two row streams in
order (one 16-row beat per cycle pair: never the bottleneck). Four AGCUs give two weight
streams, x and y, so the REQUANT words ride in the weight streams; each stream is multicast to
a weight PMU and a words PMU that keep what they need (the PMUs' write chains take every beat).
The int16 DP4 hi/lo trick needs the byte planes of x: X makes them on chip from the int16
region (no counter value is visible to the lanes, so an accumulator counts the beats).
The cost: the first sub-block must be complete in WB before B starts (S cycles of fill).

Measured on the default chip (``tb/test_gemv.py``; cycles from the launch until every unit is
done and y is in HBM; utilisation = HBM bytes / (cycles x 128 B); ranges: HBM refresh stalls
depend on the memory's history and move a launch by up to ~100-300 cycles)::

    GEMV     shape     x/out  cycles     HBM bytes  utilisation
    wq       64x64     8/16   266-268      4,544    13%
    wk, wv   32x64     8/16,8 238          2,304     8%
    wo       64x64     8/16   256          4,544    14%
    gate     192x64    8/8    329-351     13,312    30-32%
    up       192x64    8/16   370-475     13,504    22-29%
    down     64x192    16/16  360-426     13,440    25-29%
    lm_head  512x64    8/32   524-568     36,928    51-55%
    1024x128 (largest lm_head of the test range) 1,533-1,837 cycles, 139,392 B: 59-71%

The model's GEMVs are latency-bound (~240 cycles for the smallest: HBM latency 150, WB fill,
pipelines, y write). Streaming, after the fill, two weight streams move 1.65-1.85 beats per
cycle (83-92% of the peak; 1024x64: 1,089 beats in 839 cycles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from hdl.pcu import AccOp, FuOp, PcuConfig, Red, Src, pcu_geometry
from hdl.pmu import PmuConfig, RdMode, pmu_depth
from hdl.params import RduParams
from hdl.unitmap import units_of_kind
from sw import intops
from sw.kernels.builder import (AgcuProgram, KernelBuilder, agcu_writable_counters,
                                place, place_roles)
from sw.kernels.kernel import (DecodeKernel, as_ref, int_arg, refs_metadata, stored_pmu,
                               watchdog_cycles)
from sw.kernels.patterns import PatternError

__all__ = ["GemvError", "GemvLayout", "GemvKernel", "make_data", "choose_requant", "golden",
           "build_gemv", "REDUCED_PARAMS", "GemvDecodeLayout", "decode_gemv_layout",
           "gemv_constants", "build_decode_gemv", "decode_gemv_roles",
           "gemv_case"]

# The reduced geometry the tests and a quick CLI run use: 2x3 tiles (3 PCUs, 3 PMUs; AGCUs 0/1
# west, 2/3 east of rows 0/1), 2 PCU stages and 2 vector inputs (GEMV needs no more), 1 MiB
# HBM (R = C = 512 fits). Its Verilator build is several times smaller than the default chip.
REDUCED_PARAMS = RduParams(grid_rows=2, grid_cols=3, hbm_bytes=1024 * 1024, pcu_stages=2,
                          pcu_vector_inputs=2)


class GemvError(PatternError):
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
                cfg = stored_pmu(nb, rd_passes=1, rd_repeat=rows, rd_base=base, rd_counts=(k,),
                                 rd_strides=(1,))
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


# =================================================================================================
# Decode GEMV: the address-parameterised kernel of the decode step (see the module docstring)
# =================================================================================================

# roles of the decode mapping (see the module docstring)
DECODE_PCUS = ("B", "A", "C", "X")
DECODE_PMUS = ("WB", "SB", "WA", "SA", "MX", "ML", "MY")
DECODE_AGCUS = ("aWB", "aWA", "ax", "ay")

X_STAGES = 5                     # the x16 byte-plane chain (count, - n, >> 31, & 8, SHLR)
C_STAGES = 3                     # the merge (count, - 1, SELECT)


@dataclass(frozen=True)
class GemvDecodeLayout:
    """Sizes of one decode GEMV (beats are HBM/PMU beats; ``lanes`` rows per sub-block)."""
    rows: int
    cols: int
    x_bits: int
    out_bits: int
    lanes: int
    nb: int                # W beats per row (= int8 x beats = beats of each x16 byte plane)
    x_beats: int           # beats of the x region (int8: nb; int16: ceil(2 * cols / beat))
    nblk: int              # sub-blocks holding real rows: ceil(rows / lanes)
    nsub: int              # sub-blocks in the blob: nblk rounded up to even
    sub_beats: int         # S = lanes * nb + 1 (W rows, then the words beat)
    half_beats: int        # H: each half of the blob (nsub / 2 sub-blocks), burst-aligned
    y_beats: int           # beats of the y region

    @property
    def per_half(self) -> int:
        return self.nsub // 2

    @property
    def blob_beats(self) -> int:
        return 2 * self.half_beats

    def blob_bytes(self, p: RduParams) -> int:
        return self.blob_beats * p.beat_bytes

    @property
    def chunks_per_y_beat(self) -> int:
        """Sub-blocks (``lanes`` results) per packed y beat: 32 / out_bits."""
        return 32 // self.out_bits

    @property
    def produced_beats(self) -> int:
        """y beats the last PCU packs: all nsub sub-blocks (the zero one too), flushed."""
        return -(-self.nsub // self.chunks_per_y_beat)

    @property
    def trim(self) -> bool:
        """The packed output has one beat more than y (out_bits 32, odd ``nblk``): MY drops it."""
        return self.produced_beats > self.y_beats

    @property
    def w_read_beats(self) -> int:
        """Blob beats the weight stream(s) read per launch (the half padding is not read)."""
        return self.nsub * self.sub_beats

    @property
    def x_read_beats(self) -> int:
        """x beats read per launch (int16 x is read twice: one pass per byte plane)."""
        return self.x_beats * (2 if self.x_bits == 16 else 1)


_int_arg = partial(int_arg, error=GemvError)


HALF_MIN_SPREAD = 224     # halves of at least this many beats get a conflict-avoiding offset
_HALF_STEPS = 16          # candidate offsets tried: the compact one, then 32-beat steps
_SAMPLE_BASES = 16        # blob bases the bank-conflict score averages over


def _banks(g, addr):
    """``HbmGeometry.split`` on a numpy array of beat addresses: (channel, bank, row)."""
    b = addr >> g.burst_bits
    ch = b & ((1 << g.channel_bits) - 1)
    lb = b >> g.channel_bits
    row = lb >> (g.col_bits + g.bank_bits)
    w = max(1, g.bank_bits - 1)
    f, r = np.zeros_like(row), row.copy()
    while r.any():
        f ^= r & ((1 << w) - 1)
        r >>= w
    bank = ((lb >> g.col_bits) ^ (f << 1)) & ((1 << g.bank_bits) - 1)
    return ch, bank, row


def _conflicts(p: RduParams, H: int, n: int, win: int = 4) -> int:
    """Bursts at which two lockstep sequential streams ``H`` beats apart (``n`` beats each)
    need, within +-``win`` bursts, the bank the other uses for another row (hdl/hbm.py's
    address map: such pairs ping-pong precharge/activate in the in-order channel queues),
    summed over sample bases."""
    from hdl.hbm import HbmGeometry
    g = HbmGeometry(p)
    bu = p.hbm_burst_beats
    rng = np.random.default_rng(0)
    bases = rng.integers(0, max(1, p.hbm_beats // 2 // bu), _SAMPLE_BASES) * bu
    t = np.arange(0, n, bu)
    d = np.arange(-win, win + 1) * bu
    a = bases[:, None] + t[None, :]                              # (bases, t)
    ca, ba, ra = _banks(g, a)
    bb = a[:, :, None] + H + d[None, None, :]                    # (bases, t, d)
    cb, bk, rb = _banks(g, bb)
    hit = (cb == ca[..., None]) & (bk == ba[..., None]) & (rb != ra[..., None])
    return int(hit.any(axis=2).sum())


def _half_offset(p: RduParams, half_beats: int) -> int:
    """H, the second half's offset in the blob: ``half_beats`` rounded up to a burst; for a
    half of ``HALF_MIN_SPREAD`` beats or more, the candidate (that one, then the next 15 steps
    of 32 beats) with the fewest predicted bank conflicts between the two weight streams
    (:func:`_conflicts`; the smallest on ties). Measured on the default chip (two streams of
    544 beats): 2,074 cycles at offset 576 against 730 at 768. Shorter halves stay compact (the
    kernel is latency-bound there, and the padding would be most of the blob)."""
    bu = p.hbm_burst_beats
    H0 = -(-half_beats // bu) * bu
    if half_beats < HALF_MIN_SPREAD:
        return H0
    start = -(-H0 // 32) * 32
    cands = [H0] + [start + 32 * k for k in range(_HALF_STEPS) if start + 32 * k > H0]
    return min(cands, key=lambda h: (_conflicts(p, h, half_beats), h))


def decode_gemv_layout(p: RduParams, rows: int, cols: int, x_bits: int = 8,
                       out_bits: int = 8) -> GemvDecodeLayout:
    """The decode GEMV's sizes on chip ``p``; raises :class:`GemvError` for shapes it cannot
    run (naming what to change)."""
    rows = _int_arg(rows, "gemv rows")
    cols = _int_arg(cols, "gemv cols")
    if rows < 1 or cols < 1:
        raise GemvError(f"gemv shape {rows}x{cols}: rows and cols must be positive")
    if x_bits not in (8, 16):
        raise GemvError(f"gemv x_bits {x_bits!r}: x is int8 or int16 (8 or 16)")
    if out_bits not in (8, 16, 32):
        raise GemvError(f"gemv out_bits {out_bits!r}: the packer writes 8, 16 or 32 bit")
    L, bb = p.lanes, p.beat_bytes
    nb = -(-cols // bb)
    x_beats = nb if x_bits == 8 else -(-2 * cols // bb)
    nblk = -(-rows // L)
    nsub = nblk + (nblk & 1)
    S = L * nb + 1
    depth = pmu_depth(p)
    if S > depth:
        raise GemvError(f"gemv cols {cols}: a sub-block of {L} rows x {nb} beats + 1 words beat "
                        f"= {S} beats exceeds a PMU ({depth} beats); the largest cols is "
                        f"{(depth - 1) // L * bb}")
    if 2 * nb > depth:
        raise GemvError(f"gemv cols {cols}: x ({2 * nb} beats of byte planes) exceeds a PMU")
    if L * nsub // 2 > 65535:
        raise GemvError(f"gemv rows {rows}: {L * nsub // 2} rows per PCU exceed the 16-bit "
                        f"counters (at most {2 * 65535 // L * L // 2} rows)")
    H = _half_offset(p, nsub // 2 * S)
    y_beats = -(-(rows * out_bits // 8) // bb)
    return GemvDecodeLayout(rows, cols, x_bits, out_bits, L, nb, x_beats, nblk, nsub, S, H,
                            y_beats)


def gemv_constants(p: RduParams, w_int8, m, s) -> bytes:
    """The per-layer constants blob of the decode GEMV (layout in the module docstring): int8
    ``w_int8`` (rows x cols) and the per-row REQUANT pairs ``m``, ``s`` (arrays of ``rows``, or
    one pair for all rows) as ``PcuConfig.requant_word(m, s)``, in sub-blocks of ``lanes`` rows,
    even sub-blocks in the first half, odd ones in the second."""
    try:
        w = intops.check_range(w_int8, 8, "gemv weight")
    except (TypeError, OverflowError) as e:
        raise GemvError(f"gemv weights must be int8 integers: {e}") from None
    if w.ndim != 2 or w.size == 0:
        raise GemvError(f"gemv weights must be a non-empty 2-D (rows, cols) array, got shape "
                        f"{w.shape}")
    rows, cols = w.shape
    try:
        m = np.broadcast_to(intops.as_int(m), (rows,))
        s = np.broadcast_to(intops.as_int(s), (rows,))
    except TypeError as e:
        raise GemvError(f"gemv REQUANT m, s must be integers: {e}") from None
    except ValueError:
        raise GemvError(f"gemv REQUANT m, s must have one entry per row ({rows}) or one for "
                        f"all, got shapes {np.shape(m)} and {np.shape(s)}") from None
    bad = np.flatnonzero((m < 0) | (m >= 1 << intops.MULT_BITS) | (s < 0) | (s > 63))
    if bad.size:
        r = int(bad[0])
        raise GemvError(f"gemv REQUANT pair of row {r} (m={m[r]}, s={s[r]}) out of range: m must "
                        f"be in 0..{(1 << intops.MULT_BITS) - 1}, s in 0..63")
    lay = decode_gemv_layout(p, rows, cols)
    L, bb, nb, S, H = lay.lanes, p.beat_bytes, lay.nb, lay.sub_beats, lay.half_beats
    blob = np.zeros((lay.blob_beats, bb), np.uint8)
    words = (m.astype(np.uint32) | (s.astype(np.uint32) << 16)).astype("<u4")
    for j in range(lay.nblk):
        r0, r1 = j * L, min(rows, j * L + L)
        base = (j % 2) * H + (j // 2) * S
        sub = np.zeros((L, nb * bb), np.int8)
        sub[:r1 - r0, :cols] = w[r0:r1]
        blob[base:base + L * nb] = sub.view(np.uint8).reshape(L * nb, bb)
        wb = np.zeros(L, "<u4")
        wb[:r1 - r0] = words[r0:r1]
        blob[base + L * nb] = wb.view(np.uint8)
    return blob.tobytes()


def decode_gemv_roles(p: RduParams, pcus: int, x_bits: int, trim: bool) -> tuple:
    """The roles (pcus, pmus, agcus) and route edges of a decode GEMV variant."""
    pc = ["B"] + (["A", "C"] if pcus == 2 else []) + (["X"] if x_bits == 16 else [])
    pm = ["WB", "SB"] + (["WA", "SA"] if pcus == 2 else []) + ["MX"] \
        + (["ML"] if x_bits == 16 else []) + (["MY"] if trim else [])
    ag = ["aWB"] + (["aWA"] if pcus == 2 else []) + ["ax", "ay"]
    computes = ["B", "A"] if pcus == 2 else ["B"]
    edges = [("aWB", "WB"), ("aWB", "SB"), ("WB", "B"), ("SB", "B")]
    if pcus == 2:
        edges += [("aWA", "WA"), ("aWA", "SA"), ("WA", "A"), ("SA", "A"), ("B", "C"), ("A", "C")]
    if x_bits == 16:
        edges += [("ax", "X"), ("X", "MX"), ("X", "ML")] + [("ML", c) for c in computes]
    else:
        edges += [("ax", "MX")]
    edges += [("MX", c) for c in computes]
    last = "C" if pcus == 2 else "B"
    edges += [(last, "MY"), ("MY", "ay")] if trim else [(last, "ay")]
    return pc, pm, ag, edges


def build_decode_gemv(p: RduParams, *, rows: int, cols: int, x_bits: int, out_bits: int, w, x,
                      y, iterations: int = 1, pcus: int | None = None, name: str = "gemv",
                      roles: dict | None = None) -> DecodeKernel:
    """The decode GEMV kernel ``y = REQUANT(W @ x, m[r], s[r], out_bits)`` (module docstring):
    ``w`` the :func:`gemv_constants` blob (per layer: its ``Ref`` carries the layer stride),
    ``x`` int8/int16 [cols], ``y`` packed ``out_bits`` [rows]. ``pcus``: weight-streaming
    PCUs, 2 (row split, the HBM peak) or 1; ``None`` = 2 when the chip has the units.
    ``roles``: role -> unit name (default: :func:`sw.kernels.builder.place`)."""
    lay = decode_gemv_layout(p, rows, cols, x_bits, out_bits)
    w, x, y = as_ref(w), as_ref(x), as_ref(y)
    iterations = _int_arg(iterations, "iterations")
    if iterations < 1:
        raise GemvError(f"iterations must be >= 1, got {iterations}")
    g = pcu_geometry(p)
    need_pcu = lambda k: k + (1 if k == 2 else 0) + (x_bits == 16)
    need_pmu = lambda k: 2 * k + 1 + (x_bits == 16) + lay.trim
    if pcus is None:
        pcus = 2 if (p.n_pcus >= need_pcu(2) and p.n_pmus >= need_pmu(2)
                     and p.n_agcus >= 4) else 1
    if pcus not in (1, 2):
        raise GemvError(f"gemv pcus={pcus!r}: the decode GEMV streams weights through 1 or 2 "
                        f"PCUs (four AGCUs: two weight streams, x and y)")
    if p.n_agcus < 2 + pcus:
        raise GemvError(f"gemv with {pcus} weight stream(s) needs {2 + pcus} AGCUs; the chip "
                        f"has {p.n_agcus}")
    if p.n_pcus < need_pcu(pcus) or p.n_pmus < need_pmu(pcus):
        raise GemvError(f"gemv {rows}x{cols} (x{x_bits}, out {out_bits}, pcus={pcus}) needs "
                        f"{need_pcu(pcus)} PCUs and {need_pmu(pcus)} PMUs; the chip has "
                        f"{p.n_pcus} and {p.n_pmus}" + (" (try pcus=1)" if pcus == 2 else ""))
    if x_bits == 16 and g["n_vin"] < 3:
        raise GemvError(f"an int16-x gemv needs PCUs with 3 vector inputs (W, x high bytes, x "
                        f"low bytes); this chip has {g['n_vin']}")
    stages = max(3 if x_bits == 16 else 1, C_STAGES if pcus == 2 else 1,
                 X_STAGES if x_bits == 16 else 1)
    if g["stages"] < stages:
        raise GemvError(f"this gemv needs PCUs with >= {stages} FU stages; the chip has "
                        f"{g['stages']}")
    if g["n_ctr"] < 2:
        raise GemvError("the gemv needs PCUs with >= 2 counters")
    if agcu_writable_counters(p) < (1 if pcus == 2 else 3):
        raise GemvError(f"gemv pcus=1 reads the blob with a 3-counter AGCU program; a bitstream "
                        f"can configure {agcu_writable_counters(p)} counters on this chip")
    if pcus == 1 and lay.lanes * lay.nsub > 65535:
        raise GemvError(f"gemv rows {rows}: {lay.lanes * lay.nsub} rows through one PCU exceed "
                        f"the 16-bit counters; use pcus=2")
    if lay.trim and getattr(p, "pmu_max_buffers", 4) < 2:
        raise GemvError("the gemv's output trim needs PMUs with >= 2 buffers")

    bb, L, nb, S, H = p.beat_bytes, lay.lanes, lay.nb, lay.sub_beats, lay.half_beats
    nsub, half = lay.nsub, lay.per_half
    n_rows_pcu = L * (half if pcus == 2 else nsub)       # rows each weight PCU runs
    n_sub_pcu = half if pcus == 2 else nsub               # sub-blocks through each WB/SB
    max_buf = getattr(p, "pmu_max_buffers", 4)
    depth = pmu_depth(p)
    wb_bufs = max(1, min(max_buf, depth // S))
    wkw = w.program_kw(p, lay.blob_beats, iterations)
    progs = {}
    if pcus == 2:
        progs["aWB"] = AgcuProgram.read(w.beat(p), (half * S,), (1,), **wkw)
        progs["aWA"] = AgcuProgram.read(w.beat(p) + H, (half * S,), (1,), **wkw)
    else:
        progs["aWB"] = AgcuProgram.read(w.beat(p), (S, 2, half), (1, H, S), **wkw)
    if x_bits == 8:
        progs["ax"] = AgcuProgram.read(x.beat(p), (lay.x_beats,), (1,),
                                       **x.program_kw(p, lay.x_beats, iterations))
    else:
        progs["ax"] = AgcuProgram.read(x.beat(p), (lay.x_beats, 2), (1, 0),
                                       **x.program_kw(p, lay.x_beats, iterations))
    progs["ay"] = AgcuProgram.write(y.beat(p), (lay.y_beats,), (1,),
                                    **y.program_kw(p, lay.y_beats, iterations))
    pc_roles, pm_roles, ag_roles, edges = decode_gemv_roles(p, pcus, x_bits, lay.trim)
    computes = ["B", "A"] if pcus == 2 else ["B"]

    # ---- unit configurations (independent of the placement) ----
    w_pmu = PmuConfig(sync=True, buf_base=0, buf_size=S, n_buf=wb_bufs, wr_passes=n_sub_pcu,
                      wr_counts=(S,), wr_strides=(1,), rd_passes=n_sub_pcu,
                      rd_counts=(L * nb,), rd_strides=(1,))
    s_pmu = PmuConfig(sync=True, buf_base=0, buf_size=1, n_buf=min(4, max_buf),
                      wr_passes=n_sub_pcu, wr_counts=(S,), wr_strides=(0,),
                      rd_mode=RdMode.SCALAR, rd_passes=n_sub_pcu, rd_counts=(L,),
                      rd_strides=(1,))
    if x_bits == 8:
        mx = PmuConfig.resident_vector(nb, repeat=n_rows_pcu)
    else:
        mx, ml = (stored_pmu(2 * nb, rd_passes=1, rd_repeat=n_rows_pcu, rd_base=base,
                             rd_counts=(nb,), rd_strides=(1,)) for base in (0, nb))
        nv = 2 * lay.x_beats                  # 16-lane virtual beats of one pass over x
        xs = (PcuConfig(p).counters(nv, 2).vin(0, unpack=16)
              .stage(0, FuOp.PASS, Src.IMM, imm=1, acc_op=AccOp.SUM, acc_level=2)
              .stage(1, FuOp.SUB, Src.PREV, Src.IMM, imm=nv + 1)
              .stage(2, FuOp.SHLR, Src.PREV, Src.IMM, imm=31)
              .stage(3, FuOp.AND, Src.PREV, Src.IMM, imm=8)
              .stage(4, FuOp.SHLR, Src.VIN0, Src.PREV)
              .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=8, flush_level=1))
    if lay.trim:
        my = PmuConfig(sync=True, buf_base=0, buf_size=1, n_buf=min(4, max_buf),
                       wr_passes=lay.produced_beats, wr_counts=(1,), wr_strides=(1,),
                       rd_passes=lay.y_beats, rd_counts=(1,), rd_strides=(1,))
    dot = PcuConfig.gemv(p, n_rows_pcu, nb, out_bits=out_bits, scales_from_sin=True,
                         x_bits=x_bits)
    dot.output(vout=True, sout=False, pack_bits=32 if pcus == 2 else out_bits)
    if pcus == 2:
        merge = (PcuConfig(p).counters(2, half).vin(0, pop_level=1).vin(1, pop_level=1)
                 .stage(0, FuOp.PASS, Src.IMM, imm=1, acc_op=AccOp.SUM, acc_level=1)
                 .stage(1, FuOp.SUB, Src.PREV, Src.IMM, imm=1)
                 .stage(2, FuOp.SELECT, Src.VIN1, Src.VIN0, Src.PREV)
                 .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=out_bits))
    xdesc = "x" if x_bits == 8 else "x high bytes"
    last = "C" if pcus == 2 else "B"

    def build(u):
        kb = KernelBuilder(p, name)
        kb.agcu(u["aWB"], progs["aWB"], role="W+words" + (" even" if pcus == 2 else ""))
        if pcus == 2:
            kb.agcu(u["aWA"], progs["aWA"], role="W+words odd")
        kb.agcu(u["ax"], progs["ax"], role="x load")
        kb.agcu(u["ay"], progs["ay"], role="y store")
        for c in computes:
            kb.pmu(u["W" + c], w_pmu, role=f"W {c}",
                   summary=f"{n_sub_pcu} sub-blocks of {S} beats in {wb_bufs} buffers, "
                           f"reads the {L * nb} W beats of each")
            kb.pmu(u["S" + c], s_pmu, role=f"words {c}",
                   summary=f"keeps the last beat of each of {n_sub_pcu} sub-blocks, reads "
                           f"its {L} REQUANT words as scalars")
            kb.pcu(u[c], dot, role=f"dot {c}",
                   summary=f"{n_rows_pcu} rows x {nb} beats: DP4{' hi/lo' if x_bits == 16 else ''}"
                           f", SUM, REQUANT(sin0 word) {out_bits} bit, pack "
                           f"{32 if pcus == 2 else out_bits}")
        if x_bits == 8:
            kb.pmu(u["MX"], mx, role="x", summary=f"x: {nb} beats, read {n_rows_pcu} times")
        else:
            kb.pcu(u["X"], xs, role="x byte planes",
                   summary=f"x int16 twice: SHLR 8 then 0, pack 8 -> {nb} high + {nb} low beats")
            kb.pmu(u["MX"], mx, role="x high bytes",
                   summary=f"stores {2 * nb} beats, reads [0, {nb}) {n_rows_pcu} times")
            kb.pmu(u["ML"], ml, role="x low bytes",
                   summary=f"stores {2 * nb} beats, reads [{nb}, {2 * nb}) {n_rows_pcu} times")
        if pcus == 2:
            kb.pcu(u["C"], merge, role="merge",
                   summary=f"{half} pairs of 16-row beats (B, A) -> SELECT, pack {out_bits}")
        if lay.trim:
            kb.pmu(u["MY"], my, role="y trim",
                   summary=f"passes {lay.y_beats} of {lay.produced_beats} beats (drops the "
                           f"zero sub-block)")
        if pcus == 2:
            kb.route(f"{u['aWB']}.rd", [f"{u['WB']}.win", f"{u['SB']}.win"], what="blob half 0")
            kb.route(f"{u['aWA']}.rd", [f"{u['WA']}.win", f"{u['SA']}.win"], what="blob half 1")
        else:
            kb.route(f"{u['aWB']}.rd", [f"{u['WB']}.win", f"{u['SB']}.win"], what="blob")
        if x_bits == 8:
            kb.route(f"{u['ax']}.rd", f"{u['MX']}.win", what="x int8")
        else:
            kb.route(f"{u['ax']}.rd", f"{u['X']}.vin0", what="x int16 (twice)")
            kb.route(f"{u['X']}.vout", [f"{u['MX']}.win", f"{u['ML']}.win"], what="x byte planes")
            kb.route(f"{u['ML']}.rout", [f"{u[c]}.vin2" for c in computes], what="x low bytes")
        kb.route(f"{u['MX']}.rout", [f"{u[c]}.vin1" for c in computes], what=xdesc)
        for c in computes:
            kb.route(f"{u['W' + c]}.rout", f"{u[c]}.vin0", what=f"W {c}")
            kb.route(f"{u['S' + c]}.sout", f"{u[c]}.sin0", what=f"REQUANT words {c}")
        if pcus == 2:
            kb.route(f"{u['B']}.vout", f"{u['C']}.vin0", what="y even sub-blocks (int32)")
            kb.route(f"{u['A']}.vout", f"{u['C']}.vin1", what="y odd sub-blocks (int32)")
        if lay.trim:
            kb.route(f"{u[last]}.vout", f"{u['MY']}.win", what=f"y int{out_bits} + zero beat")
            kb.route(f"{u['MY']}.rout", f"{u['ay']}.wr", what=f"y int{out_bits}")
        else:
            kb.route(f"{u[last]}.vout", f"{u['ay']}.wr", what=f"y int{out_bits}")
        return kb, u

    kb, roles = place_roles(p, build=build, what="gemv", roles=roles, pcus=pc_roles,
                            pmus=pm_roles, agcus=ag_roles, edges=edges, error=GemvError)
    kb.metadata.update({"pattern": "gemv", "rows": rows, "cols": cols, "x_bits": x_bits,
                        "out_bits": out_bits, "pcus": pcus, "roles": roles,
                        "hbm": refs_metadata(w=w, x=x, y=y)})
    reads = {"w": lay.w_read_beats * bb, "x": lay.x_read_beats * bb}
    writes = {"y": lay.y_beats * bb}
    moved = lay.w_read_beats + lay.x_read_beats + lay.y_beats
    return DecodeKernel(
        pattern="gemv", params=p, builder=kb, roles=roles,
        watchdog=watchdog_cycles(p, moved),
        reads=reads, writes=writes, outputs={"y": y},
        info={"layout": lay, "rows": rows, "cols": cols, "x_bits": x_bits,
              "out_bits": out_bits, "pcus": pcus, "agcu_programs": progs})


def gemv_case(p: RduParams, layers, x, out_bits: int, *, iteration: int = 0,
              pcus: int | None = None, name: str = "gemv"):
    """A decode GEMV as a :class:`sw.kernels.patterns.PatternKernel` for the pattern testbench:
    ``layers`` is a list of ``(W, m, s)`` per layer (one entry: a single-layer operand); their
    :func:`gemv_constants` blobs go to HBM one layer stride apart from byte 0, then ``x``
    (int8 or int16 array: its dtype is ``x_bits``), then ``y``. The kernel is built with that
    stride; launch it at sequencer iteration ``iteration`` (``write_case(..., iteration=)``):
    the expected bytes are ``GoldenDecoder.gemv`` of layer ``iteration`` (zero padding
    included)."""
    from sw.golden import GoldenDecoder
    from sw.kernels.patterns import HbmImage, HbmRegion, PatternKernel

    x = np.asarray(x)
    if x.dtype not in (np.int8, np.int16) or x.ndim != 1:
        raise GemvError(f"gemv case x must be a 1-D int8 or int16 array, got {x.dtype} "
                        f"{x.shape}")
    x_bits = 8 if x.dtype == np.int8 else 16
    if not 0 <= iteration < len(layers):
        raise GemvError(f"iteration {iteration} outside the {len(layers)} layers given")
    rows, cols = np.shape(layers[0][0])
    if x.size != cols:
        raise GemvError(f"x has {x.size} elements, W has {cols} columns")
    lay = decode_gemv_layout(p, rows, cols, x_bits, out_bits)
    bb = p.beat_bytes
    blobs = [gemv_constants(p, *wl) for wl in layers]
    period = bb * p.hbm_burst_beats * p.hbm_channels
    stride = -(-len(blobs[0]) // period) * period if len(layers) > 1 else 0
    xa = -(-(len(layers) * max(stride, len(blobs[0]))) // period) * period
    ya = xa + -(-lay.x_beats * bb // period) * period
    end = ya + lay.y_beats * bb
    if end > p.hbm_bytes:
        raise GemvError(f"the case needs {end} B of HBM; the chip has {p.hbm_bytes} B")
    k = build_decode_gemv(p, rows=rows, cols=cols, x_bits=x_bits, out_bits=out_bits,
                          w=(0, stride), x=xa, y=ya, iterations=len(layers), pcus=pcus,
                          name=name)
    w, m, s = layers[iteration]
    golden = GoldenDecoder.gemv(np.asarray(w), x, m, s, out_bits)
    dt = {8: "<i1", 16: "<i2", 32: "<i4"}[out_bits]
    expected = np.zeros(lay.y_beats * bb // (out_bits // 8), dt)
    expected[:rows] = golden
    xi = np.zeros(lay.x_beats * bb // (x_bits // 8), x.dtype)
    xi[:cols] = x
    images = [HbmImage(f"blob{l}", l * stride, b) for l, b in enumerate(blobs)]
    images.append(HbmImage("x", xa, xi.astype("<i1" if x_bits == 8 else "<i2").tobytes()))
    k.builder.metadata["hbm"].update({"layers": len(layers), "stride": stride})
    return PatternKernel("gemv", p, k.builder, k.roles, images,
                         HbmRegion("y", ya, lay.y_beats * bb), expected.tobytes(), out_bits,
                         golden, {"rows": rows, "cols": cols, "x_bits": x_bits,
                                  "out_bits": out_bits, "pcus": k.info["pcus"],
                                  "hbm_read": sum(k.reads.values()),
                                  "hbm_write": sum(k.writes.values())}, k.watchdog)

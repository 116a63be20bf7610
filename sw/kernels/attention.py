"""Attention scores + softmax numerators decode kernel: ``GoldenDecoder.attn_scores`` then
``GoldenDecoder.softmax_num`` of ``sw/golden.py`` on the chip, bit-exact.

Semantics, for the ``T = pos + 1`` cached positions of one layer (``n_rep = n_heads /
n_kv_heads``; query head ``h`` reads KV head ``h // n_rep``)::

    s[h][t]  = SUM_d q8[h][d] * K[t][h // n_rep][d]                    (int32, DP4)
    mx[h]    = MAX_t s[h][t]
    i[h][t]  = MIN(REQUANT(mx[h] - s[h][t], m_e, s_e, 16), N - 1)       (N = len(EXP))
    e[h][t]  = EXP[i[h][t]]
    sums[h]  = SUM_t e[h][t]

Contract (``sw/kernels/kernel.py``)
-----------------------------------
``build_attn_softmax(p, *, n_heads, n_kv_heads, head_dim, context, pos, q, kv, const, e, sums,
iterations=1, name="attn_softmax", exp_entries=EXP_SIZE, roles=None) -> DecodeKernel``

- ``q``: ``Ref`` of the RoPE'd query, int8 ``[n_heads * head_dim]`` in ``[h][d]`` order,
  zero-padded to whole beats (``q_beats = ceil(n_heads * head_dim / 64)``). The padding must
  be zero (it multiplies K words of head 0 into the scores of the padding heads).
- ``kv``: ``Ref`` of layer 0's K cache (and the per-layer stride): row ``t`` = position ``t``,
  ``[kv_head][d]`` int8 (``kv_dim = n_kv_heads * head_dim`` bytes) padded to ``kv_row_bytes``
  (the next power of two when ``kv_dim < 64``: rows share a beat; else whole beats). The kernel
  reads the beats holding rows ``0..pos`` once (``ceil(T * kv_row_bytes / 64)`` beats).
- ``const``: ``Ref`` of the per-layer constants blob of :func:`attn_constants`.
- ``e``: ``Ref`` of the numerators: int32, one beat per position ``t = 0..pos`` (lane ``h`` =
  ``e[h][t]``, lanes ``>= n_heads`` 0).
- ``sums``: ``Ref`` of one beat, lane ``h`` = ``sums[h]`` (lanes ``>= n_heads`` 0). It must be
  **the beat right before e** (``sums.addr == e.addr - 64``: position-independent, what a
  compiled decode uses) or the beat right after e's ``T`` beats (``e.addr + 64 * T``); same
  per-iteration stride as ``e``. Why: see *the output stream* below.
- ``iterations``: how many sequencer iterations the kernel may be launched at (the AGCU
  regions cover every copy; launched at iteration ``l`` it reads ``kv``/``const`` of layer
  ``l`` and writes ``e``/``sums`` at ``+ l * stride``).
- ``exp_entries``: ``N``, the EXP table's length (``len(qm.exp)``, ``sw.quant.EXP_SIZE``).
- ``roles``: role -> unit name; by default :func:`sw.kernels.builder.place` chooses.

``attn_constants(p, qm, layer) -> bytes``: the per-layer blob for the model's own shapes
(:func:`attn_softmax_constants` for any shapes). Beat-aligned, little-endian 32-bit words::

    beats [0, q_beats)        K gather indices: lane i of beat j = the word (within a K row)
                              that the int8 q word j*16+i multiplies: query byte b = 64j + 4i
                              is (h, d) = divmod(b, hd), and reads K word
                              ((h // n_rep) * hd + d) / 4 (0 for padding heads)
    beat q_beats              REQUANT word per head lane: 1 << 31 | m_e | s_e << 16 for
                              h < n_heads (bit 31 marks a used lane; REQUANT reads bits 14:0
                              and 21:16 only), 0 for the other lanes
    beat q_beats + 1          N + 1 in every lane (the marker index)
    beats q_beats + 2 ..      the table: EXP[0..N-1], 0 (index N: unused lanes),
                              MARKER = 0x7FFF0000 (index N + 1), zero-padded to whole beats

Mapping (``P*`` PCUs, ``M*`` PMUs, ``a*`` AGCUs)::

    ac.rd (constants blob) -> multicast -> MI.win, MW.win, ML.win (each stores all of it)
    ak.rd (K rows 0..pos) -> MK.win
    MI: the q_beats index beats, read T times -> MK.gidx
    MK: GATHER: per position t and q beat j, lane i = K word (t * kv_row_bytes / 4 + idx_i)
        -> "expanded K": K[t][h // n_rep][d] at the lane of q[h][d] -> PS.vin0
    aq.rd (q) -> PS.vin1 (one beat, reused by every position; q_beats > 1: via MQ, which
        stores q and re-reads it T times)
    PS: DP4(K, q); segmented SUM tree over hd/4 lanes (hd = 4: no tree) -> one score per
        head; the packer flushes per position -> one beat per t (lane h = s[h][t])
        -> multicast -> MS.win (stores the T score beats), PM.vin0
    PM: lane MAX accumulated over the T beats -> mx (one beat) -> PI.vin1
    MS: the scores again once all are in (descending t for sums-before-e) -> PI.vin0
    MW: [REQUANT words beat, marker beat] read T times -> PI.vin2
    PI: per score beat two entries (counters 2 x T; vin0 popped per pair):
        SUB(mx, s); REQUANT(., vin2) 16 bit; MIN(., N-1); SELECT(vin2 != 0 ? . : N);
        MAX(., vin2) -> entry 0: the EXP index (N for unused lanes), entry 1: N + 1 in every
        lane -> ML.gidx
    ML: LUT (GATHER service over the table words) -> e_t, then MARKER -> PE.vin0
    PE: AND(v, 0xFFFF) summed over the whole program (R = running sum of the e beats; the
        marker adds 0); MIN(v, R) -> entry 0: e_t (R >= e_t), entry 1: R (MARKER > R)
        -> ao.wr

The output stream: the write AGCU gets 2T beats, ``e_t`` then the running sum, per position
(in the order MS replays them), and writes them with the program ``counts (2, T)``: with
sums before e, positions descending from ``T - 1``, beat (k, j) at ``e + T - 1 - j - k``; with
sums after e, ascending, at ``e + t + k``. Each running sum lands on the slot of the next
position, which that position's ``e`` overwrites right after (same AGCU, same HBM channel:
in order); the last one, the complete sum, lands on ``sums``. So the kernel writes 2T beats
(``2T - 1`` into e's region, 1 into sums) to deliver T + 1.

Why this shape
    *Four AGCUs*: q, K and the per-layer blob are three read streams (three different
    per-iteration strides), so e and sums share the fourth, one AGCU program, hence the
    adjacency rule. A PCU emits one beat per entry and a PMU replays affine address chains,
    so no unit can turn the T numerator beats into T + 1 beats with a different last one;
    two entries per position (the ``2 x T`` counters, read ``[word, marker]`` alternately
    by MW's chain) give a sum beat per position, and the AGCU's overlapping addresses keep
    only the last one.
    *Heads vs lanes and GQA*: the output wants one beat per position with head ``h`` in
    lane ``h``. The DP4 lanes hold q in its natural ``[h][d]`` layout; MK's gather lays K
    out to match (a head's ``hd/4`` lanes read its KV head's words: the GQA mapping is in the
    index beats, so any ``n_rep`` costs nothing), and the segmented SUM tree (``REDUCE``
    bits 5:3 = log2(hd/4)) turns each group into one score, in head order: ``16 * 4 / hd``
    heads per expanded beat, ``q_beats`` beats per position. A gather beat of one position
    touches at most 16 consecutive K words: conflict-free, one beat per cycle.
    *Two passes*: the max must be known before any EXP index. PS streams the scores once
    into MS (T <= 256 beats) while PM reduces the max; PI re-reads them from MS.
    *Unused lanes*: their REQUANT word is 0, so SELECT sends them to table entry N = 0.
    *No divider, no extra pass*: PE keeps the lane-wise running sum of the numerators; the
    marker entry (MARKER > any sum, & 0xFFFF = 0) turns ``MIN(v, R)`` into ``R``.

Sizes: ``head_dim`` in {4, 8, 16, 32} (a head must be a power-of-two group of 4-byte lanes,
at most half the lanes: the segmented tree), ``n_heads <= 16`` (lanes), ``n_heads %
n_kv_heads == 0``, ``T <= 256`` (MS holds one beat per position) and, when ``kv_dim < 64``,
``T * kv_row_bytes <= 16 KiB`` (MK holds all rows; wider rows stream through four one-row
buffers). Default model (8 heads, 4 KV heads, hd 8, kv rows of 32 B): q 1 beat, K
``ceil(T / 2)`` beats, blob 20 beats read; ``2 T`` beats written.

Cycles per launch on the default chip, default model shapes (measured, ``run_busy_cycles``
from the launch to the last unit done; HBM refresh stalls add up to a few hundred cycles
depending on the run's history)::

    T        1     16    64    128   200    256
    cycles   295   375   620   970   1365   1795

About 290 cycles of fill (HBM latency, the K and blob loads, two pipelines) plus ~5.5 cycles
per position: pass 1 takes one cycle per position (per q beat), pass 2 two entries per
position, where the EXP gather takes ~2 cycles for real scores (indices collide in a PMU
bank) plus one for the marker, and the 2T single-beat writes ~2 cycles each (the descending
addresses do not coalesce; sums after e merges pairs: a few % faster).

Placement: :func:`sw.kernels.builder.place` over ``ATTN_EDGES`` (``rdu compile`` draws the grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hdl.fu import FuOp
from hdl.pcu import AccOp, PcuConfig, Red, Src, pcu_geometry
from hdl.pmu import PmuConfig, RdMode, pmu_depth
from hdl.params import RduParams
from sw import intops
from sw.kernels.builder import AgcuProgram, KernelBuilder, KernelError, place_roles
from sw.kernels.kernel import (DecodeKernel, Ref, as_ref, int_arg, refs_metadata, require_pcus,
                               stored_pmu, watchdog_cycles)
from sw.kernels.patterns import PatternError
from sw.quant import EXP_SIZE

__all__ = ["AttnLayout", "attn_softmax_layout", "attn_softmax_constants", "attn_constants",
           "build_attn_softmax", "kv_row_bytes", "MARKER", "USED_LANE",
           "ATTN_PCUS", "ATTN_PMUS", "ATTN_AGCUS", "ATTN_EDGES"]

MARKER = 0x7FFF0000          # table entry N + 1: larger than any sum, & 0xFFFF == 0
USED_LANE = 1 << 31          # flag bit of a used lane's REQUANT word (REQUANT ignores it)
PI_STAGES = 5                # SUB, REQUANT, MIN, SELECT, MAX

ATTN_PCUS = ("PS", "PM", "PI", "PE")
ATTN_PMUS = ("MI", "MK", "MS", "MW", "ML")           # + "MQ" when q_beats > 1
ATTN_AGCUS = ("aq", "ak", "ac", "ao")
ATTN_EDGES = (("ac", "MI"), ("ac", "MW"), ("ac", "ML"), ("ak", "MK"), ("MI", "MK"),
              ("MK", "PS"), ("aq", "PS"), ("PS", "MS"), ("PS", "PM"), ("PM", "PI"),
              ("MS", "PI"), ("MW", "PI"), ("PI", "ML"), ("ML", "PE"), ("PE", "ao"))

def _up(v: int, a: int) -> int:
    return -(-v // a) * a


def _int(v, what: str, lo: int, hi: int | None = None) -> int:
    return int_arg(v, what, lo, hi, error=PatternError)


def kv_row_bytes(p: RduParams, kv_dim: int) -> int:
    """Bytes per K/V cache row: the next power of two below a beat, else whole beats."""
    bb = p.beat_bytes
    if kv_dim < bb:
        return 1 << (kv_dim - 1).bit_length()
    return _up(kv_dim, bb)


@dataclass(frozen=True)
class AttnLayout:
    """Sizes of one attention-softmax kernel (beats of ``lanes`` 32-bit words)."""
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context: int
    pos: int
    exp_entries: int
    q_beats: int           # int8 q beats = expanded K beats per position
    seg: int               # log2 of lanes per head (0: hd = 4, one lane per head, no tree)
    kv_dim: int
    row_bytes: int         # kv_row_bytes
    k_beats: int           # K beats read (rows 0..pos)
    stream: bool           # MK streams one row per buffer (rows of whole beats)
    tbl_words: int         # N + 2
    tbl_beats: int

    @property
    def T(self) -> int:
        return self.pos + 1

    @property
    def n_rep(self) -> int:
        return self.n_heads // self.n_kv_heads

    @property
    def word_beat(self) -> int:            # blob beat of the REQUANT words
        return self.q_beats

    @property
    def table_beat(self) -> int:           # first blob beat of the table
        return self.q_beats + 2

    @property
    def const_beats(self) -> int:
        return self.q_beats + 2 + self.tbl_beats

    def const_bytes(self, p: RduParams) -> int:
        return self.const_beats * p.beat_bytes


def attn_softmax_layout(p: RduParams, *, n_heads: int, n_kv_heads: int, head_dim: int,
                        context: int, pos: int, exp_entries: int = EXP_SIZE) -> AttnLayout:
    """The kernel's sizes; raises :class:`PatternError` when the shapes do not fit the chip."""
    L, bb = p.lanes, p.beat_bytes
    n_heads = _int(n_heads, "n_heads", 1)
    n_kv_heads = _int(n_kv_heads, "n_kv_heads", 1)
    head_dim = _int(head_dim, "head_dim", 1)
    context = _int(context, "context", 1)
    pos = _int(pos, "pos", 0)
    exp_entries = _int(exp_entries, "exp_entries (the EXP table length)", 1,
                       (1 << intops.MULT_BITS) - 2)
    if n_heads > L:
        raise PatternError(f"n_heads {n_heads}: a head per lane of the e and sums beats, at "
                           f"most {L}")
    if n_heads % n_kv_heads:
        raise PatternError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
    lanes_per_head = head_dim // 4
    if head_dim % 4 or lanes_per_head & (lanes_per_head - 1) or lanes_per_head > L // 2:
        ok = [4 << k for k in range((L // 2).bit_length())]
        raise PatternError(f"head_dim {head_dim}: a head must fill a power-of-two group of "
                           f"4-byte DP4 lanes, at most {L // 2} (the segmented SUM tree): "
                           f"head_dim in {ok}")
    if pos >= context:
        raise PatternError(f"pos {pos} is outside the context of {context} positions")
    T = pos + 1
    depth = pmu_depth(p)
    if T > depth:
        raise PatternError(f"pos {pos}: {T} positions, but the scores PMU holds {depth} beats "
                           f"(one per position): at most {depth} cached positions")
    q_beats = _up(n_heads * head_dim, bb) // bb
    kv_dim = n_kv_heads * head_dim
    row = kv_row_bytes(p, kv_dim)
    stream = row >= bb
    k_beats = T * (row // bb) if stream else _up(T * row, bb) // bb
    if not stream and k_beats > depth:
        raise PatternError(f"pos {pos}: K rows 0..{pos} ({k_beats} beats of {row}-byte rows) "
                           f"exceed a PMU ({depth} beats)")
    if stream and 2 * (row // bb) > depth:
        raise PatternError(f"kv_dim {kv_dim}: two K rows ({2 * row} B) exceed a PMU")
    tbl_words = exp_entries + 2
    tbl_beats = _up(tbl_words, L) // L
    lay = AttnLayout(n_heads, n_kv_heads, head_dim, context, pos, exp_entries, q_beats,
                     lanes_per_head.bit_length() - 1, kv_dim, row, k_beats, stream,
                     tbl_words, tbl_beats)
    if lay.const_beats > depth:
        raise PatternError(f"the constants blob ({lay.const_beats} beats: {q_beats} index, 2 "
                           f"word, {tbl_beats} table) exceeds a PMU ({depth} beats)")
    if T * q_beats > 1 << 16:
        raise PatternError(f"{T * q_beats} expanded K beats exceed a 16-bit PCU counter")
    return lay


def gather_indices(p: RduParams, lay: AttnLayout) -> np.ndarray:
    """(q_beats, lanes) K word index per DP4 lane (see the module docstring)."""
    L, hd = p.lanes, lay.head_dim
    b = 4 * np.arange(lay.q_beats * L)
    h, d = b // hd, b % hd
    idx = np.where(h < lay.n_heads, ((h // lay.n_rep) * hd + d) // 4, 0)
    return idx.reshape(lay.q_beats, L)


def attn_softmax_constants(p: RduParams, *, n_heads: int, n_kv_heads: int, head_dim: int,
                           exp, m: int, s: int) -> bytes:
    """The constants blob for these shapes, EXP table ``exp`` and REQUANT pair ``(m, s)``
    (see the module docstring). The blob does not depend on the position."""
    try:
        table = intops.as_int(exp)
    except TypeError as e:
        raise PatternError(f"the EXP table must be integers: {e}") from None
    if table.ndim != 1 or table.size == 0:
        raise PatternError(f"the EXP table must be a non-empty vector, got shape {table.shape}")
    if table.min() < 0 or table.max() > 0xFFFF:
        raise PatternError(f"EXP table entries must be in 0..65535 (the sum lane masks the "
                           f"numerators to 16 bits), got {table.min()}..{table.max()}")
    m, s = _int(m, "softmax REQUANT m", 0, (1 << intops.MULT_BITS) - 1), \
        _int(s, "softmax REQUANT s", 0, 63)
    lay = attn_softmax_layout(p, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                              context=1, pos=0, exp_entries=table.size)
    L = p.lanes
    idx = gather_indices(p, lay).astype("<u4")
    word = np.zeros(L, "<u4")
    word[:lay.n_heads] = USED_LANE | PcuConfig.requant_word(m, s)
    marker = np.full(L, lay.exp_entries + 1, "<u4")
    tbl = np.zeros(lay.tbl_beats * L, "<u4")
    tbl[:table.size] = table
    tbl[table.size] = 0
    tbl[table.size + 1] = MARKER
    blob = idx.tobytes() + word.tobytes() + marker.tobytes() + tbl.tobytes()
    assert len(blob) == lay.const_bytes(p)
    return blob


def attn_constants(p: RduParams, qm, layer: int) -> bytes:
    """The constants blob of ``layer`` of quantised model ``qm``: its shapes, ``qm.exp`` and
    ``(qm.exp_m[layer], qm.exp_s[layer])``."""
    c = qm.config
    layer = _int(layer, "layer", 0, c.n_layers - 1)
    return attn_softmax_constants(p, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                                  head_dim=c.head_dim, exp=qm.exp, m=int(qm.exp_m[layer]),
                                  s=int(qm.exp_s[layer]))


def build_attn_softmax(p: RduParams, *, n_heads: int, n_kv_heads: int, head_dim: int,
                       context: int, pos: int, q, kv, const, e, sums, iterations: int = 1,
                       name: str = "attn_softmax", exp_entries: int = EXP_SIZE,
                       roles: dict | None = None) -> DecodeKernel:
    """The attention-scores + softmax-numerators kernel (see the module docstring)."""
    lay = attn_softmax_layout(p, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                              context=context, pos=pos, exp_entries=exp_entries)
    iterations = _int(iterations, "iterations", 1)
    q, kv, const, e, sums = (as_ref(v) for v in (q, kv, const, e, sums))
    require_pcus(p, "attention softmax", stages=(PI_STAGES, "SUB, REQUANT, MIN, SELECT, MAX"),
                 n_vin=(3, "scores, max, REQUANT words"), error=PatternError)
    bb, L = p.beat_bytes, p.lanes
    T, QB, N = lay.T, lay.q_beats, lay.exp_entries
    n_ctr = pcu_geometry(p)["n_ctr"]
    eb = e.beat(p)
    if sums.iter_stride != e.iter_stride:
        raise KernelError(f"sums and e must move together: per-iteration strides "
                          f"{sums.iter_stride} and {e.iter_stride}")
    if sums.addr == e.addr - bb:
        descending = True
    elif sums.addr == e.addr + T * bb:
        descending = False
    else:
        raise KernelError(f"sums (byte {sums.addr}) must be the beat right before e (byte "
                          f"{e.addr - bb}) or right after its {T} beats (byte "
                          f"{e.addr + T * bb}): e and sums leave through one AGCU program")
    # out: 2T beats, (k, j) -> descending e + T-1 - j - k, ascending e + j + k
    out_lo = eb - 1 if descending else eb
    st = e.beat_stride(p)
    out_region = (out_lo + min(0, (iterations - 1) * st), T + 1 + (iterations - 1) * abs(st))
    if descending:
        out_prog = AgcuProgram.write(eb + T - 1, (2, T), (-1, -1), iter_stride=st,
                                     region=out_region)
    else:
        out_prog = AgcuProgram.write(eb, (2, T), (1, 1), iter_stride=st, region=out_region)
    progs = {
        "q": AgcuProgram.read(q.beat(p), (QB,), (1,), **q.program_kw(p, QB, iterations)),
        "k": AgcuProgram.read(kv.beat(p), (lay.k_beats,), (1,),
                              **kv.program_kw(p, lay.k_beats, iterations)),
        "c": AgcuProgram.read(const.beat(p), (lay.const_beats,), (1,),
                              **const.program_kw(p, lay.const_beats, iterations)),
        "out": out_prog,
    }
    CB = lay.const_beats
    rb = lay.row_bytes // bb                              # beats per row (streaming)
    row_words = lay.row_bytes // 4

    def blob_pmu(**rd):
        return stored_pmu(CB, **rd)

    def build(u):
        kb = KernelBuilder(p, name)
        kb.agcu(u["aq"], progs["q"], role="q load")
        kb.agcu(u["ak"], progs["k"], role="K rows load")
        kb.agcu(u["ac"], progs["c"], role="constants")
        kb.agcu(u["ao"], progs["out"], role="e + sums store")
        kb.pmu(u["MI"], blob_pmu(rd_passes=1, rd_base=0, rd_counts=(QB, T), rd_strides=(1, 0)),
               role="gather indices", summary=f"stores the blob, reads its {QB} index beat(s) "
                                             f"{T} times")
        kb.pmu(u["MW"], blob_pmu(rd_passes=1, rd_base=lay.word_beat, rd_counts=(2, T),
                                 rd_strides=(1, 0)),
               role="words/marker", summary=f"stores the blob, reads beats "
                                            f"[{lay.word_beat}, {lay.word_beat + 2}) {T} times")
        kb.pmu(u["ML"], blob_pmu(rd_mode=RdMode.GATHER, rd_service=True,
                                 rd_base=lay.table_beat * L, tbl_size=lay.tbl_words),
               role="EXP LUT", summary=f"stores the blob, GATHER over the {lay.tbl_words} "
                                       f"table words")
        if lay.stream:
            mk = PmuConfig(sync=True, buf_base=0, buf_size=rb, n_buf=min(4, p.pmu_max_buffers),
                           wr_passes=T, wr_counts=(rb,), wr_strides=(1,), rd_mode=RdMode.GATHER,
                           rd_passes=T, rd_base=0, rd_counts=(QB,), rd_strides=(0,),
                           tbl_size=lay.kv_dim // 4)
            mk_sum = f"one {lay.row_bytes}-byte row per buffer, GATHER {QB} beats per row"
        else:
            mk = stored_pmu(lay.k_beats, rd_mode=RdMode.GATHER, rd_passes=1, rd_base=0,
                            rd_counts=(QB, T), rd_strides=(0, row_words),
                            tbl_size=lay.kv_dim // 4)
            mk_sum = f"stores {lay.k_beats} K beats, GATHER {QB} x {T} expanded beats"
        kb.pmu(u["MK"], mk, role="K gather", summary=mk_sum)
        ms = stored_pmu(T, rd_passes=1, rd_base=T - 1 if descending else 0, rd_counts=(T,),
                        rd_strides=(-1 if descending else 1,))
        kb.pmu(u["MS"], ms, role="scores", summary=f"stores {T} score beats, re-reads them "
                                                   f"{'descending' if descending else 'ascending'}")
        if QB > 1:
            kb.pmu(u["MQ"], PmuConfig.resident_vector(QB, repeat=T), role="q replay",
                   summary=f"stores q ({QB} beats), reads it {T} times")
        ps = PcuConfig(p).counters(QB, T).vin(0).vin(1, pop_level=0 if QB > 1 else n_ctr)
        ps.stage(0, FuOp.DP4, Src.VIN0, Src.VIN1, Src.ZERO).emit(0)
        if lay.seg:
            ps.reduce(Red.SUM, segment_log2=lay.seg)
        else:
            ps.reduce(Red.OFF)
        ps.output(vout=True, pack_bits=32, flush_level=1)
        kb.pcu(u["PS"], ps, role="scores",
               summary=f"DP4(K, q), SUM over {1 << lay.seg} lanes per head, one beat per t")
        pm = (PcuConfig(p).counters(T).vin(0)
              .stage(0, FuOp.PASS, Src.VIN0, acc_op=AccOp.MAX, acc_level=1)
              .emit(1).reduce(Red.OFF).output(vout=True, pack_bits=32))
        kb.pcu(u["PM"], pm, role="max", summary=f"lane MAX over {T} score beats -> mx")
        pi = (PcuConfig(p).counters(2, T).vin(0, pop_level=1).vin(1, pop_level=n_ctr).vin(2)
              .stage(0, FuOp.SUB, Src.VIN1, Src.VIN0)
              .stage(1, FuOp.REQUANT, Src.PREV, Src.VIN2, Src.ZERO, bits=16)
              .stage(2, FuOp.MIN, Src.PREV, Src.IMM, imm=N - 1)
              .stage(3, FuOp.SELECT, Src.PREV, Src.IMM, Src.VIN2, imm=N)
              .stage(4, FuOp.MAX, Src.PREV, Src.VIN2)
              .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=32))
        kb.pcu(u["PI"], pi, role="EXP index",
               summary=f"MIN(REQUANT(mx - s), {N - 1}) / unused {N} / marker {N + 1}, "
                       f"2 x {T} beats")
        pe = (PcuConfig(p).counters(2, T).vin(0)
              .stage(0, FuOp.AND, Src.VIN0, Src.IMM, imm=0xFFFF, acc_op=AccOp.SUM,
                     acc_level=n_ctr)
              .stage(1, FuOp.MIN, Src.VIN0, Src.PREV)
              .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=32))
        kb.pcu(u["PE"], pe, role="e + sums", summary=f"e_t, running sum: 2 x {T} beats")
        kb.route(f"{u['ac']}.rd", [f"{u['MI']}.win", f"{u['MW']}.win", f"{u['ML']}.win"],
                 what="constants")
        kb.route(f"{u['ak']}.rd", f"{u['MK']}.win", what="K rows")
        kb.route(f"{u['MI']}.rout", f"{u['MK']}.gidx", what="gather indices")
        kb.route(f"{u['MK']}.rout", f"{u['PS']}.vin0", what="expanded K")
        if QB > 1:
            kb.route(f"{u['aq']}.rd", f"{u['MQ']}.win", what="q")
            kb.route(f"{u['MQ']}.rout", f"{u['PS']}.vin1", what="q replayed")
        else:
            kb.route(f"{u['aq']}.rd", f"{u['PS']}.vin1", what="q")
        kb.route(f"{u['PS']}.vout", [f"{u['MS']}.win", f"{u['PM']}.vin0"], what="scores")
        kb.route(f"{u['PM']}.vout", f"{u['PI']}.vin1", what="mx")
        kb.route(f"{u['MS']}.rout", f"{u['PI']}.vin0", what="scores again")
        kb.route(f"{u['MW']}.rout", f"{u['PI']}.vin2", what="REQUANT words / marker")
        kb.route(f"{u['PI']}.vout", f"{u['ML']}.gidx", what="EXP indices")
        kb.route(f"{u['ML']}.rout", f"{u['PE']}.vin0", what="e / marker")
        kb.route(f"{u['PE']}.vout", f"{u['ao']}.wr", what="e + running sums")
        return kb, u

    pmus = list(ATTN_PMUS) + (["MQ"] if QB > 1 else [])
    edges = [x for x in ATTN_EDGES if QB == 1 or x != ("aq", "PS")]
    if QB > 1:
        edges += [("aq", "MQ"), ("MQ", "PS")]
    kb, roles = place_roles(p, build=build, what="attention softmax", roles=roles,
                            pcus=ATTN_PCUS, pmus=pmus, agcus=ATTN_AGCUS,
                            edges=edges, error=PatternError)
    kb.metadata.update({"pattern": "attn_softmax", "n_heads": lay.n_heads,
                        "n_kv_heads": lay.n_kv_heads, "head_dim": lay.head_dim,
                        "context": lay.context, "pos": lay.pos, "exp_entries": N,
                        "roles": roles, "sums": "before e" if descending else "after e",
                        "hbm": refs_metadata(q=q, kv=kv, const=const, e=e, sums=sums)})
    moved = QB + lay.k_beats + CB + 2 * T
    return DecodeKernel(
        pattern="attn_softmax", params=p, builder=kb, roles=roles,
        watchdog=watchdog_cycles(p, moved) + 20 * T * QB + 40 * T,
        reads={"q": QB * bb, "kv": lay.k_beats * bb, "const": CB * bb},
        writes={"e": (2 * T - 1) * bb, "sums": bb},
        outputs={"e": e, "sums": sums},
        info={"layout": lay, "descending": descending, "T": T})

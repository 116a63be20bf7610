"""Attention weighted sum of V (decode): ``GoldenDecoder.attn_wsum`` of ``sw/golden.py`` on the
chip, bit-exact, for ``T = pos + 1`` cached positions.

Semantics (per output channel ``c = (h, d)``, ``c = h * head_dim + d``; KV head
``h // n_rep``)::

    acc_c   = SUM_t e[t][h] * V[t][h // n_rep][d]                  (int32)
    sum_h   = SUM_t e[t][h]                                        (= the softmax's sums)
    (ri, E) = intops.recip_index(sum_h, recip_bits)
        E = 31 - CLZ(sum_h); ri = SHLR(sum_h, E - (recip_bits - 1))
    mh_c    = REQUANT(RECIP[ri], m_c, 15, 16)
    o_c     = REQUANT(acc_c, mh_c, s_c + E, out_bits)

Contract (``sw/kernels/kernel.py``)
-----------------------------------
``build_attn_wsum(p, *, n_heads, n_kv_heads, head_dim, context, pos, e, sums, kv, const, out,
out_bits=8, iterations=1, name="attn_wsum", recip_bits=8, v_offset=None, roles=None)
-> DecodeKernel``

- ``e``: ``Ref`` of the softmax numerators, int32, ONE BEAT PER POSITION ``t = 0..pos``: lane
  ``h`` = e of query head ``h`` (``n_heads <= 16``), the other lanes 0 (not relied on).
- ``sums``: ``Ref`` of one int32 beat, lane ``h`` = ``SUM_t e[t][h]``. **Accepted for the
  contract but not read**: the kernel has four HBM streams (e, V, constants, out: the chip's
  four AGCUs) and recomputes the sums from the e it reads anyway, per output channel (exactly
  the golden ``total``, which the softmax defines as that sum). ``reads`` does not list it.
- ``kv``: the per-layer ``Ref`` of the layer's K cache (``iter_stride`` = the KV layer
  stride); the V cache starts ``v_offset`` bytes further, by default
  ``roundup(context * kv_row_bytes, 64)``. Rows are position-major, row ``t`` = position
  ``t`` of every KV head ``[kv_head][d]`` (``kv_dim = n_kv_heads * head_dim`` int8), padded
  to ``kv_row_bytes`` = the next power of two when ``kv_dim < 64`` (rows then share a beat),
  else whole beats. Rows ``T..context-1`` are never used (they may hold anything).
- ``const``: ``Ref`` of the per-layer constants blob of :func:`wsum_constants` (layer
  stride as ``iter_stride``).
- ``out``: ``Ref`` of the output, ``out_bits`` (8 or 16) ``[n_heads * head_dim]``,
  zero-padded to whole beats; the kernel writes every beat of it, padding elements 0.
- ``recip_bits``: ``qm.recip_bits`` (an immediate of the index chain; the table is data).
- ``iterations``: how many sequencer iterations the kernel may be launched at (the AGCU
  regions cover every layer's copy of ``kv`` and ``const``).
- ``roles``: role -> unit name; by default :func:`sw.kernels.builder.place` chooses.

``wsum_constants(p, qm, layer) -> bytes``, the per-layer blob (beat-aligned, little-endian
int32 words; :func:`wsum_blob` builds it from explicit shapes and pairs, :func:`wsum_layout`
gives the offsets). ``K = ceil(n_heads * head_dim / 16)`` channel vectors of 16 lanes, lane
``i`` of vector ``k`` = channel ``c = 16 k + i`` (lanes past the last channel: all-zero words
and indices 0)::

    beats [0, tbl)        RECIP'[j] = RECIP[2**(rb-1) + j] - 2**15, j < 2**(rb-1): the upper
                          half of qm.recip (recip_index always gives ri >= 2**(rb-1)), minus
                          2**15 (see PM below)
    beats [w, w+K)        W_c = m_c | s_c << 16 | sh_c << 22: the REQUANT pair (m_c, s_c) =
                          (qm.attn_m[l][c], qm.attn_s[l][c]) and the byte-extraction shift
                          sh_c = 24 - 8 * (kvbyte_c % 4) of channel c
    beats [ie, ie+K)      e-gather index of channel c: its head h = c // head_dim
    beats [iv, iv+K)      V-gather index of channel c: kvbyte_c // 4, the word of its V byte
                          in a cache row (kvbyte_c = (h // n_rep) * head_dim + d)
    beats [ivc, ivc+K)    only when kv_row_bytes > 64: (kvbyte_c % 64) // 4, the word in its
                          64-byte column (the column-streamed V, below)

HBM per launch on the default model (8 heads, 4 KV heads, head_dim 8; K = 4): e ``T`` beats,
V ``ceil(T / 2)`` beats, constants 20 beats (8 table + 3 * 4), out 1 beat written.

Mapping (``P*`` PCUs, ``M*`` PMUs, ``a*`` AGCUs)::

    ae.rd (e rows) -> ME.win                 ME: stores the T rows; GATHER, chain (t, k)
    av.rd (V rows 0..T-1) -> MV.win          MV: stores them; GATHER, chain (t, k)
    ac.rd (blob) -> MIV.win, MIE.win, MR.win, MW.win   (each stores all of it)
    MIV: V-index beat k, T times per k -> MV.gidx
    MIE: e-index beat k, T times per k -> ME.gidx
    MV.rout (lane i: the V word holding channel c's byte at row t) -> PA.vin0
    ME.rout (lane i: e[t][h(c)]) -> PA.vin1, PS.vin0
    MW: W beat k once per k -> PA.vin2 (popped per k), PM.vin1
    PA: sh = SHLR(W, 22); SHL(Vword, sh); SHLR(., 24) = V byte (sign-extended);
        MUL(., e) accumulated over t -> acc_k (one beat per k) -> PF.vin0
    PS: e accumulated over t -> sum per channel (one beat per k) -> PR.vin0, PF.vin2
    PR: z = CLZ(sum); sh = (32 - rb) - z; ri = SHLR(sum, sh) -> MR.gidx
    MR: LUT (GATHER service over RECIP', words 0..2**(rb-1)-1, base -2**(rb-1)) -> PM.vin0
    PM: AND(W, 0x7FFF) = m; MUL(m, RECIP', C = 2**14); SHLR(., 15) = mh - m;
        ADD(., W) = B = mh | s << 16 (| sh << 22, ignored by REQUANT) -> PF.vin1
    PF: CLZ(sum); E = SUB(31, .); REQUANT(acc, B, C = E) out_bits; pack -> ao.wr (out)

Why this shape
    *Lane rearrangement.* Output lanes are channels; e[t][h] must be broadcast over the
    ``head_dim`` lanes of head ``h`` and V[t][h // n_rep][d] picked per lane (GQA repeats a KV
    head). A PCU cannot move data between lanes, a PMU gather can: each lane reads its own word
    (``word[base + chain + idx_i]``), with per-lane indices from constant beats (MIE, MIV)
    re-sent for every position, and the position added by the gather's read chain
    (``t * row_words``). Gathers are conflict-free here (the lanes of one head read one word,
    broadcast; the V words of a vector are consecutive), so each runs at one beat per cycle.
    *Bytes.* V is int8 and a PMU word holds four: the gathered word of lane i holds its byte
    at ``kvbyte % 4``; ``SHL`` by a per-lane amount (from W, a vector input) then an
    arithmetic ``SHLR 24`` extracts it (no lane-dependent constant exists otherwise).
    *Accumulators.* A lane has one accumulator per stage, so the t loop is innermost: per
    channel vector k, all T positions (e and V stay resident in PMUs and are gathered K
    times; HBM reads each once).
    *Sums.* Summing the gathered e per channel gives the head's sum already broadcast to its
    channels, so ``recip_index``, the table look-up and ``mh`` are per channel, no second
    broadcast needed; it also frees the AGCU a ``sums`` stream would take.
    *One value per stage.* A PCU stage passes one value on; REQUANT needs ``B = mh | s << 16``
    and ``C = E``, both data-dependent. PF derives E itself from the sum (CLZ, SUB) so C is its
    previous stage; B comes from PM. PM computes ``mh`` as ``(m * r + 2**14) >> 15`` (exact:
    with ``r, m < 2**15`` it is at most 32766, so the golden int16 saturation never applies)
    in the form ``(m * (r - 2**15) + 2**14) >> 15 = mh - m``, so that adding the raw W word
    (``m | s << 16 | ...``) cancels ``m`` and inserts ``s``: the table holds ``RECIP - 2**15``
    for that. One constant stream W thus feeds both the byte selection of PA
    (bits 22..26, which REQUANT ignores) and PM.
    *Columns.* MV holds the V rows of all T positions (``ceil(T * kv_row_bytes / 64)`` beats,
    at most 128 on the default model); when ``T * kv_row_bytes`` exceeds a PMU (``kv_dim >
    64``, long context) V streams one 64-byte column of every row at a time through a
    double buffer (single when ``2 T > 256``; channel vectors are processed in column order),
    which needs every column to hold the same number of channel vectors, each within one
    column (else a :class:`PatternError` names the largest T for the shape).

Cycles (default chip, measured): ``T * K`` PA beats at one per cycle after the e rows are in
(``T`` beats at one per cycle, behind the HBM latency): about ``280 + (K + 1) * T``, on the
model's shape (K = 4) 289 cycles at T = 1, 342 at 11, 588 at 64, 911 at 128, 1,228 at 192,
1,639 at 256. The e, V and blob loads run at once; where the operands' HBM bank walks collide
(addresses chosen by the compiler), each row miss costs an in-order channel ~24 cycles (up to
~+300 cycles at T = 256 in a bad placement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hdl.fu import FuOp
from hdl.pcu import AccOp, PcuConfig, Red, Src, pcu_geometry
from hdl.pmu import PmuConfig, RdMode, pmu_depth
from hdl.params import RduParams
from sw import intops
from sw.kernels.builder import AgcuProgram, KernelBuilder, place_roles
from sw.kernels.kernel import (DecodeKernel, as_ref, int_arg, refs_metadata, require_pcus,
                               stored_pmu, watchdog_cycles)
from sw.kernels.patterns import PatternError
from sw.quant import RECIP_BITS

__all__ = ["WsumLayout", "wsum_layout", "wsum_blob", "wsum_constants", "build_attn_wsum",
           "WSUM_PCUS", "WSUM_PMUS", "WSUM_AGCUS", "WSUM_EDGES",
           "channel_map"]

WSUM_PCUS = ("PA", "PS", "PR", "PM", "PF")
WSUM_PMUS = ("MV", "ME", "MIV", "MIE", "MR", "MW")
WSUM_AGCUS = ("ae", "av", "ac", "ao")
WSUM_EDGES = (("ae", "ME"), ("av", "MV"), ("ac", "MIV"), ("ac", "MIE"), ("ac", "MR"),
              ("ac", "MW"), ("MIV", "MV"), ("MIE", "ME"), ("MV", "PA"), ("ME", "PA"),
              ("ME", "PS"), ("MW", "PA"), ("MW", "PM"), ("PA", "PF"), ("PS", "PR"),
              ("PS", "PF"), ("PR", "MR"), ("MR", "PM"), ("PM", "PF"), ("PF", "ao"))

PA_STAGES = 4          # SHLR, SHL, SHLR, MUL (PM also needs 4)
W_SHIFT = 22           # bit of W where the byte-extraction shift sits (REQUANT ignores 22..31)
M_MASK = (1 << intops.MULT_BITS) - 1


def _up(v: int, a: int) -> int:
    return -(-v // a) * a


def _int(v, what: str, lo: int, hi: int | None = None) -> int:
    return int_arg(v, f"attn_wsum {what}", lo, hi, error=PatternError)


@dataclass(frozen=True)
class WsumLayout:
    """Sizes that depend on the model's shapes only (not on the position)."""
    n_heads: int
    n_kv_heads: int
    head_dim: int
    recip_bits: int
    lanes: int
    channels: int          # n_heads * head_dim
    vectors: int           # K = ceil(channels / lanes)
    kv_dim: int            # bytes of a KV row (int8)
    kv_row_bytes: int      # padded row
    row_beats: int         # kv_row_bytes / beat when >= a beat, else 0 (rows share a beat)
    tbl_words: int         # 2 ** (recip_bits - 1): the upper half of RECIP
    tbl_beats: int
    w_beat: int            # blob offsets (beats)
    ie_beat: int
    iv_beat: int
    ivc_beat: int | None   # column-relative V indices (kv_row_bytes > beat only)
    const_beats: int       # the whole blob

    @property
    def n_rep(self) -> int:
        return self.n_heads // self.n_kv_heads

    def const_bytes(self, p: RduParams) -> int:
        return self.const_beats * p.beat_bytes

    def v_offset(self, p: RduParams, context: int) -> int:
        """Bytes from the K cache to the V cache of a layer."""
        return _up(context * self.kv_row_bytes, p.beat_bytes)


def wsum_layout(p: RduParams, n_heads: int, n_kv_heads: int, head_dim: int,
                recip_bits: int = RECIP_BITS) -> WsumLayout:
    """The blob offsets and row sizes for a model shape; raises :class:`PatternError` for
    shapes the kernel cannot run on this chip."""
    L, bb = p.lanes, p.beat_bytes
    n_heads = _int(n_heads, "n_heads", 1, L)
    n_kv_heads = _int(n_kv_heads, "n_kv_heads", 1)
    head_dim = _int(head_dim, "head_dim", 1)
    recip_bits = _int(recip_bits, "recip_bits", 2, 16)
    if n_heads % n_kv_heads:
        raise PatternError(f"attn_wsum: n_heads {n_heads} is not a multiple of n_kv_heads "
                           f"{n_kv_heads}")
    kv_dim = n_kv_heads * head_dim
    if kv_dim < 4:
        raise PatternError(f"attn_wsum: a KV row of {kv_dim} bytes is less than a PMU word; "
                           f"the kernel needs kv_dim = n_kv_heads * head_dim >= 4")
    rb = (1 << (kv_dim - 1).bit_length()) if kv_dim < bb else _up(kv_dim, bb)
    C = n_heads * head_dim
    K = -(-C // L)
    tbl_words = 1 << (recip_bits - 1)
    tbl_beats = -(-tbl_words // L)
    w = tbl_beats
    ie = w + K
    iv = ie + K
    ivc = iv + K if rb > bb else None
    const_beats = iv + K + (K if ivc is not None else 0)
    lay = WsumLayout(n_heads, n_kv_heads, head_dim, recip_bits, L, C, K, kv_dim, rb,
                     rb // bb if rb >= bb else 0, tbl_words, tbl_beats, w, ie, iv, ivc,
                     const_beats)
    depth = pmu_depth(p)
    if const_beats > depth:
        raise PatternError(f"attn_wsum: the constants blob ({const_beats} beats) exceeds a PMU "
                           f"({depth} beats)")
    return lay


def channel_map(lay: WsumLayout) -> dict:
    """Per lane of every channel vector (``K * lanes`` entries, channel ``c`` = entry ``c``):
    ``real`` (a channel), ``head``, ``kvbyte`` (byte of its V element in a cache row)."""
    n = lay.vectors * lay.lanes
    c = np.arange(n)
    real = c < lay.channels
    h = np.where(real, c // lay.head_dim, 0)
    d = np.where(real, c % lay.head_dim, 0)
    kvbyte = np.where(real, (h // lay.n_rep) * lay.head_dim + d, 0)
    return {"real": real, "head": h, "kvbyte": kvbyte}


def wsum_blob(p: RduParams, *, n_heads: int, n_kv_heads: int, head_dim: int, m, s, recip,
              recip_bits: int = RECIP_BITS) -> bytes:
    """The constants blob (see the module docstring) for explicit shapes, per-channel REQUANT
    pairs ``m``, ``s`` (``n_heads * head_dim`` each) and the reciprocal table ``recip``
    (``2 ** recip_bits`` Q15 entries)."""
    lay = wsum_layout(p, n_heads, n_kv_heads, head_dim, recip_bits)
    try:
        m, s, table = intops.as_int(m), intops.as_int(s), intops.as_int(recip)
    except TypeError as e:
        raise PatternError(f"attn_wsum m, s and the RECIP table must be integer arrays: {e}") \
            from None
    C = lay.channels
    if m.shape != (C,) or s.shape != (C,):
        raise PatternError(f"attn_wsum m and s must have n_heads * head_dim = {C} entries, got "
                           f"shapes {m.shape} and {s.shape}")
    bad = np.flatnonzero((m < 0) | (m > M_MASK) | (s < 0) | (s > 63))
    if bad.size:
        c = int(bad[0])
        raise PatternError(f"attn_wsum REQUANT pair of channel {c} (m={m[c]}, s={s[c]}) out of "
                           f"range: m must be in 0..{M_MASK}, s in 0..63")
    if table.shape != (2 * lay.tbl_words,):
        raise PatternError(f"the RECIP table must have 2**recip_bits = {2 * lay.tbl_words} "
                           f"entries, got shape {table.shape}")
    upper = table[lay.tbl_words:]
    if upper.min() < 0 or upper.max() > M_MASK:
        raise PatternError(f"RECIP table entries {lay.tbl_words}.. must be Q15 mantissas in "
                           f"0..{M_MASK}, got {upper.min()}..{upper.max()}")
    # PM computes mh = (r * m + 2**14) >> 15 without the int16 saturation of the golden
    # REQUANT(r, m, 15, 16): with r, m <= 2**15 - 1 the value is at most 32766, never clamped.
    L = lay.lanes
    cm = channel_map(lay)
    real = cm["real"]
    mm = np.zeros(real.size, np.int64)
    ss = np.zeros(real.size, np.int64)
    mm[:C], ss[:C] = m, s
    sh = np.where(real, 24 - 8 * (cm["kvbyte"] % 4), 0)
    words = np.where(real, mm | ss << 16 | sh << W_SHIFT, 0).astype("<u4")
    tbl = np.zeros(lay.tbl_beats * L, "<i4")
    tbl[:lay.tbl_words] = upper - (1 << 15)
    parts = [tbl.tobytes(), words.tobytes(), cm["head"].astype("<i4").tobytes(),
             (cm["kvbyte"] // 4).astype("<i4").tobytes()]
    if lay.ivc_beat is not None:
        parts.append(((cm["kvbyte"] % p.beat_bytes) // 4).astype("<i4").tobytes())
    blob = b"".join(parts)
    assert len(blob) == lay.const_bytes(p)
    return blob


def wsum_constants(p: RduParams, qm, layer: int) -> bytes:
    """The constants blob of ``layer`` of a quantised model (``qm.attn_m/attn_s[layer]``,
    ``qm.recip``)."""
    c = qm.config
    n = c.n_layers
    layer = _int(layer, "layer", 0, n - 1)
    return wsum_blob(p, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim,
                     m=qm.attn_m[layer], s=qm.attn_s[layer], recip=qm.recip,
                     recip_bits=qm.recip_bits)


@dataclass(frozen=True)
class VPlan:
    """How the V rows of one launch sit in MV."""
    columns: bool          # True: one 64-byte column of all rows per buffer pass
    hbm_beats: int         # V beats read from HBM
    buf_beats: int         # MV buffer size
    n_buf: int
    passes: int
    row_words: int         # gather chain stride per position (words)
    idx_words: int         # gather TBL_SIZE
    vectors_per_pass: int


def _v_plan(p: RduParams, lay: WsumLayout, T: int) -> VPlan:
    bb, L = p.beat_bytes, p.lanes
    depth = pmu_depth(p)
    rb = lay.kv_row_bytes
    K = lay.vectors
    if rb < bb:
        beats = _up(T * rb, bb) // bb
        return VPlan(False, beats, beats, 1, 1, rb // 4, rb // 4, K)
    n = lay.row_beats
    if T * n <= depth:
        return VPlan(False, T * n, T * n, 1, 1, n * L, n * L, K)
    cm = channel_map(lay)
    col = (cm["kvbyte"] // bb).reshape(K, L)
    real = cm["real"].reshape(K, L)
    per_vec = []
    for k in range(K):
        cols = set(col[k][real[k]].tolist())
        if len(cols) != 1:
            raise PatternError(
                f"attn_wsum: T = {T} rows of {rb} bytes ({T * n} beats) exceed a PMU "
                f"({depth} beats), and channel vector {k} spans V columns {sorted(cols)}: "
                f"streaming V by 64-byte column needs each vector within one column; the "
                f"largest T for this shape is {depth // n}")
        per_vec.append(cols.pop())
    counts = np.bincount(per_vec, minlength=n)
    if len(set(counts.tolist())) != 1 or per_vec != sorted(per_vec):
        raise PatternError(
            f"attn_wsum: T = {T} rows of {rb} bytes ({T * n} beats) exceed a PMU ({depth} "
            f"beats), and the V columns hold unequal numbers of channel vectors "
            f"({counts.tolist()}): streaming V by column needs equal ones; the largest T for "
            f"this shape is {depth // n}")
    nb = 2 if 2 * T <= depth and getattr(p, "pmu_max_buffers", 4) >= 2 else 1
    return VPlan(True, T * n, T, nb, n, L, L, K // n)


def _check_chip(p: RduParams):
    require_pcus(p, "attn_wsum", stages=(PA_STAGES, "byte extraction and MAC"),
                 n_vin=(3, "V, e and W; acc, B and the sum"), error=PatternError)
    if p.word_bits != 32 or p.beat_bytes % 4:
        raise PatternError("attn_wsum needs 32-bit lanes")


def build_attn_wsum(p: RduParams, *, n_heads: int, n_kv_heads: int, head_dim: int,
                    context: int, pos: int, e, sums, kv, const, out, out_bits: int = 8,
                    iterations: int = 1, name: str = "attn_wsum",
                    recip_bits: int = RECIP_BITS, v_offset: int | None = None,
                    roles: dict | None = None) -> DecodeKernel:
    """The weighted-sum-of-V kernel for ``T = pos + 1`` positions (see the module
    docstring)."""
    lay = wsum_layout(p, n_heads, n_kv_heads, head_dim, recip_bits)
    context = _int(context, "context", 1)
    pos = _int(pos, "pos", 0)
    if pos >= context:
        raise PatternError(f"attn_wsum: pos {pos} is outside the context of {context} "
                           f"positions")
    if out_bits not in (8, 16) or isinstance(out_bits, bool):
        raise PatternError(f"attn_wsum output width {out_bits!r}: the packer takes 8 or 16 bit "
                           f"(the model's attn_out is 8)")
    iterations = _int(iterations, "iterations", 1)
    _check_chip(p)
    e, sums, kv, const, out = (as_ref(v) for v in (e, sums, kv, const, out))
    bb, L = p.beat_bytes, p.lanes
    depth = pmu_depth(p)
    T = pos + 1
    K = lay.vectors
    if T > depth:
        raise PatternError(f"attn_wsum: T = pos + 1 = {T} e rows exceed a PMU ({depth} "
                           f"beats); the largest pos is {depth - 1}")
    vp = _v_plan(p, lay, T)
    if v_offset is None:
        v_offset = lay.v_offset(p, context)
    v_offset = _int(v_offset, "v_offset", 0)
    vref = kv.at(v_offset)
    for ref, what in ((e, "e"), (sums, "sums"), (vref, "V cache"), (const, "const"),
                      (out, "out")):
        ref.beat(p)
        ref.beat_stride(p)
    cb = lay.ivc_beat if (lay.ivc_beat is not None and not vp.columns) else lay.const_beats
    iv_base = lay.ivc_beat if vp.columns else lay.iv_beat
    out_beats = _up(lay.channels * out_bits // 8, bb) // bb
    n_ctr = pcu_geometry(p)["n_ctr"]
    if vp.columns:
        n = lay.row_beats
        v_prog = AgcuProgram.read(vref.beat(p), (T, n), (n, 1),
                                  **vref.program_kw(p, T * n, iterations))
    else:
        v_prog = AgcuProgram.read(vref.beat(p), (vp.hbm_beats,), (1,),
                                  **vref.program_kw(p, vp.hbm_beats, iterations))
    progs = {
        "e": AgcuProgram.read(e.beat(p), (T,), (1,), **e.program_kw(p, T, iterations)),
        "v": v_prog,
        "const": AgcuProgram.read(const.beat(p), (cb,), (1,),
                                  **const.program_kw(p, cb, iterations)),
        "out": AgcuProgram.write(out.beat(p), (out_beats,), (1,),
                                 **out.program_kw(p, out_beats, iterations)),
    }
    rb = lay.recip_bits

    def blob_pmu(rd_base, counts, strides):
        return stored_pmu(cb, rd_passes=1, rd_base=rd_base, rd_counts=counts, rd_strides=strides)

    def build(u):
        kb = KernelBuilder(p, name)
        kb.agcu(u["ae"], progs["e"], role="e load")
        kb.agcu(u["av"], progs["v"], role="V load")
        kb.agcu(u["ac"], progs["const"], role="constants")
        kb.agcu(u["ao"], progs["out"], role="out store")
        kb.pmu(u["ME"], stored_pmu(T, rd_mode=RdMode.GATHER, rd_passes=1, rd_base=0,
                                   tbl_size=lay.n_heads, rd_counts=(T, K), rd_strides=(L, 0)),
               role="e rows", summary=f"stores {T} e rows; gathers e[t][head(c)], chain "
                                      f"(t {T}, k {K})")
        kb.pmu(u["MV"], PmuConfig(sync=True, buf_base=0, buf_size=vp.buf_beats,
                                  n_buf=vp.n_buf, wr_passes=vp.passes,
                                  wr_counts=(vp.buf_beats,), wr_strides=(1,),
                                  rd_mode=RdMode.GATHER, rd_passes=vp.passes, rd_base=0,
                                  tbl_size=vp.idx_words, rd_counts=(T, vp.vectors_per_pass),
                                  rd_strides=(vp.row_words, 0)),
               role="V rows", summary=(f"{'columns' if vp.columns else 'rows'}: {vp.passes} "
                                       f"pass(es) of {vp.buf_beats} beats, {vp.n_buf} "
                                       f"buffer(s); gathers V words, chain (t {T}, k "
                                       f"{vp.vectors_per_pass})"))
        kb.pmu(u["MIV"], blob_pmu(iv_base, (T, K), (0, 1)), role="V indices",
               summary=f"stores the blob ({cb} beats); V-index beat k, {T} times each")
        kb.pmu(u["MIE"], blob_pmu(lay.ie_beat, (T, K), (0, 1)), role="e indices",
               summary=f"stores the blob ({cb} beats); e-index beat k, {T} times each")
        kb.pmu(u["MW"], blob_pmu(lay.w_beat, (K,), (1,)), role="W words",
               summary=f"stores the blob ({cb} beats); reads the {K} W beats once")
        kb.pmu(u["MR"], PmuConfig(sync=True, wr_passes=1, wr_counts=(cb,), wr_strides=(1,),
                                  rd_mode=RdMode.GATHER, rd_service=True,
                                  rd_base=-lay.tbl_words, tbl_size=2 * lay.tbl_words),
               role="RECIP LUT", summary=f"stores the blob; GATHER RECIP'[ri] (ri in "
                                         f"{lay.tbl_words}..{2 * lay.tbl_words - 1})")
        pa = (PcuConfig(p).counters(T, K).vin(0).vin(1).vin(2, pop_level=1)
              .stage(0, FuOp.SHLR, Src.VIN2, Src.IMM, imm=W_SHIFT)
              .stage(1, FuOp.SHL, Src.VIN0, Src.PREV)
              .stage(2, FuOp.SHLR, Src.PREV, Src.IMM, imm=24)
              .stage(3, FuOp.MUL, Src.PREV, Src.VIN1, Src.ZERO, acc_op=AccOp.SUM, acc_level=1)
              .emit(1).reduce(Red.OFF).output(vout=True, pack_bits=32))
        kb.pcu(u["PA"], pa, role="e x V",
               summary=f"V byte of word (SHL by W>>22, SHLR 24) x e, accumulated over {T} "
                       f"positions, {K} vectors")
        ps = (PcuConfig(p).counters(T, K).vin(0)
              .stage(0, FuOp.PASS, Src.VIN0, acc_op=AccOp.SUM, acc_level=1)
              .emit(1).reduce(Red.OFF).output(vout=True, pack_bits=32))
        kb.pcu(u["PS"], ps, role="sums", summary=f"e accumulated over {T} positions per channel")
        pr = (PcuConfig(p).counters(K).vin(0)
              .stage(0, FuOp.CLZ, Src.VIN0)
              .stage(1, FuOp.SUB, Src.IMM, Src.PREV, imm=32 - rb)
              .stage(2, FuOp.SHLR, Src.VIN0, Src.PREV)
              .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=32))
        kb.pcu(u["PR"], pr, role="recip index",
               summary=f"ri = SHLR(sum, {32 - rb} - CLZ(sum)) -> LUT indices")
        pm = (PcuConfig(p).counters(K).vin(0).vin(1)
              .stage(0, FuOp.AND, Src.VIN1, Src.IMM, imm=M_MASK)
              .stage(1, FuOp.MUL, Src.PREV, Src.VIN0, Src.IMM, imm=1 << 14)
              .stage(2, FuOp.SHLR, Src.PREV, Src.IMM, imm=15)
              .stage(3, FuOp.ADD, Src.PREV, Src.VIN1)
              .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=32))
        kb.pcu(u["PM"], pm, role="mh | s << 16",
               summary="B = ((m * (RECIP - 2**15) + 2**14) >> 15) + W")
        pf = (PcuConfig(p).counters(K).vin(0).vin(1).vin(2)
              .stage(0, FuOp.CLZ, Src.VIN2)
              .stage(1, FuOp.SUB, Src.IMM, Src.PREV, imm=31)
              .stage(2, FuOp.REQUANT, Src.VIN0, Src.VIN1, Src.PREV, bits=out_bits)
              .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=out_bits))
        kb.pcu(u["PF"], pf, role="requant",
               summary=f"REQUANT(acc, B, C = 31 - CLZ(sum)) over {K} vectors, pack {out_bits}")
        kb.route(f"{u['ae']}.rd", f"{u['ME']}.win", what="e rows")
        kb.route(f"{u['av']}.rd", f"{u['MV']}.win", what="V rows")
        kb.route(f"{u['ac']}.rd", [f"{u[r]}.win" for r in ("MIV", "MIE", "MR", "MW")],
                 what="constants")
        kb.route(f"{u['MIV']}.rout", f"{u['MV']}.gidx", what="V indices")
        kb.route(f"{u['MIE']}.rout", f"{u['ME']}.gidx", what="e indices")
        kb.route(f"{u['MV']}.rout", f"{u['PA']}.vin0", what="V words")
        kb.route(f"{u['ME']}.rout", [f"{u['PA']}.vin1", f"{u['PS']}.vin0"], what="e per channel")
        kb.route(f"{u['MW']}.rout", [f"{u['PA']}.vin2", f"{u['PM']}.vin1"], what="W words")
        kb.route(f"{u['PA']}.vout", f"{u['PF']}.vin0", what="acc")
        kb.route(f"{u['PS']}.vout", [f"{u['PR']}.vin0", f"{u['PF']}.vin2"], what="sums")
        kb.route(f"{u['PR']}.vout", f"{u['MR']}.gidx", what="recip indices")
        kb.route(f"{u['MR']}.rout", f"{u['PM']}.vin0", what="RECIP - 2**15")
        kb.route(f"{u['PM']}.vout", f"{u['PF']}.vin1", what="B words")
        kb.route(f"{u['PF']}.vout", f"{u['ao']}.wr", what=f"out int{out_bits}")
        return kb, u

    kb, roles = place_roles(p, build=build, what="attn_wsum", roles=roles,
                            pcus=WSUM_PCUS, pmus=WSUM_PMUS, agcus=WSUM_AGCUS, edges=WSUM_EDGES,
                            error=PatternError)
    kb.metadata.update({"pattern": "attn_wsum", "n_heads": lay.n_heads,
                        "n_kv_heads": lay.n_kv_heads, "head_dim": lay.head_dim,
                        "context": context, "pos": pos, "out_bits": out_bits, "roles": roles,
                        "hbm": {**refs_metadata(e=e, kv=kv, const=const, out=out),
                                "v_offset": v_offset}})
    moved = T + vp.hbm_beats + cb + out_beats
    return DecodeKernel(
        pattern="attn_wsum", params=p, builder=kb, roles=roles,
        watchdog=watchdog_cycles(p, moved + 2 * T * K),
        reads={"e": T * bb, "kv": vp.hbm_beats * bb, "const": cb * bb},
        writes={"out": out_beats * bb}, outputs={"out": out},
        info={"layout": lay, "v_plan": vp, "T": T, "const_beats_read": cb,
              "v_offset": v_offset, "out_beats": out_beats})

"""Decode kernels RoPE and KV-cache append, each bit-exact with its :class:`sw.golden.GoldenDecoder`
step, following the decode-kernel contract of :mod:`sw.kernels.kernel` (the builders take HBM
``Ref``s and a position; they never lay out data).

Contract
--------
``build_rope(p, *, n_heads, head_dim, x16, out, tables, const, pos, out_bits=8, iterations=1)``
    ``out = GoldenDecoder.rope(x16, m, s, out_bits)`` at position ``pos`` for one tensor (q:
    ``n_heads = config.n_heads``, ``(m, s) = (rope_q_m[l], rope_q_s[l])``, ``out_bits =
    act_bits["q_rot"]``; k: ``n_kv_heads``, ``rope_k_m/s``, 8). ``x16``: int16 ``[heads*hd]``;
    ``out``: ``out_bits`` ``[heads*hd]``; both natural golden order, zero-padded to whole beats
    (the kernel writes the padding as 0). ``tables``: the :func:`rope_tables` blob (shared by all
    layers; the kernel reads row ``pos`` only); ``const``: the per-layer :func:`rope_constants`
    blob (a ``Ref`` with the layer stride: launched at iteration ``l`` it reads layer ``l``'s).
``rope_tables(p, qm) -> bytes``
    Row ``t`` (``t = 0 .. max_seq_len-1``) at byte ``t * rope_row_bytes(p, head_dim)``: ``2*hd``
    little-endian int32 words, the coefficient pair of every output element of one head in
    output order, then zeros to the next beat::

        [C0, -S0, C1, -S1, ..., C(h-1), -S(h-1),   S0, C0, S1, C1, ..., S(h-1), C(h-1)]

    (``h = hd/2``, ``C = rope_cos[t]``, ``S = rope_sin[t]``, Q14 int16 values widened to int32):
    output ``d < h`` is ``x[d]*C[d] + x[d+h]*(-S[d])``, output ``d = h + j`` is
    ``x[j]*S[j] + x[j+h]*C[j]``: the same two products, in the same order, for every output.
    ``hd = 8``: 1 beat per position (16 KiB for 256 positions).
``rope_constants(p, m, s) -> bytes``
    One beat: the REQUANT word ``m | s << 16`` (:meth:`hdl.pcu.PcuConfig.requant_word`) in every
    lane (the kernel uses lane 0).

Why this mapping (the partner problem)
    The partner of element ``(head, j)`` is ``(head, j + hd/2)``: another PCU lane, and the PCU
    cannot move data between lanes. Gather indices or lane-aligned coefficient beats would have
    to come from HBM, and they depend on the shape (``n_heads``, ``hd``) while the tables are
    indexed by position and the constants only by layer (an AGCU reads one affine range, so a
    shape header cannot ride along with the row of ``pos``). Instead the kernel goes through the
    *scalar* domain, where the PMUs' affine address chains do the permutation, and lets the
    PCU's packer rebuild the vector::

        a.rd (x16)    -> PA.vin0 (unpack 16) ; PA: PASS, pack 32 -> PA.vout
        PA.vout       -> M1.win   M1: stores x as words (one element per word), reads them back
                                  in order as scalars (SCALAR mode)
        M1.sout       -> M2.swin  M2: one head per buffer of a ring of up to 4: scalar writes
                                  at 2t + s' for element s'*hd/2 + t, so the head becomes
                                  (x[t], x[t+hd/2]) pairs; reads it twice (chain hd x 2,
                                  strides 1, 0), then frees the buffer for head + 4
        a.rd (tables) -> Mt.win   Mt: stores row pos, reads the 2*hd words once per head
        M2.sout       -> PB.sin0 ; Mt.sout -> PB.sin1 ; a.rd (const) -> PB.vin0 (one beat, kept)
        PB: MUL(sin0, sin1) summed over 2-beat groups (acc level 1) = x1*a + x2*b, REQUANT
            (vin0 = the word) to out_bits, emit per group, FIRST lane -> post PASS -> packer
            (one element per output, out_bits wide, zero-filled flush) -> PB.vout -> a.wr (out)

    Every element costs 2 PCU beats (two scalar products), so the kernel runs about
    ``2 * heads * hd + hd`` cycles after the fill. Measured on the default chip (launch to
    done, HBM writes performed): q of the default model (64 elements) ~355 cycles, k (32) ~285.
    Shapes: any even ``hd`` and any ``heads`` whose ``x16`` fits a PMU (up to 4096 elements),
    no alignment condition: the packer writes the zero padding of ``out``.

``build_kv_append(p, *, n_kv_heads, head_dim, context, k, v, kv, pos, iterations=1,
v_offset=None)``
    ``GoldenDecoder``'s kv_write: row ``pos`` of the layer's K cache := ``k`` (k_rot, int8
    ``[n_kv*hd]``), of its V cache := ``v`` (v8). KV layout (``sw/compiler/layout.py``): ``kv``
    is the layer's K cache (``Ref`` with the layer stride), position-major rows of
    ``kv_row_bytes`` (next power of two of ``kv_dim`` below a beat, else whole beats); the V
    cache follows at ``roundup(context * kv_row_bytes, 64)``. The row's padding bytes (from
    ``kv_dim`` to ``kv_row_bytes``) are written as 0 (``k``/``v`` are zero-padded operands).

    Rows share a beat (``kv_row_bytes < 64``): HBM writes are whole beats, so the append is a
    read-modify-write of the K and V beats holding row ``pos``; the new row goes to words
    ``[o, o + R)`` of the beat (``R = kv_row_bytes/4``, ``o = (pos % rows_per_beat) * R``),
    the other rows are written back unchanged::

        a.rd (K beat, V beat of row pos)       -> Mo.win  Mo: reads the 32 words as scalars
        a.rd (k beat, v beat; one program)     -> Mk.win  Mk: k at beat 1, v at beat 3; reads
                                                  word 16 + i - o (+32 for V), i = 0..15
        Mo.sout -> PM.sin0 ; Mk.sout -> PM.sin1
        PM: lane stages compute the word number i (accumulator) and f = [o <= i < o + R]
            (SUB, SHLR log2 R, CLZ, SHLR 5); post SELECT(sin1, sin0, f); packer 32 bit: 16 words
            per beat -> PM.vout -> a.wr (K beat, V beat)

    Whole-beat rows (``kv_row_bytes >= 64``): ``a.rd (k beats, v beats) -> a.wr (K row, V
    row)``, no read of the cache. Measured (default model, 2 rows per beat): ~230 cycles.

Units: RoPE 2 PCUs, 3 PMUs, 4 AGCUs; KV append (rows sharing a beat) 1 PCU, 2 PMUs, 3 AGCUs;
(whole-beat rows) 2 AGCUs. Every role is placed by :func:`sw.kernels.builder.place` (shortest
total route length that routes).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from hdl.fu import FuOp
from hdl.pcu import AccOp, PcuConfig, Red, Src
from hdl.pmu import PmuConfig, RdMode, pmu_depth
from hdl.params import RduParams
from hdl.unitmap import units_of_kind
from sw import intops
from sw.kernels.builder import AgcuProgram, KernelBuilder, place
from sw.kernels.kernel import (DecodeKernel, as_ref, int_arg, region_kw, stored_pmu,
                               watchdog_cycles)
from sw.kernels.patterns import PatternError

__all__ = ["build_rope", "rope_tables", "rope_table_bytes", "rope_row_words", "rope_row_bytes",
           "rope_constants", "build_kv_append", "kv_row_bytes", "kv_cache_bytes",
           "PatternError"]

_MAX_COUNT = (1 << 16) - 1          # PMU counters and RD/WR counts are 16 bit


def _up(v: int, a: int) -> int:
    return -(-v // a) * a


_int = partial(int_arg, error=PatternError)


def _agcus(p: RduParams, n: int, error) -> list[str]:
    names = [u.name for u in units_of_kind(p, "agcu")]
    if len(names) < n:
        raise error(f"the mapping needs {n} AGCUs (HBM streams); the chip has {len(names)}")
    return names


def _need(cond: bool, msg: str):
    if not cond:
        raise PatternError(msg)


# ---- RoPE blobs ----------------------------------------------------------------------------------

def rope_row_words(cos_row, sin_row) -> np.ndarray:
    """The ``2*hd`` int32 coefficient words of one position (see the module docstring)."""
    c = intops.check_range(cos_row, 16, "rope cos")
    s = intops.check_range(sin_row, 16, "rope sin")
    if c.ndim != 1 or c.shape != s.shape or c.size == 0:
        raise PatternError(f"rope cos/sin rows must be equal non-empty vectors, got {c.shape} "
                           f"and {s.shape}")
    first = np.stack([c, -s], axis=1).ravel()          # outputs d < h: (x1, x2) * (C, -S)
    second = np.stack([s, c], axis=1).ravel()          # outputs h + j:  (x1, x2) * (S, C)
    return np.concatenate([first, second]).astype(np.int32)


def rope_row_bytes(p: RduParams, head_dim: int) -> int:
    """Bytes per position in the :func:`rope_tables` blob: ``2*hd`` int32, whole beats."""
    return _up(8 * head_dim, p.beat_bytes)


def rope_table_bytes(p: RduParams, cos, sin) -> bytes:
    """The tables blob of :func:`rope_tables` from ``(positions, hd/2)`` int16 cos/sin."""
    cos, sin = intops.as_int(cos), intops.as_int(sin)
    if cos.ndim != 2 or cos.shape != sin.shape or cos.shape[1] == 0:
        raise PatternError(f"rope tables must be (positions, head_dim/2) arrays of one shape, "
                           f"got {cos.shape} and {sin.shape}")
    hd = 2 * cos.shape[1]
    rb = rope_row_bytes(p, hd)
    out = bytearray()
    for c, s in zip(cos, sin):
        row = rope_row_words(c, s).astype("<i4").tobytes()
        out += row + bytes(rb - len(row))
    return bytes(out)


def rope_tables(p: RduParams, qm) -> bytes:
    """RoPE coefficient rows of every position of ``qm`` (``qm.rope_cos``/``rope_sin``), shared
    by all layers and by q and k: row ``pos`` at ``pos * rope_row_bytes(p, head_dim)``."""
    return rope_table_bytes(p, qm.rope_cos, qm.rope_sin)


def rope_constants(p: RduParams, m, s) -> bytes:
    """Per-layer RoPE constants: one beat holding the REQUANT word ``m | s << 16`` in every
    lane (``m, s`` = ``rope_q_m[l], rope_q_s[l]`` for q, ``rope_k_*`` for k)."""
    try:
        w = PcuConfig.requant_word(_int(m, "rope m"), _int(s, "rope s"))
    except ValueError as e:
        raise PatternError(f"rope REQUANT pair: {e}") from None
    return np.full(p.lanes, w, "<u4").tobytes()


# ---- RoPE kernel --------------------------------------------------------------------------------

def build_rope(p: RduParams, *, n_heads: int, head_dim: int, x16, out, tables, const, pos: int,
               out_bits: int = 8, iterations: int = 1, name: str = "rope") -> DecodeKernel:
    """RoPE of one tensor at position ``pos`` (see the module docstring)."""
    H, hd = _int(n_heads, "n_heads"), _int(head_dim, "head_dim")
    pos, out_bits = _int(pos, "pos"), _int(out_bits, "out_bits")
    iterations = _int(iterations, "iterations")
    x16, out, tables, const = (as_ref(r) for r in (x16, out, tables, const))
    _need(H >= 1, f"n_heads must be >= 1, got {H}")
    _need(hd >= 2 and hd % 2 == 0, f"head_dim must be even and >= 2 (rotate_half pairs j and "
                                   f"j + hd/2), got {hd}")
    _need(pos >= 0, f"pos must be >= 0, got {pos}")
    _need(out_bits in (8, 16, 32), f"out_bits must be 8, 16 or 32 (REQUANT and packer "
                                   f"widths), got {out_bits}")
    _need(iterations >= 1, f"iterations must be >= 1, got {iterations}")
    g = PcuConfig(p).geom
    _need(g["n_sin"] >= 2 and g["stages"] >= 2 and g["n_ctr"] >= 2,
          f"RoPE needs PCUs with 2 scalar inputs, 2 stages and 2 counters (this chip: "
          f"{g['n_sin']}, {g['stages']}, {g['n_ctr']})")
    _need(getattr(p, "pmu_counters", 3) >= 3, "RoPE needs PMU address chains of 3 counters")
    bb, L = p.beat_bytes, p.lanes
    n = H * hd
    half = hd // 2
    xb = _up(2 * n, bb) // bb                      # int16 beats of x16
    nv = xb * (bb // 2) // L                       # 32-bit beats PA produces (2 per x16 beat)
    ob = _up(n * out_bits // 8, bb) // bb          # beats of out
    rb = rope_row_bytes(p, hd) // bb               # beats of one table row
    depth = pmu_depth(p)
    _need(nv <= depth, f"{H} heads x head_dim {hd} = {n} elements: x as 32-bit words needs "
                       f"{nv} beats, a PMU holds {depth}; use fewer heads or a smaller head_dim")
    _need(rb <= depth, f"head_dim {hd}: a table row of {rb} beats exceeds a PMU")
    _need(2 * n <= _MAX_COUNT + 1, f"{n} elements: {2 * n} PCU beats exceed the 16-bit counter")
    hbeats = _up(hd, L) // L                       # beats of one head's words (M2 buffer)
    nbuf = min(H, getattr(p, "pmu_max_buffers", 4))
    _need(nbuf * hbeats <= depth, f"head_dim {hd}: {nbuf} head buffers exceed a PMU")
    _agcus(p, 4, PatternError)
    trow = tables.at(pos * rb * bb)

    progs = {
        "ax": AgcuProgram.read(x16.beat(p), (xb,), (1,), **x16.program_kw(p, xb, iterations)),
        "at": AgcuProgram.read(trow.beat(p), (rb,), (1,), **trow.program_kw(p, rb, iterations)),
        "ac": AgcuProgram.read(const.beat(p), (1,), (1,), **const.program_kw(p, 1, iterations)),
        "ao": AgcuProgram.write(out.beat(p), (ob,), (1,), **out.program_kw(p, ob, iterations)),
    }
    for prog in progs.values():         # address errors now, not as placement failures
        prog.writes(p)
    pmus = {
        # x words: written as nv beats, read back as n scalars in element order
        "M1": stored_pmu(nv, rd_mode=RdMode.SCALAR, rd_passes=1, rd_counts=(n,),
                         rd_strides=(1,)),
        # pairs, one head per buffer of a ring (PB starts on head 0 while head 1 is written):
        # element s'*half + t -> word 2t + s'; each head read twice
        "M2": PmuConfig(sync=True, buf_base=0, buf_size=hbeats, n_buf=nbuf,
                        wr_scalar=True, wr_passes=H, wr_counts=(half, 2), wr_strides=(2, 1),
                        rd_mode=RdMode.SCALAR, rd_passes=H, rd_counts=(hd, 2),
                        rd_strides=(1, 0)),
        # coefficient row of pos: 2*hd words, read once per head
        "Mt": stored_pmu(rb, rd_mode=RdMode.SCALAR, rd_passes=1, rd_counts=(2 * hd, H),
                         rd_strides=(1, 0)),
    }
    nc = g["n_ctr"]
    pcus = {
        "PA": (PcuConfig(p).counters(nv).vin(0, unpack=16).emit(0).reduce(Red.OFF)
               .output(vout=True, pack_bits=32)),
        "PB": (PcuConfig(p).counters(2, n).vin(0, pop_level=nc).sin(0).sin(1)
               .stage(0, FuOp.MUL, Src.SIN0, Src.SIN1, Src.ZERO, acc_op=AccOp.SUM, acc_level=1)
               .stage(1, FuOp.REQUANT, Src.PREV, Src.VIN0, Src.ZERO, bits=out_bits)
               .emit(1).reduce(Red.FIRST).post(FuOp.PASS, Src.PREV)
               .output(vout=True, sout=False, pack_bits=out_bits)),
    }
    summaries = {
        "PA": f"int16 -> 32-bit words, {nv} beats",
        "PB": f"x1*a + x2*b over {n} pairs, REQUANT {out_bits}, pack {out_bits}",
        "M1": f"x as {nv} word beats, {n} scalar reads",
        "M2": f"per head (ring of {nbuf}): {hd} scalar writes into (x[t], x[t+{half}]) pairs, "
              f"{2 * hd} scalar reads",
        "Mt": f"row pos={pos} ({rb} beats), {2 * n} scalar reads",
    }
    roles_text = {"PA": "x to words", "PB": "rotate+requant", "M1": "x words", "M2": "x pairs",
                  "Mt": "cos/sin row", "ax": "x16 load", "at": "table row load",
                  "ac": "REQUANT word", "ao": "out store"}

    def build(u):
        kb = KernelBuilder(p, name)
        for r in ("ax", "at", "ac", "ao"):
            kb.agcu(u[r], progs[r], role=roles_text[r])
        for r, c in pmus.items():
            kb.pmu(u[r], c, role=roles_text[r], summary=summaries[r])
        for r, c in pcus.items():
            kb.pcu(u[r], c, role=roles_text[r], summary=summaries[r])
        kb.route(f"{u['ax']}.rd", f"{u['PA']}.vin0", what="x16")
        kb.route(f"{u['PA']}.vout", f"{u['M1']}.win", what="x words")
        kb.route(f"{u['M1']}.sout", f"{u['M2']}.swin", what="x scalars")
        kb.route(f"{u['M2']}.sout", f"{u['PB']}.sin0", what="x pairs")
        kb.route(f"{u['at']}.rd", f"{u['Mt']}.win", what="table row")
        kb.route(f"{u['Mt']}.sout", f"{u['PB']}.sin1", what="coefficient pairs")
        kb.route(f"{u['ac']}.rd", f"{u['PB']}.vin0", what="REQUANT word")
        kb.route(f"{u['PB']}.vout", f"{u['ao']}.wr", what=f"out int{out_bits}")
        return kb, u

    edges = [("ax", "PA"), ("PA", "M1"), ("M1", "M2"), ("M2", "PB"), ("at", "Mt"),
             ("Mt", "PB"), ("ac", "PB"), ("PB", "ao")]
    kb, roles = place(p, pcus=["PA", "PB"], pmus=["M1", "M2", "Mt"],
                      agcus=["ax", "at", "ac", "ao"], edges=edges, build=build,
                      error=PatternError)
    kb.metadata.update({"pattern": "rope", "n_heads": H, "head_dim": hd, "pos": pos,
                        "out_bits": out_bits, "roles": roles})
    moved = xb + rb + 1 + ob
    return DecodeKernel(
        "rope", p, kb, roles, watchdog=watchdog_cycles(p, moved) + 8 * n,
        reads={"x16": xb * bb, "tables": rb * bb, "const": bb}, writes={"out": ob * bb},
        outputs={"out": out},
        info={"n_heads": H, "head_dim": hd, "elements": n, "pos": pos, "out_bits": out_bits,
              "table_row": trow, "pmus": pmus, "pcus": pcus, "agcus": progs})


# ---- KV-cache append -----------------------------------------------------------------------------

def kv_row_bytes(p: RduParams, n_kv_heads: int, head_dim: int) -> int:
    """Bytes per cached position (int8 ``kv_dim = n_kv_heads * head_dim``): the next power of
    two below a beat (rows then share beats), else whole beats (``sw/compiler/layout.py``)."""
    kv_dim, bb = n_kv_heads * head_dim, p.beat_bytes
    return (1 << (kv_dim - 1).bit_length()) if kv_dim < bb else _up(kv_dim, bb)


def kv_cache_bytes(p: RduParams, n_kv_heads: int, head_dim: int, context: int) -> int:
    """Bytes of one cache (K or V) of one layer; the V cache starts this far after the K cache."""
    return _up(context * kv_row_bytes(p, n_kv_heads, head_dim), p.beat_bytes)


def build_kv_append(p: RduParams, *, n_kv_heads: int, head_dim: int, context: int, k, v, kv,
                    pos: int, iterations: int = 1, name: str = "kv_append",
                    v_offset: int | None = None) -> DecodeKernel:
    """Row ``pos`` of the layer's K cache := ``k``, of its V cache := ``v`` (see the module
    docstring). ``v_offset``: bytes from the K cache to the V cache, default
    :func:`kv_cache_bytes` (``roundup(context * kv_row_bytes, 64)``); give it when the HBM map
    puts V elsewhere (``sw/compiler/layout.py`` rounds the K cache up to whole bursts, which
    differs when ``context * kv_row_bytes`` is not a multiple of 256 B)."""
    nkv, hd = _int(n_kv_heads, "n_kv_heads"), _int(head_dim, "head_dim")
    context, pos = _int(context, "context"), _int(pos, "pos")
    iterations = _int(iterations, "iterations")
    k, v, kv = as_ref(k), as_ref(v), as_ref(kv)
    _need(nkv >= 1 and hd >= 1, f"n_kv_heads and head_dim must be >= 1, got {nkv}, {hd}")
    _need(context >= 1, f"context must be >= 1, got {context}")
    _need(0 <= pos < context, f"pos {pos} outside the cache's context 0..{context - 1}")
    _need(iterations >= 1, f"iterations must be >= 1, got {iterations}")
    _need(k.iter_stride == v.iter_stride,
          f"k and v must have the same per-iteration stride (one AGCU reads both), got "
          f"{k.iter_stride} and {v.iter_stride}")
    bb, L = p.beat_bytes, p.lanes
    kv_dim = nkv * hd
    rbytes = kv_row_bytes(p, nkv, hd)
    kb_ = _up(kv_dim, bb) // bb                    # beats of k (and of v)
    cache_bytes = kv_cache_bytes(p, nkv, hd, context)
    if v_offset is None:
        v_offset = cache_bytes
    v_offset = _int(v_offset, "v_offset")
    _need(v_offset >= cache_bytes, f"v_offset {v_offset} would overlap the K cache "
                                   f"({cache_bytes} B)")
    _need(v_offset % bb == 0, f"v_offset {v_offset} is not a multiple of the {bb}-byte beat")
    cache = v_offset // bb                         # beats from a K row's beat to its V beat
    _agcus(p, 3, PatternError)
    kbeat, vbeat = k.beat(p), v.beat(p)
    span_kv = (min(kbeat, vbeat), max(kbeat, vbeat) + kb_ - min(kbeat, vbeat))
    kstride = k.beat_stride(p)
    new_prog = AgcuProgram.read(kbeat, (kb_, 2), (1, vbeat - kbeat),
                                **region_kw(span_kv[0], span_kv[1], kstride, iterations))
    info = {"kv_dim": kv_dim, "row_bytes": rbytes, "cache_bytes": cache_bytes,
            "v_offset": v_offset, "pos": pos}

    if rbytes >= bb:                               # whole-beat rows: copy k, v to the rows
        rowb = rbytes // bb
        base = kv.beat(p) + pos * rowb
        wr = AgcuProgram.write(base, (rowb, 2), (1, cache),
                               **region_kw(base, cache + rowb, kv.beat_stride(p), iterations))

        def build(u):
            kbld = KernelBuilder(p, name)
            kbld.agcu(u["an"], new_prog, role="k, v load")
            kbld.agcu(u["aw"], wr, role="K, V rows store")
            kbld.route(f"{u['an']}.rd", f"{u['aw']}.wr", what="k then v rows")
            return kbld, u

        kbld, roles = place(p, agcus=["an", "aw"], edges=[("an", "aw")], build=build,
                            error=PatternError)
        info["mode"] = "rows"
        reads = {"k": kb_ * bb, "v": kb_ * bb}
        writes = {"kv": 2 * rowb * bb}
    else:                                          # rows share a beat: read-modify-write
        rpb = bb // rbytes
        R = rbytes // 4                            # words per row (kv_dim >= 4 bytes here)
        _need(R >= 1 and rbytes % 4 == 0,
              f"kv_dim {kv_dim}: rows of {rbytes} B are not whole 32-bit words; the merge "
              f"works on words (kv_dim >= 4 needed)")
        g = PcuConfig(p).geom
        _need(g["stages"] >= 5 and g["n_sin"] >= 2, "the KV merge needs PCUs with 5 stages "
                                                    "and 2 scalar inputs")
        o = (pos % rpb) * R                        # first word of row pos in its beat
        row_beat = pos // rpb
        base = kv.beat(p) + row_beat
        kvreg = region_kw(base, cache + 1, kv.beat_stride(p), iterations)
        old_prog = AgcuProgram.read(base, (2,), (cache,), **kvreg)
        wr = AgcuProgram.write(base, (2,), (cache,), **kvreg)
        for prog in (new_prog, old_prog, wr):      # address errors before placement
            prog.writes(p)
        pmus = {
            # old K beat, old V beat -> 32 scalars
            "Mo": stored_pmu(2, rd_mode=RdMode.SCALAR, rd_passes=1, rd_counts=(2 * L,),
                             rd_strides=(1,)),
            # k at beat 1, v at beat 3; word 16 + i - o of beat pair c lines k[i - o] up with
            # word i of the cache beat (the others are ignored by the select)
            "Mk": PmuConfig(sync=True, buf_base=0, buf_size=4, n_buf=1, wr_passes=1,
                            wr_counts=(2,), wr_strides=(2,), wr_base=1, rd_mode=RdMode.SCALAR,
                            rd_passes=1, rd_base=L - o, rd_counts=(L, 2), rd_strides=(1, 2 * L)),
        }
        log2r = R.bit_length() - 1
        pm = (PcuConfig(p).counters(L, 2).sin(0).sin(1)
              .stage(0, FuOp.PASS, Src.IMM, imm=1, acc_op=AccOp.SUM, acc_level=1)  # i + 1
              .stage(1, FuOp.SUB, Src.PREV, Src.IMM, imm=o + 1)                  # i - o
              .stage(2, FuOp.SHLR, Src.PREV, Src.IMM, imm=log2r)                 # 0 iff in row
              .stage(3, FuOp.CLZ, Src.PREV)                                      # 32 iff in row
              .stage(4, FuOp.SHLR, Src.PREV, Src.IMM, imm=5)                     # f
              .emit(0).reduce(Red.FIRST)
              .post(FuOp.SELECT, Src.SIN1, Src.SIN0, Src.PREV)                   # f ? new : old
              .output(vout=True, sout=False, pack_bits=32))

        def build(u):
            kbld = KernelBuilder(p, name)
            kbld.agcu(u["an"], new_prog, role="k, v load")
            kbld.agcu(u["ao"], old_prog, role="K, V beats load")
            kbld.agcu(u["aw"], wr, role="K, V beats store")
            kbld.pmu(u["Mo"], pmus["Mo"], role="old beats",
                     summary="K and V beats of row pos, 32 scalar reads")
            kbld.pmu(u["Mk"], pmus["Mk"], role="new rows",
                     summary=f"k, v at beats 1, 3; 32 scalar reads from word {L - o}")
            kbld.pcu(u["PM"], pm, role="merge",
                     summary=f"words [{o}, {o + R}) from k/v, the rest kept; pack 32")
            kbld.route(f"{u['an']}.rd", f"{u['Mk']}.win", what="k, v")
            kbld.route(f"{u['ao']}.rd", f"{u['Mo']}.win", what="old K, V beats")
            kbld.route(f"{u['Mo']}.sout", f"{u['PM']}.sin0", what="old words")
            kbld.route(f"{u['Mk']}.sout", f"{u['PM']}.sin1", what="new words")
            kbld.route(f"{u['PM']}.vout", f"{u['aw']}.wr", what="merged beats")
            return kbld, u

        edges = [("an", "Mk"), ("ao", "Mo"), ("Mk", "PM"), ("Mo", "PM"), ("PM", "aw")]
        kbld, roles = place(p, pcus=["PM"], pmus=["Mo", "Mk"], agcus=["an", "ao", "aw"],
                            edges=edges, build=build, error=PatternError)
        info.update({"mode": "merge", "rows_per_beat": rpb, "word_offset": o,
                     "row_words": R, "pmus": pmus, "pcus": {"PM": pm}})
        reads = {"k": kb_ * bb, "v": kb_ * bb, "kv": 2 * bb}
        writes = {"kv": 2 * bb}
    info["agcus"] = {"an": new_prog, "aw": wr}
    kbld.metadata.update({"pattern": "kv_append", "n_kv_heads": nkv, "head_dim": hd,
                          "context": context, "pos": pos, "roles": roles})
    return DecodeKernel("kv_append", p, kbld, roles,
                        watchdog=20_000 + 64 * kb_ + 4 * p.hbm_read_latency,
                        reads=reads, writes=writes, outputs={"kv": kv}, info=info)

"""RMSNorm decode kernel: ``GoldenDecoder.rmsnorm`` of ``sw/golden.py`` on the chip, bit-exact.

Semantics (``x`` int16 [dim], per-channel ``(m_c, s_c)``)::

    ss = SUM_c (x_c >>r ss_shift)^2                 (int32; >>r = round-half-up shift)
    v = ss + eps_int
    (idx, half_k) = intops.rsqrt_index(v, rsqrt_bits)
        e = 31 - CLZ(v); k = e & ~1; half_k = e >> 1
        idx = SHLR(v, k - (rsqrt_bits - 2))          (right shift, left when negative)
    r = RSQRT[idx]
    y_c = REQUANT(x_c * r, m_c, s_c + half_k, out_bits)

Contract (``sw/kernels/kernel.py``)
-----------------------------------
``build_rmsnorm(p, *, dim, x, const, out, ss_shift, eps_int, rsqrt_bits, out_bits=8,
iterations=1, name="rmsnorm", roles=None) -> DecodeKernel``

- ``x``: ``Ref`` of the int16 [dim] activation, zero-padded to whole beats
  (``ceil(dim / 32)`` beats at 64-byte beats). The padding must be zero (it is squared and
  summed, and scaled into the padding of ``out``).
- ``const``: ``Ref`` of the constants blob of :func:`rmsnorm_constants` (per layer: give the
  layer stride; the kernel launched at sequencer iteration ``l`` reads ``addr + l * stride``).
- ``out``: ``Ref`` of the output, ``out_bits`` (8 or 16) [dim], zero-padded to whole beats; the
  kernel writes every beat of it, padding lanes 0.
- ``ss_shift``, ``eps_int``, ``rsqrt_bits``: ``qm.ss_shift``, ``qm.eps_int``, ``qm.rsqrt_bits``
  (the sum-of-squares shift and epsilon are immediates of the kernel; the table and the
  per-channel pairs are data).
- ``iterations``: how many sequencer iterations the kernel may be launched at (the AGCU
  regions cover every layer's copy).
- ``roles``: role -> unit name; by default :func:`sw.kernels.builder.place` chooses.

``rmsnorm_constants(p, qm, m, s) -> bytes``: the per-norm constants blob (beat-aligned,
little-endian)::

    words [0, T)          RSQRT table: qm.rsqrt as int32 words, T = 2**rsqrt_bits
                          (zero-padded to whole beats: tbl_beats = ceil(T / 16))
    words [16*tbl_beats, ..)  one REQUANT word per channel, PcuConfig.requant_word(m_c, s_c)
                          = m_c | s_c << 16, zero words up to 2 * 16 * ceil(dim / 32)
                          (one 16-lane beat per virtual beat of the unpacked x)

The three norms of a layer-``l`` model use it with ``(qm.norm1_m[l], qm.norm1_s[l])``,
``(qm.norm2_m[l], qm.norm2_s[l])`` and once ``(qm.normf_m, qm.normf_s)``.
:func:`rmsnorm_layout` gives the sizes.

Mapping (``P*`` PCUs, ``M*`` PMUs, ``a*`` AGCUs)::

    ax.rd (x int16) -> multicast -> P1.vin0 (unpack 16), MX.win (stores x)
    P1: SHR_ROUND(x, ss_shift); MUL self, lane accumulate over all beats; SUM tree;
        post ADD eps -> v -> P1.sout -> multicast (scalar) -> PI.sin0, PH.sin0
    PI: CLZ(v); SUB(31, .); AND ~1; SUB(rsqrt_bits - 2) -> sh; FIRST; post SHLR(v, sh) = idx
        -> PI.sout -> MT.sidx
    PH: CLZ(v); SUB(31, .) = e; FIRST; post SHLR(e, 1) = half_k -> PH.sout -> P3.sin1
    ac.rd (constants blob) -> multicast -> MT.win, MW.win (both store all of it)
    MT: scalar LUT (SGATHER service over words 0..T-1): RSQRT[idx] -> MT.sout -> P3.sin0
    MX: x re-read once (when full) -> P3.vin0 (unpack 16)
    MW: the REQUANT words (beats tbl_beats..) read once -> P3.vin1
    P3: MUL(x, sin0 r); REQUANT(., vin1 word_c, C = sin1 half_k) out_bits; pack out_bits
        -> P3.vout -> ao.wr (out)

Why this shape: the scalar path from ``v`` needs two data-dependent results, the LUT index
(for the PMU's ``sidx``) and ``half_k`` (REQUANT's C operand: ``s = s_c + C``), and a PCU in
scalar mode sends one value per result (``sout`` and ``vout`` carry the same post-stage
result); the lanes of a PCU all compute the same chain on a broadcast scalar. So the index
and ``half_k`` are two PCUs (PI, PH) fed by one scalar multicast. P3 cannot compute
``half_k`` itself: its one lane chain holds ``x * r`` for the REQUANT. ``x`` is needed twice
(sum of squares first, scaling once ``r`` is known); the multicast into a PMU buffer (MX)
decouples the two uses for any length (a direct multicast to P3 would deadlock once ``x``
exceeds P3's 4-entry FIFO plus the switch buffers: P1 needs all of ``x`` before P3 may take
any). The table and the words share one HBM stream (four AGCUs, and this kernel needs three
streams plus the output), multicast to two PMUs as SwiGLU does: MT serves gathers over the
table, MW reads the words after it.

HBM per launch (dim 64, 8-bit out): x 128 B + constants 1,280 B (16 table + 4 word beats)
read, 64 B written.
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
from sw.kernels.kernel import (DecodeKernel, Ref, as_ref, refs_metadata, require_pcus,
                               stored_pmu, watchdog_cycles)
from sw.kernels.patterns import PatternError

__all__ = ["RmsnormLayout", "rmsnorm_layout", "rmsnorm_constants", "build_rmsnorm",
           "RMSNORM_PCUS", "RMSNORM_PMUS", "RMSNORM_AGCUS", "RMSNORM_EDGES"]

RMSNORM_PCUS = ("P1", "PI", "PH", "P3")
RMSNORM_PMUS = ("MX", "MT", "MW")
RMSNORM_AGCUS = ("ax", "ac", "ao")
RMSNORM_EDGES = (("ax", "P1"), ("ax", "MX"), ("P1", "PI"), ("P1", "PH"), ("PI", "MT"),
                 ("ac", "MT"), ("ac", "MW"), ("MT", "P3"), ("PH", "P3"), ("MX", "P3"),
                 ("MW", "P3"), ("P3", "ao"))

PI_STAGES = 4          # lane stages of the index chain (CLZ, SUB, AND, SUB); P1 and P3 need 2


def _up(v: int, a: int) -> int:
    return -(-v // a) * a


@dataclass(frozen=True)
class RmsnormLayout:
    """Sizes of one RMSNorm kernel (beats are HBM/PMU beats of ``lanes`` 32-bit words)."""
    dim: int
    out_bits: int
    rsqrt_bits: int
    x_beats: int           # int16 x beats in HBM (2 * lanes elements each)
    vbeats: int            # 16-lane beats the PCUs run (x unpacked: 2 per x beat)
    tbl_words: int         # 2 ** rsqrt_bits
    tbl_beats: int         # table beats in the blob (zero-padded)
    words_beats: int       # REQUANT-word beats (one per virtual beat)
    out_beats: int         # output beats written

    @property
    def const_beats(self) -> int:
        return self.tbl_beats + self.words_beats

    def const_bytes(self, p: RduParams) -> int:
        return self.const_beats * p.beat_bytes


def rmsnorm_layout(p: RduParams, dim: int, rsqrt_bits: int, out_bits: int = 8) -> RmsnormLayout:
    """The kernel's sizes for ``dim`` channels; raises :class:`PatternError` when the shapes do
    not fit this chip."""
    L, bb = p.lanes, p.beat_bytes
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise PatternError(f"rmsnorm dim must be a positive integer, got {dim!r}")
    dim = int(dim)
    if isinstance(rsqrt_bits, bool) or not isinstance(rsqrt_bits, (int, np.integer)) \
            or not 2 <= rsqrt_bits <= 16:
        raise PatternError(f"rsqrt_bits must be an integer in 2..16, got {rsqrt_bits!r}")
    if out_bits not in (8, 16):
        raise PatternError(f"rmsnorm output width {out_bits!r}: the packer takes 8 or 16 bit "
                           f"(the model's norms are 8)")
    x_beats = _up(2 * dim, bb) // bb
    vbeats = x_beats * (bb // 2) // L
    tbl_words = 1 << int(rsqrt_bits)
    tbl_beats = _up(tbl_words, L) // L
    out_beats = _up(dim * out_bits // 8, bb) // bb
    lay = RmsnormLayout(dim, out_bits, int(rsqrt_bits), x_beats, vbeats, tbl_words, tbl_beats,
                        vbeats, out_beats)
    depth = pmu_depth(p)
    if lay.const_beats > depth:
        raise PatternError(
            f"rmsnorm dim {dim}: RSQRT table ({tbl_beats} beats) + REQUANT words ({vbeats} "
            f"beats) = {lay.const_beats} beats exceed a PMU ({depth} beats); the largest dim "
            f"is {(depth - tbl_beats) // (vbeats // x_beats) * (bb // 2)}")
    if x_beats > depth:
        raise PatternError(f"rmsnorm dim {dim}: x ({x_beats} beats) exceeds a PMU "
                           f"({depth} beats)")
    if vbeats > 1 << 16:
        raise PatternError(f"rmsnorm dim {dim}: {vbeats} PCU beats exceed the 16-bit counter")
    return lay


def rmsnorm_constants(p: RduParams, qm, m, s) -> bytes:
    """The constants blob of one norm (see the module docstring): ``qm.rsqrt`` as int32 words,
    then ``PcuConfig.requant_word(m_c, s_c)`` per channel, each part zero-padded to whole beats
    (the words up to the kernel's virtual beats, ``2 * 16 * ceil(dim / 32)`` at the defaults).
    ``m``, ``s``: the norm's per-channel pairs, e.g. ``qm.norm1_m[l], qm.norm1_s[l]``."""
    try:
        m, s = intops.as_int(m), intops.as_int(s)
    except TypeError as e:
        raise PatternError(f"rmsnorm m and s must be integer vectors: {e}") from None
    if m.ndim != 1 or m.size == 0 or m.shape != s.shape:
        raise PatternError(f"rmsnorm m and s must be equal-length non-empty vectors, got "
                           f"shapes {m.shape} and {s.shape}")
    table = intops.as_int(qm.rsqrt)
    bits = int(qm.rsqrt_bits)
    lay = rmsnorm_layout(p, m.size, bits)
    if table.shape != (lay.tbl_words,):
        raise PatternError(f"the RSQRT table must have 2**rsqrt_bits = {lay.tbl_words} "
                           f"entries, got shape {table.shape}")
    intops.check_range(table, 32, "RSQRT table")
    bad = np.flatnonzero((m < 0) | (m >= 1 << intops.MULT_BITS) | (s < 0) | (s > 63))
    if bad.size:
        c = int(bad[0])
        raise PatternError(f"rmsnorm REQUANT pair of channel {c} (m={m[c]}, s={s[c]}) out of "
                           f"range: m must be in 0..{(1 << intops.MULT_BITS) - 1}, s in 0..63")
    L = p.lanes
    words = np.zeros(lay.words_beats * L, "<u4")
    words[:m.size] = [PcuConfig.requant_word(int(a), int(b)) for a, b in zip(m, s)]
    tbl = np.zeros(lay.tbl_beats * L, "<i4")
    tbl[:table.size] = table
    blob = tbl.tobytes() + words.tobytes()
    assert len(blob) == lay.const_bytes(p)
    return blob


def build_rmsnorm(p: RduParams, *, dim: int, x, const, out, ss_shift: int, eps_int: int,
                  rsqrt_bits: int, out_bits: int = 8, iterations: int = 1,
                  name: str = "rmsnorm", roles: dict | None = None) -> DecodeKernel:
    """The RMSNorm kernel for ``dim`` channels (see the module docstring)."""
    lay = rmsnorm_layout(p, dim, rsqrt_bits, out_bits)
    x, const, out = as_ref(x), as_ref(const), as_ref(out)
    if isinstance(ss_shift, bool) or not isinstance(ss_shift, (int, np.integer)) \
            or not 0 <= ss_shift <= 63:
        raise PatternError(f"ss_shift must be an integer in 0..63 (SHR_ROUND's shift), "
                           f"got {ss_shift!r}")
    if isinstance(eps_int, bool) or not isinstance(eps_int, (int, np.integer)) \
            or not 1 <= eps_int <= intops.qmax(32):
        raise PatternError(f"eps_int must be an integer in 1..2**31-1 (v = ss + eps must be "
                           f">= 1 for the rsqrt index), got {eps_int!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) \
            or iterations < 1:
        raise PatternError(f"iterations must be a positive integer, got {iterations!r}")
    ss_shift, eps_int, iterations = int(ss_shift), int(eps_int), int(iterations)
    require_pcus(p, "rmsnorm", stages=(PI_STAGES, "the rsqrt index chain CLZ, SUB, AND, SUB"),
                 n_sin=(2, "r and half_k"), error=PatternError)
    bits = lay.rsqrt_bits
    nv = lay.vbeats
    n_ctr = pcu_geometry(p)["n_ctr"]
    progs = {
        "x": AgcuProgram.read(x.beat(p), (lay.x_beats,), (1,),
                              **x.program_kw(p, lay.x_beats, iterations)),
        "const": AgcuProgram.read(const.beat(p), (lay.const_beats,), (1,),
                                  **const.program_kw(p, lay.const_beats, iterations)),
        "out": AgcuProgram.write(out.beat(p), (lay.out_beats,), (1,),
                                 **out.program_kw(p, lay.out_beats, iterations)),
    }

    def build(u):
        kb = KernelBuilder(p, name)
        kb.agcu(u["ax"], progs["x"], role="x load")
        kb.agcu(u["ac"], progs["const"], role="RSQRT + words")
        kb.agcu(u["ao"], progs["out"], role="out store")
        # x: stored whole, re-read once when full (the scaling pass)
        kb.pmu(u["MX"], PmuConfig.resident_vector(lay.x_beats), role="x buffer",
               summary=f"stores x ({lay.x_beats} beats), reads it once")
        # the constants stream: table at words 0..T-1 (LUT), words after it
        kb.pmu(u["MT"], PmuConfig(sync=True, wr_passes=1, wr_counts=(lay.const_beats,),
                                  wr_strides=(1,), rd_mode=RdMode.SGATHER, rd_service=True,
                                  rd_base=0, tbl_size=lay.tbl_words),
               role="RSQRT LUT",
               summary=f"stores {lay.const_beats} beats, SGATHER RSQRT[idx] over words "
                       f"0..{lay.tbl_words - 1}")
        kb.pmu(u["MW"], stored_pmu(lay.const_beats, rd_passes=1, rd_base=lay.tbl_beats,
                                   rd_counts=(lay.words_beats,), rd_strides=(1,)),
               role="REQUANT words",
               summary=f"stores {lay.const_beats} beats, reads beats "
                       f"[{lay.tbl_beats}, {lay.const_beats})")
        ss = (PcuConfig(p).counters(nv).vin(0, unpack=16)
              .stage(0, FuOp.SHR_ROUND, Src.VIN0, Src.IMM, imm=ss_shift)
              .stage(1, FuOp.MUL, Src.PREV, Src.PREV, Src.ZERO, acc_op=AccOp.SUM, acc_level=1)
              .emit(1).reduce(Red.SUM)
              .post(FuOp.ADD, Src.PREV, Src.IMM, imm=eps_int)
              .output(vout=False, sout=True))
        kb.pcu(u["P1"], ss, role="sum of squares",
               summary=f"(x >>r {ss_shift})^2 accumulated over {nv} beats, SUM, + {eps_int} "
                       f"-> v on sout")
        idx = (PcuConfig(p).counters(1).sin(0)
               .stage(0, FuOp.CLZ, Src.SIN0)
               .stage(1, FuOp.SUB, Src.IMM, Src.PREV, imm=31)
               .stage(2, FuOp.AND, Src.PREV, Src.IMM, imm=~1)
               .stage(3, FuOp.SUB, Src.PREV, Src.IMM, imm=bits - 2)
               .emit(0).reduce(Red.FIRST)
               .post(FuOp.SHLR, Src.SIN0, Src.PREV)
               .output(vout=False, sout=True))
        kb.pcu(u["PI"], idx, role="rsqrt index",
               summary=f"idx = SHLR(v, (31 - CLZ(v)) & ~1 - {bits - 2}) -> sout")
        hk = (PcuConfig(p).counters(1).sin(0)
              .stage(0, FuOp.CLZ, Src.SIN0)
              .stage(1, FuOp.SUB, Src.IMM, Src.PREV, imm=31)
              .emit(0).reduce(Red.FIRST)
              .post(FuOp.SHLR, Src.PREV, Src.IMM, imm=1)
              .output(vout=False, sout=True))
        kb.pcu(u["PH"], hk, role="half_k", summary="half_k = (31 - CLZ(v)) >> 1 -> sout")
        sc = (PcuConfig(p).counters(nv).vin(0, unpack=16).vin(1)
              .sin(0, pop_level=n_ctr).sin(1, pop_level=n_ctr)
              .stage(0, FuOp.MUL, Src.VIN0, Src.SIN0, Src.ZERO)
              .stage(1, FuOp.REQUANT, Src.PREV, Src.VIN1, Src.SIN1, bits=out_bits)
              .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=out_bits))
        kb.pcu(u["P3"], sc, role="scale+requant",
               summary=f"REQUANT(x * r, word_c, +half_k) over {nv} beats, pack {out_bits}")
        kb.route(f"{u['ax']}.rd", [f"{u['P1']}.vin0", f"{u['MX']}.win"], what="x int16")
        kb.route(f"{u['ac']}.rd", [f"{u['MT']}.win", f"{u['MW']}.win"], what="constants")
        kb.route(f"{u['P1']}.sout", [f"{u['PI']}.sin0", f"{u['PH']}.sin0"], what="v")
        kb.route(f"{u['PI']}.sout", f"{u['MT']}.sidx", what="rsqrt index")
        kb.route(f"{u['MT']}.sout", f"{u['P3']}.sin0", what="r = RSQRT[idx]")
        kb.route(f"{u['PH']}.sout", f"{u['P3']}.sin1", what="half_k")
        kb.route(f"{u['MX']}.rout", f"{u['P3']}.vin0", what="x int16 (again)")
        kb.route(f"{u['MW']}.rout", f"{u['P3']}.vin1", what="REQUANT words")
        kb.route(f"{u['P3']}.vout", f"{u['ao']}.wr", what=f"out int{out_bits}")
        return kb, u

    kb, roles = place_roles(p, build=build, what="rmsnorm", roles=roles,
                            pcus=RMSNORM_PCUS, pmus=RMSNORM_PMUS, agcus=RMSNORM_AGCUS,
                            edges=RMSNORM_EDGES, error=PatternError)
    bb = p.beat_bytes
    kb.metadata.update({"pattern": "rmsnorm", "dim": lay.dim, "out_bits": out_bits,
                        "roles": roles, "ss_shift": ss_shift, "eps_int": eps_int,
                        "rsqrt_bits": bits,
                        "hbm": refs_metadata(x=x, const=const, out=out)})
    moved = lay.x_beats + lay.const_beats + lay.out_beats
    return DecodeKernel(
        pattern="rmsnorm", params=p, builder=kb, roles=roles,
        watchdog=watchdog_cycles(p, moved),
        reads={"x": lay.x_beats * bb, "const": lay.const_beats * bb},
        writes={"out": lay.out_beats * bb}, outputs={"out": out},
        info={"layout": lay, "dim": lay.dim, "out_bits": out_bits})

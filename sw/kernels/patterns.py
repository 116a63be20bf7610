"""Decode patterns as kernels on the chip: residual add, SwiGLU and argmax, each bit-exact with
its :class:`sw.golden.GoldenDecoder` step.

Contract
--------
``build_residual(p, x, y)``, ``build_swiglu(p, qm, g8, u16, silu, m, s)`` and
``build_argmax(p, logits)`` place, configure and route one kernel for the given operands and
return a :class:`PatternKernel`: the bitstream (``to_bytes()``), the HBM images to load
(``images``: name, byte address, bytes), the region the kernel writes (``output``), the exact
bytes expected there (``expected``, from the golden model), the unit ids to start and a
watchdog budget in cycles. :func:`write_case` turns a kernel into the files and case dict the
generic testbench ``tb/pattern_tb.py`` runs; :func:`run_cases` runs a list of cases in one
simulation of the chip.

Operands are padded with inert values to whole HBM beats (the memory system moves beats and
the PCU unpacks whole beats; a half-used beat would leave a head in an input FIFO for the next
kernel): zeros for residual and SwiGLU (``add_sat(0, 0) = 0``; a zero ``u16`` makes the
product and its REQUANT 0), ``INT32_MIN`` for argmax (the lowest index wins ties, so padding
never wins). ``expected`` covers the padded output, so the padding is checked too.

Mappings (``P*`` PCUs, ``M*`` PMUs, ``a*`` AGCUs; roles are placed on units by total route
length, first placement that routes, see :func:`sw.kernels.builder.place`)

residual ``x = add_sat(x, y, 16)`` on int16 vectors::

    a.rd (x int16) -> P.vin0 (unpack 16) ; a.rd (y int16) -> P.vin1 (unpack 16)
    P: ADD_SAT 16, pack 16 -> P.vout -> a.wr (x')

SwiGLU ``h = REQUANT(SILU[g8 & 0xFF] * u16, m_c, s_c, out_bits)``::

    a.rd (g8 int8) -> PI.vin0 (unpack 8); PI: AND 0xFF -> 32-bit lane indices -> MT.gidx
    a.rd (constants: SiLU table, 256 int32 words | one REQUANT word m | s << 16 per channel)
        -> multicast -> MT.win, MM.win (both store the whole stream)
    MT: LUT (SERVICE gather over words 0..255) -> MT.rout (SiLU values) -> PS.vin0
    a.rd (u16 int16) -> PS.vin1 (unpack 16); PS: MUL -> int32 products -> PR.vin0
    MM: the REQUANT words (beats 16..) read once -> PR.vin1
    PR: REQUANT(vin0, vin1) out_bits, pack out_bits -> PR.vout -> a.wr (h)

  Why this shape: a gather index is one 32-bit word per lane, and g8 arrives as packed bytes,
  so PI unpacks and masks it. The kernel has five HBM streams (g8, u16, table, REQUANT words,
  h) and the chip four AGCUs, so the table and the words share one stream: one contiguous HBM
  block, multicast to both PMUs; each stores all of it and serves its own part. MUL and the
  per-channel REQUANT need three operand streams (SiLU, u16, words); a PCU of the reduced chip
  has two vector inputs, so they are two PCUs. (With ``pcu_vector_inputs >= 3`` they could be
  one: MUL, then REQUANT with B = vin2; not done here.)

  The constants block is the SiLU table as 256 int32 words (the PMU's word: a gathered word
  goes to the lane as it is, with no sign extension on the way), then one REQUANT word per
  channel (``PcuConfig.requant_word``: ``m | s << 16``, the ``words`` encoding of
  ``sw/compiler/layout.py``). ``layout.py`` stores the table as 256 packed int16 and apart
  from the words; a compiled decode that runs this kernel needs the table widened to int32
  and placed right before the words.

argmax ``lowest index of the maximum`` over int32 logits::

    a.rd (logits int32) -> P.vin0; P: MAXIDX tree, post ARGMAX over the program
        -> one element packed 32 bit -> P.vout (one beat: the index in lane 0, zeros) -> a.wr

HBM: the images one after the other from byte 0, each beat-aligned, then the output region
(its own region: nothing is updated in place).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hdl.fu import FuOp
from hdl.pcu import AccOp, PcuConfig, Red, Src
from hdl.pmu import PmuConfig, RdMode, pmu_depth
from hdl.params import RduParams
from sw import intops
from sw.golden import GoldenDecoder
from sw.kernels.builder import AgcuProgram, KernelBuilder, KernelError, place
from sw.kernels.kernel import DecodeKernel, as_ref, stored_pmu, watchdog_cycles

__all__ = ["PatternError", "HbmImage", "HbmRegion", "PatternKernel", "build_residual",
           "build_swiglu", "build_argmax", "residual_kernel", "swiglu_kernel", "swiglu_blob",
           "argmax_kernel", "embed_kernel", "build_embed", "residual_data", "swiglu_data",
           "swiglu_constants", "argmax_data", "decode_step_operands", "golden_step_trace",
           "place", "write_case", "run_cases", "SILU_ENTRIES"]

SILU_ENTRIES = 256           # the SiLU table is indexed by the raw byte of the int8 gate
INT32_MIN = -(1 << 31)


class PatternError(ValueError):
    """The pattern cannot be built for these operands on this chip (shape, memory, geometry)."""


@dataclass(frozen=True)
class HbmImage:
    """Bytes the host loads into HBM at byte address ``addr`` before the run."""
    name: str
    addr: int
    data: bytes


@dataclass(frozen=True)
class HbmRegion:
    """Bytes the kernel writes: ``nbytes`` at byte address ``addr``, read back after the run."""
    name: str
    addr: int
    nbytes: int


@dataclass
class PatternKernel:
    """One built pattern kernel and everything a testbench needs to run and check it."""
    pattern: str                   # "residual", "swiglu", "argmax"
    params: RduParams
    builder: KernelBuilder
    roles: dict                    # role -> unit name
    images: list                   # [HbmImage]
    output: HbmRegion
    expected: bytes                # golden output image (output.nbytes bytes)
    elem_bits: int                 # element width of the output, for mismatch reports
    golden: object                 # the golden step's own result (array, or the argmax index)
    shape: dict = field(default_factory=dict)
    watchdog: int = 0              # cycles

    @property
    def unit_ids(self) -> list[int]:
        return self.builder.unit_ids()

    @property
    def hbm_bytes(self) -> int:
        """Bytes the kernel moves between HBM and the chip (every image read once, the output
        written once), whole beats."""
        bb = self.params.beat_bytes
        return sum(_up(len(im.data), bb) for im in self.images) + _up(self.output.nbytes, bb)

    def to_bytes(self) -> bytes:
        return self.builder.to_bytes()

    def describe(self) -> str:
        return self.builder.describe()


# ---- helpers ------------------------------------------------------------------------------------

def _up(v: int, a: int) -> int:
    return -(-v // a) * a


def _pad(a: np.ndarray, n: int, value=0) -> np.ndarray:
    return np.concatenate([a, np.full(n - a.size, value, a.dtype)]) if n > a.size else a


def _vector(a, bits: int, what: str) -> np.ndarray:
    """A 1-D integer operand that fits int``bits`` (refuses floats and out-of-range values)."""
    v = intops.check_range(a, bits, what)
    if v.ndim != 1 or v.size == 0:
        raise PatternError(f"{what} must be a non-empty vector, got shape {v.shape}")
    return v


def _dtype(bits: int):
    return {8: "<i1", 16: "<i2", 32: "<i4"}[bits]


class _Hbm:
    """Sequential HBM allocation from byte 0, one beat-aligned region per tensor."""

    def __init__(self, p: RduParams):
        self.p, self.next = p, 0

    def take(self, nbytes: int) -> int:
        addr = self.next
        self.next = _up(addr + nbytes, self.p.beat_bytes)
        if self.next > self.p.hbm_bytes:
            raise PatternError(f"the operands need {self.next} B of HBM; the chip has "
                               f"{self.p.hbm_bytes} B")
        return addr


# ---- residual -----------------------------------------------------------------------------------

def residual_kernel(p: RduParams, *, dim: int, x, y, out, iterations: int = 1,
                    name: str = "residual") -> DecodeKernel:
    """Decode kernel ``out = add_sat(x, y, 16)`` on int16 vectors of ``dim`` elements (each
    operand zero-padded to whole beats; ``out`` may be ``x`` itself: the PCU reads a beat of
    each input before the beat it produces is written)."""
    x, y, out = as_ref(x), as_ref(y), as_ref(out)
    per_beat = p.beat_bytes // 2                   # int16 per beat
    dp = _up(dim, per_beat)
    nbeats = dp // per_beat
    if dim < 1:
        raise PatternError(f"residual dim must be positive, got {dim}")
    if 2 * nbeats > 1 << 16:
        raise PatternError(f"dim {dim}: {2 * nbeats} PCU beats exceed the 16-bit counter")
    kw = lambda r: r.program_kw(p, nbeats, iterations)

    def build(u):
        kb = KernelBuilder(p, name)
        kb.agcu(u["ax"], AgcuProgram.read(x.beat(p), (nbeats,), (1,), **kw(x)), role="x load")
        kb.agcu(u["ay"], AgcuProgram.read(y.beat(p), (nbeats,), (1,), **kw(y)), role="y load")
        kb.agcu(u["ao"], AgcuProgram.write(out.beat(p), (nbeats,), (1,), **kw(out)),
                role="x' store")
        c = (PcuConfig(p).counters(2 * nbeats).vin(0, unpack=16).vin(1, unpack=16)
             .stage(0, FuOp.ADD_SAT, Src.VIN0, Src.VIN1, bits=16)
             .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=16))
        kb.pcu(u["P"], c, role="add_sat",
               summary=f"ADD_SAT 16 over {2 * nbeats} unpacked int16 beats, pack 16")
        kb.route(f"{u['ax']}.rd", f"{u['P']}.vin0", what="x int16")
        kb.route(f"{u['ay']}.rd", f"{u['P']}.vin1", what="y int16")
        kb.route(f"{u['P']}.vout", f"{u['ao']}.wr", what="x' int16")
        return kb, u

    kb, roles = place(p, pcus=["P"], agcus=["ax", "ay", "ao"],
                      edges=[("ax", "P"), ("ay", "P"), ("P", "ao")], build=build,
                      error=PatternError)
    kb.metadata.update({"pattern": "residual", "dim": dim, "roles": roles})
    nb = nbeats * p.beat_bytes
    return DecodeKernel("residual", p, kb, roles, watchdog_cycles(p, 3 * nbeats),
                        reads={"x": nb, "y": nb}, writes={"out": nb}, outputs={"out": out},
                        info={"dim": dim})


def build_residual(p: RduParams, x, y, *, name: str = "residual") -> PatternKernel:
    """``x' = add_sat(x, y, 16)`` (``GoldenDecoder.residual``) on int16 vectors from HBM."""
    x = _vector(x, 16, "residual x")
    y = _vector(y, 16, "residual y")
    if x.shape != y.shape:
        raise PatternError(f"residual operands differ in length: {x.size} and {y.size}")
    dim = x.size
    dp = _up(dim, p.beat_bytes // 2)
    hbm = _Hbm(p)
    xa, ya, oa = hbm.take(2 * dp), hbm.take(2 * dp), hbm.take(2 * dp)
    k = residual_kernel(p, dim=dim, x=xa, y=ya, out=oa, name=name)
    golden = GoldenDecoder.residual(x, y)
    expected = _pad(golden.astype(np.int16), dp).astype(_dtype(16)).tobytes()
    k.builder.metadata["hbm"] = {"x": xa, "y": ya, "out": oa}
    images = [HbmImage("x", xa, _pad(x, dp).astype(_dtype(16)).tobytes()),
              HbmImage("y", ya, _pad(y, dp).astype(_dtype(16)).tobytes())]
    return PatternKernel("residual", p, k.builder, k.roles, images, HbmRegion("x'", oa, 2 * dp),
                         expected, 16, golden, {"dim": dim, "padded": dp}, k.watchdog)


# ---- SwiGLU -------------------------------------------------------------------------------------

def swiglu_blob(p: RduParams, silu, m, s, hidden: int) -> bytes:
    """The SwiGLU constants blob: the SiLU table as 256 int32 words, then one REQUANT word
    ``m_c | s_c << 16`` per channel, zero-padded to whole beats of int8 ``hidden``."""
    silu = intops.as_int(silu)
    if silu.shape != (SILU_ENTRIES,):
        raise PatternError(f"the SiLU table must have {SILU_ENTRIES} entries, got {silu.shape}")
    intops.check_range(silu, 32, "SiLU table")
    m = np.broadcast_to(intops.as_int(m), (hidden,))
    s = np.broadcast_to(intops.as_int(s), (hidden,))
    hp = _up(hidden, p.beat_bytes)
    words = np.array([PcuConfig.requant_word(int(a), int(b)) for a, b in zip(m, s)], np.uint32)
    return silu.astype("<i4").tobytes() + _pad(words, hp).astype("<u4").tobytes()


def swiglu_kernel(p: RduParams, *, hidden: int, out_bits: int, g8, u16, const, out,
                  iterations: int = 1, name: str = "swiglu") -> DecodeKernel:
    """Decode kernel ``out = REQUANT(SILU[g8 & 0xFF] * u16, m_c, s_c, out_bits)``: ``g8`` int8
    and ``u16`` int16 [hidden] activations, ``const`` the per-layer :func:`swiglu_blob`."""
    g8, u16, const, out = as_ref(g8), as_ref(u16), as_ref(const), as_ref(out)
    if out_bits not in (8, 16):
        raise PatternError(f"SwiGLU output width {out_bits}: the packer takes 8 or 16 bit")
    if hidden < 1:
        raise PatternError(f"SwiGLU hidden must be positive, got {hidden}")
    bb, L = p.beat_bytes, p.lanes
    hp = _up(hidden, bb)                           # whole beats of int8 g8 (and of the rest)
    nv = hp // L                                   # 32-bit lane beats the PCUs run
    tbl_beats = SILU_ENTRIES // L
    words_beats = nv                               # one REQUANT word per channel
    const_beats = tbl_beats + words_beats
    if const_beats > pmu_depth(p):
        raise PatternError(f"hidden {hidden}: SiLU table + REQUANT words = {const_beats} beats "
                           f"exceed a PMU ({pmu_depth(p)} beats)")
    if nv > 1 << 16:
        raise PatternError(f"hidden {hidden}: {nv} PCU beats exceed the 16-bit counter")
    out_beats = hp * out_bits // 8 // bb
    kw = lambda r, n: r.program_kw(p, n, iterations)

    def build(u):
        kb = KernelBuilder(p, name)
        kb.agcu(u["ag"], AgcuProgram.read(g8.beat(p), (hp // bb,), (1,), **kw(g8, hp // bb)),
                role="g8 load")
        kb.agcu(u["au"], AgcuProgram.read(u16.beat(p), (2 * hp // bb,), (1,),
                                          **kw(u16, 2 * hp // bb)), role="u16 load")
        kb.agcu(u["ac"], AgcuProgram.read(const.beat(p), (const_beats,), (1,),
                                          **kw(const, const_beats)),
                role="SiLU table + REQUANT words")
        kb.agcu(u["ao"], AgcuProgram.write(out.beat(p), (out_beats,), (1,),
                                           **kw(out, out_beats)), role="h store")
        # The LUT PMU stores the whole constants stream (its branch of the multicast must take
        # every beat) and serves gathers over the table, words 0..255, once it is loaded.
        lut = PmuConfig(sync=True, wr_passes=1, wr_counts=(const_beats,), wr_strides=(1,),
                        rd_mode=RdMode.GATHER, rd_service=True, rd_base=0,
                        tbl_size=SILU_ENTRIES)
        kb.pmu(u["MT"], lut, role="SiLU LUT",
               summary=f"stores {const_beats} beats, gathers SILU[idx] over words 0..255")
        # The words PMU stores the same stream and reads the REQUANT words (after the table) once.
        rq = stored_pmu(const_beats, rd_passes=1, rd_base=tbl_beats, rd_counts=(words_beats,),
                        rd_strides=(1,))
        kb.pmu(u["MM"], rq, role="REQUANT words",
               summary=f"stores {const_beats} beats, reads beats [{tbl_beats}, {const_beats})")
        idx = (PcuConfig(p).counters(nv).vin(0, unpack=8)
               .stage(0, FuOp.AND, Src.VIN0, Src.IMM, imm=0xFF)
               .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=32))
        kb.pcu(u["PI"], idx, role="LUT index",
               summary=f"g8 & 0xFF over {nv} unpacked int8 beats -> 32-bit indices")
        mul = (PcuConfig(p).counters(nv).vin(0).vin(1, unpack=16)
               .stage(0, FuOp.MUL, Src.VIN0, Src.VIN1, Src.ZERO)
               .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=32))
        kb.pcu(u["PS"], mul, role="SiLU x up", summary=f"MUL(SILU, u16) over {nv} beats -> int32")
        req = (PcuConfig(p).counters(nv).vin(0).vin(1)
               .stage(0, FuOp.REQUANT, Src.VIN0, Src.VIN1, Src.ZERO, bits=out_bits)
               .emit(0).reduce(Red.OFF).output(vout=True, pack_bits=out_bits))
        kb.pcu(u["PR"], req, role="requant",
               summary=f"REQUANT(product, word_c) over {nv} beats, pack {out_bits}")
        kb.route(f"{u['ag']}.rd", f"{u['PI']}.vin0", what="g8 int8")
        kb.route(f"{u['PI']}.vout", f"{u['MT']}.gidx", what="LUT indices")
        kb.route(f"{u['ac']}.rd", [f"{u['MT']}.win", f"{u['MM']}.win"], what="constants")
        kb.route(f"{u['MT']}.rout", f"{u['PS']}.vin0", what="SiLU(g)")
        kb.route(f"{u['au']}.rd", f"{u['PS']}.vin1", what="u16 int16")
        kb.route(f"{u['PS']}.vout", f"{u['PR']}.vin0", what="int32 products")
        kb.route(f"{u['MM']}.rout", f"{u['PR']}.vin1", what="REQUANT words")
        kb.route(f"{u['PR']}.vout", f"{u['ao']}.wr", what=f"h int{out_bits}")
        return kb, u

    edges = [("ag", "PI"), ("PI", "MT"), ("ac", "MT"), ("ac", "MM"), ("MT", "PS"), ("au", "PS"),
             ("PS", "PR"), ("MM", "PR"), ("PR", "ao")]
    kb, roles = place(p, pcus=["PI", "PS", "PR"], pmus=["MT", "MM"],
                      agcus=["ag", "au", "ac", "ao"], edges=edges, build=build,
                      error=PatternError)
    kb.metadata.update({"pattern": "swiglu", "hidden": hidden, "out_bits": out_bits,
                        "roles": roles})
    moved = hp // bb + 2 * hp // bb + const_beats + out_beats
    return DecodeKernel("swiglu", p, kb, roles, watchdog_cycles(p, moved + 16 * nv),
                        reads={"g8": hp, "u16": 2 * hp, "const": const_beats * bb},
                        writes={"out": out_beats * bb}, outputs={"out": out},
                        info={"hidden": hidden, "out_bits": out_bits})


def build_swiglu(p: RduParams, qm, g8, u16, silu, m, s, *, name: str = "swiglu") -> PatternKernel:
    """``h = REQUANT(SILU[g8 & 0xFF] * u16, m_c, s_c, bits)`` per channel, the golden model's
    ``GoldenDecoder(qm).swiglu`` (``bits = qm.act_bits["mid"]``). ``silu``: the 256-entry
    table; ``m``, ``s``: one REQUANT pair per channel (or one for all)."""
    g8 = _vector(g8, 8, "swiglu gate g8")
    u16 = _vector(u16, 16, "swiglu up u16")
    hidden = g8.size
    if u16.size != hidden:
        raise PatternError(f"gate ({hidden}) and up ({u16.size}) differ in length")
    out_bits = int(qm.act_bits["mid"])
    const_image = swiglu_blob(p, silu, m, s, hidden)
    m = np.broadcast_to(intops.as_int(m), (hidden,))
    s = np.broadcast_to(intops.as_int(s), (hidden,))
    bb = p.beat_bytes
    hp = _up(hidden, bb)
    hbm = _Hbm(p)
    ga, ua = hbm.take(hp), hbm.take(2 * hp)
    ca = hbm.take(len(const_image))
    oa = hbm.take(hp * out_bits // 8)
    k = swiglu_kernel(p, hidden=hidden, out_bits=out_bits, g8=ga, u16=ua, const=ca, out=oa,
                      name=name)
    golden = GoldenDecoder(qm).swiglu(g8, u16, intops.as_int(silu), m, s)
    expected = _pad(golden.astype(_dtype(out_bits)), hp).astype(_dtype(out_bits)).tobytes()
    k.builder.metadata["hbm"] = {"g8": ga, "u16": ua, "constants": ca, "out": oa}
    images = [HbmImage("g8", ga, _pad(g8, hp).astype(_dtype(8)).tobytes()),
              HbmImage("u16", ua, _pad(u16, hp).astype(_dtype(16)).tobytes()),
              HbmImage("constants", ca, const_image)]
    return PatternKernel("swiglu", p, k.builder, k.roles, images,
                         HbmRegion("h", oa, k.writes["out"]), expected, out_bits, golden,
                         {"hidden": hidden, "padded": hp}, k.watchdog)


# ---- argmax -------------------------------------------------------------------------------------

def argmax_kernel(p: RduParams, *, vocab: int, logits, out, name: str = "argmax") -> DecodeKernel:
    """Decode kernel: the lowest index of the maximum of int32 ``logits`` [vocab] (padded to
    whole beats with ``INT32_MIN``, or ``vocab`` a multiple of the lanes), written as one beat:
    the index as int32 in bytes 0..3, zeros after."""
    logits, out = as_ref(logits), as_ref(out)
    L, bb = p.lanes, p.beat_bytes
    if vocab < 1:
        raise PatternError(f"argmax vocab must be positive, got {vocab}")
    nbeats = _up(vocab, L) // L
    if nbeats > 1 << 16:
        raise PatternError(f"vocab {vocab}: {nbeats} beats exceed the 16-bit PCU counter")

    def build(u):
        kb = KernelBuilder(p, name)
        kb.agcu(u["al"], AgcuProgram.read(logits.beat(p), (nbeats,), (1,),
                                          **logits.program_kw(p, nbeats, 1)), role="logits load")
        kb.agcu(u["ao"], AgcuProgram.write(out.beat(p), (1,), (1,), **out.program_kw(p, 1, 1)),
                role="index store")
        c = (PcuConfig(p).counters(nbeats).vin(0).emit(0).reduce(Red.MAXIDX)
             .post(FuOp.PASS, Src.PREV, acc_op=AccOp.ARGMAX, acc_level=1)
             .output(vout=True, sout=False, pack_bits=32))
        kb.pcu(u["P"], c, role="argmax",
               summary=f"MAXIDX tree, ARGMAX over {nbeats} beats -> index on vout")
        kb.route(f"{u['al']}.rd", f"{u['P']}.vin0", what="logits int32")
        kb.route(f"{u['P']}.vout", f"{u['ao']}.wr", what="index")
        return kb, u

    kb, roles = place(p, pcus=["P"], agcus=["al", "ao"], edges=[("al", "P"), ("P", "ao")],
                      build=build, error=PatternError)
    kb.metadata.update({"pattern": "argmax", "vocab": vocab, "roles": roles})
    return DecodeKernel("argmax", p, kb, roles, watchdog_cycles(p, nbeats + 1),
                        reads={"logits": nbeats * bb}, writes={"out": bb}, outputs={"out": out},
                        info={"vocab": vocab})


def build_argmax(p: RduParams, logits, *, name: str = "argmax") -> PatternKernel:
    """The lowest index of the maximum of int32 ``logits`` (``GoldenDecoder.argmax``), written
    to HBM as one beat: the index as int32 in bytes 0..3, zeros after."""
    v = _vector(logits, 32, "argmax logits")
    vocab = v.size
    vp = _up(vocab, p.lanes)
    hbm = _Hbm(p)
    la, oa = hbm.take(4 * vp), hbm.take(p.beat_bytes)
    k = argmax_kernel(p, vocab=vocab, logits=la, out=oa, name=name)
    golden = GoldenDecoder.argmax(v)
    expected = np.zeros(p.beat_bytes // 4, "<i4")
    expected[0] = golden
    k.builder.metadata["hbm"] = {"logits": la, "out": oa}
    images = [HbmImage("logits", la, _pad(v, vp, INT32_MIN).astype("<i4").tobytes())]
    return PatternKernel("argmax", p, k.builder, k.roles, images,
                         HbmRegion("index", oa, p.beat_bytes), expected.tobytes(), 32, golden,
                         {"vocab": vocab, "padded": vp}, k.watchdog)


# ---- embedding gather -----------------------------------------------------------------------------

def embed_kernel(p: RduParams, *, dim: int, table, token: int, out,
                 name: str = "embed") -> DecodeKernel:
    """Decode kernel ``out = EMB[token]`` (``GoldenDecoder.embed``): the embedding table is
    int16 rows of ``dim`` elements, each padded to whole beats (``table`` = row 0); the AGCU
    reads row ``token`` (its base is the host's argument: the token the host just read back)
    and a PCU passes the beats to the writing AGCU."""
    table, out = as_ref(table), as_ref(out)
    if dim < 1:
        raise PatternError(f"embedding dim must be positive, got {dim}")
    if token < 0:
        raise PatternError(f"token id must be >= 0, got {token}")
    nbeats = _up(2 * dim, p.beat_bytes) // p.beat_bytes
    src = table.at(token * nbeats * p.beat_bytes)

    def build(u):
        kb = KernelBuilder(p, name)
        kb.agcu(u["ar"], AgcuProgram.read(src.beat(p), (nbeats,), (1,)), role="row load")
        kb.agcu(u["aw"], AgcuProgram.write(out.beat(p), (nbeats,), (1,)), role="x store")
        c = (PcuConfig(p).counters(nbeats).vin(0).emit(0).reduce(Red.OFF)
             .output(vout=True, pack_bits=32))
        kb.pcu(u["P"], c, role="pass", summary=f"PASS {nbeats} beats")
        kb.route(f"{u['ar']}.rd", f"{u['P']}.vin0", what="embedding row int16")
        kb.route(f"{u['P']}.vout", f"{u['aw']}.wr", what="x int16")
        return kb, u

    kb, roles = place(p, pcus=["P"], agcus=["ar", "aw"], edges=[("ar", "P"), ("P", "aw")],
                      build=build, error=PatternError)
    kb.metadata.update({"pattern": "embed", "dim": dim, "token": token, "roles": roles})
    nb = nbeats * p.beat_bytes
    return DecodeKernel("embed", p, kb, roles, watchdog_cycles(p, 2 * nbeats),
                        reads={"row": nb}, writes={"out": nb}, outputs={"out": out},
                        info={"dim": dim, "token": token})


def build_embed(p: RduParams, emb, token: int, *, name: str = "embed") -> PatternKernel:
    """``x = EMB[token]`` (``GoldenDecoder.embed``) from an int16 table (vocab x dim) laid
    out as the decode does it (rows padded to whole beats)."""
    emb = intops.check_range(emb, 16, "embedding table")
    if emb.ndim != 2:
        raise PatternError(f"the embedding table must be 2-D (vocab, dim), got {emb.shape}")
    vocab, dim = emb.shape
    if not 0 <= token < vocab:
        raise PatternError(f"token {token} outside the table (0..{vocab - 1})")
    rb = _up(2 * dim, p.beat_bytes)
    table = np.zeros((vocab, rb // 2), "<i2")
    table[:, :dim] = emb
    hbm = _Hbm(p)
    ta, oa = hbm.take(table.nbytes), hbm.take(rb)
    k = embed_kernel(p, dim=dim, table=ta, token=token, out=oa, name=name)
    golden = emb[token].astype(np.int16)
    return PatternKernel("embed", p, k.builder, k.roles, [HbmImage("table", ta, table.tobytes())],
                         HbmRegion("x", oa, rb), table[token].tobytes(), 16, golden,
                         {"vocab": vocab, "dim": dim, "token": token}, k.watchdog)


# ---- operands -----------------------------------------------------------------------------------

def residual_data(dim: int, seed: int):
    """Random int16 ``x``, ``y`` over the full range (about a quarter of the sums saturate)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-(1 << 15), 1 << 15, dim).astype(np.int16)
    y = rng.integers(-(1 << 15), 1 << 15, dim).astype(np.int16)
    return x, y


def swiglu_data(hidden: int, seed: int):
    """Random int8 gate and int16 up over their full ranges."""
    rng = np.random.default_rng(seed)
    g8 = rng.integers(-128, 128, hidden).astype(np.int8)
    u16 = rng.integers(-(1 << 15), 1 << 15, hidden).astype(np.int16)
    return g8, u16


def swiglu_constants(qm, layer: int, hidden: int | None = None):
    """The SwiGLU constants of ``layer`` of a quantised model: its SiLU table and per-channel
    ``mid_m``/``mid_s``. For another ``hidden`` than the model's, the per-channel pairs repeat
    cyclically (real values at an unreal length)."""
    hidden = qm.mid_m.shape[1] if hidden is None else hidden
    return (qm.silu[layer], np.resize(qm.mid_m[layer], hidden),
            np.resize(qm.mid_s[layer], hidden))


def argmax_data(vocab: int, seed: int, spread: int = 1 << 31):
    """Random int32 logits in ``[-spread, spread)``; a small ``spread`` gives many ties. The
    maximum is also copied to a later index, so the lowest-index rule is always exercised."""
    rng = np.random.default_rng(seed)
    v = rng.integers(-spread, spread, vocab, dtype=np.int64).astype(np.int32)
    first = int(np.argmax(v))
    if first + 1 < vocab:
        v[rng.integers(first + 1, vocab)] = v[first]
    return v


def golden_step_trace(qm, prompt_ids):
    """The golden decoder run over ``prompt_ids``: ``(decoder, trace, logits)``, ``trace`` the
    values of the last step, ``{(name, layer): [arrays in step order]}`` (as
    ``GoldenDecoder``'s trace hook reports them), ``logits`` its output."""
    seen = {}

    def trace(name, l, arr):
        seen.setdefault((name, l), []).append(np.array(arr))

    dec = GoldenDecoder(qm, trace=trace)
    for t in prompt_ids:
        seen.clear()
        logits = dec.step(t)
    return dec, seen, logits


def decode_step_operands(qm, prompt_ids, layer: int) -> dict:
    """Real operands of the three patterns from the golden decoder run over ``prompt_ids``:
    at the last token, layer ``layer``'s MLP residual inputs (``x`` after the attention
    residual, ``y`` = the down projection), its SwiGLU inputs (``g8``, ``u16``) and the
    step's ``logits``; also ``x_next`` and ``mid`` (the golden outputs, for cross-checks)."""
    _, seen, logits = golden_step_trace(qm, prompt_ids)
    xs = seen[("x", layer)]               # after the attention residual, after the MLP residual
    mid = seen[("mid", layer)][0]
    y = GoldenDecoder.gemv(qm.w_down[layer], mid, qm.w_down_m[layer], qm.w_down_s[layer], 16)
    return {"x": xs[0], "y": y, "x_next": xs[1], "g8": seen[("gate", layer)][0],
            "u16": seen[("up", layer)][0], "mid": mid, "logits": logits}


# ---- running on the chip ------------------------------------------------------------------------

def write_case(kernel: PatternKernel, out: Path, name: str | None = None, *,
               iteration: int = 0, initial: bytes | None = None) -> dict:
    """Write the files ``tb/pattern_tb.py`` reads for one kernel run; return the case dict.
    ``iteration``: the sequencer iteration the kernel is launched at (its AGCUs add
    ``iteration * iter_stride`` to their bases: a layer kernel run as layer ``iteration``).
    ``initial``: the output region's bytes before the run, for a kernel that updates it in
    place (by default the testbench fills it with the complement of the expected bytes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel.rbit").write_bytes(kernel.to_bytes())
    (out / "kernel.txt").write_text(kernel.describe() + "\n")
    (out / "expected.bin").write_bytes(kernel.expected)
    images = []
    for im in kernel.images:
        f = out / f"{im.name}.bin"
        f.write_bytes(im.data)
        images.append({"name": im.name, "addr": im.addr, "file": str(f.resolve())})
    case = {"name": name or f"{kernel.pattern} {kernel.shape}",
            "pattern": kernel.pattern,
            "rbit": str((out / "kernel.rbit").resolve()),
            "images": images,
            "output": {"name": kernel.output.name, "addr": kernel.output.addr,
                       "nbytes": kernel.output.nbytes},
            "expected": str((out / "expected.bin").resolve()),
            "elem_bits": kernel.elem_bits,
            "units": kernel.unit_ids,
            "watchdog": kernel.watchdog,
            "calls": [{"iteration": iteration, "count": 1, "deps": {}}],
            "result": str((out / "tb_result.json").resolve())}
    if initial is not None:
        if len(initial) != kernel.output.nbytes:
            raise PatternError(f"initial image of {len(initial)} B for an output region of "
                               f"{kernel.output.nbytes} B")
        (out / "initial.bin").write_bytes(initial)
        case["initial"] = str((out / "initial.bin").resolve())
    return case


def run_cases(p: RduParams, cases: list, test_dir: Path, *, build=None, waves: bool = False):
    """Run pattern cases (from :func:`write_case`) one after the other in one simulation of the
    chip built for ``p`` (cached build). Returns ``(per-case tb results, summary, error)``:
    ``error`` is the testbench's AssertionError (naming every case that was not bit-exact) or
    None; a result is None when its case never finished."""
    from sw.kernels.cli import build_chip
    from tb.runner import check_results, run
    b = build or build_chip(p, waves)[0]
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    summary = test_dir / "tb_summary.json"
    args = {"params": p.to_dict(), "cases": cases, "summary": str(summary.resolve())}
    t0 = time.monotonic()
    xml = run(b, "tb.pattern_tb", env={"MINIRDU_ARGS": json.dumps(args)}, waves=waves,
              test_dir=test_dir)
    results = [json.loads(Path(c["result"]).read_text()) if Path(c["result"]).exists() else None
               for c in cases]
    try:
        check_results(xml)
        err = None
    except AssertionError as e:
        if any(r is None for r in results):
            raise
        err = e
    info = json.loads(summary.read_text()) if summary.exists() else {}
    info["process_wall_seconds"] = time.monotonic() - t0
    return results, info, err

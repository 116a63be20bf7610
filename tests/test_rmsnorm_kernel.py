"""RMSNorm decode kernel without simulation: the constants blob, the errors, the kernel's HBM
programs, and the configured dataflow evaluated in software from the bitstream's own register
values (each PCU stage through ``hdl.fu.fu_op_eval``, the RSQRT LUT and the words from the
blob), bit for bit against ``GoldenDecoder.rmsnorm`` and ``intops.rsqrt_index``. The chip
itself runs the kernel in ``tb/test_rmsnorm.py``."""

import dataclasses

import numpy as np
import pytest

from hdl.agcu import AgcuReg, agcu_count_reg
from hdl.fu import FuOp, fu_op_eval
from hdl.params import DEFAULT_PARAMS
from hdl.pcu import PcuConfig, PcuReg, Red, Src
from hdl.pmu import PmuReg, RdMode
from sw import intops
from sw.frontend import load_model
from sw.golden import GoldenDecoder, quantized
from sw.kernels.builder import KernelError
from sw.kernels.gemv import REDUCED_PARAMS
from sw.kernels.kernel import Ref
from sw.kernels.patterns import PatternError
from sw.kernels.rmsnorm import build_rmsnorm, rmsnorm_constants, rmsnorm_layout

P = DEFAULT_PARAMS


@pytest.fixture(scope="module")
def qm():
    return quantized(load_model("models/kjv-280k"))


def kernel(qm, dim=64, **kw):
    args = dict(dim=dim, x=Ref(0), const=Ref(64 * 1024, 2048), out=Ref(4096),
                ss_shift=qm.ss_shift, eps_int=qm.eps_int, rsqrt_bits=qm.rsqrt_bits)
    args.update(kw)
    return build_rmsnorm(P, **args)


# ---- the constants blob -------------------------------------------------------------------------

def test_constants_blob_layout(qm):
    m, s = qm.norm1_m[2], qm.norm1_s[2]
    blob = rmsnorm_constants(P, qm, m, s)
    assert len(blob) == (16 + 4) * 64                    # 256-word table, 64 words
    w = np.frombuffer(blob, "<u4")
    assert np.array_equal(w[:256].view("<i4"), qm.rsqrt)
    assert np.array_equal(w[256:], (m.astype(np.int64) | s.astype(np.int64) << 16))
    assert np.array_equal(w[256:], [PcuConfig.requant_word(int(a), int(b)) for a, b in zip(m, s)])
    # every layer and norm has its own blob
    assert rmsnorm_constants(P, qm, qm.norm2_m[2], qm.norm2_s[2]) != blob
    assert len(rmsnorm_constants(P, qm, qm.normf_m, qm.normf_s)) == len(blob)
    # dim 40: the words pad with zeros up to the kernel's 4 virtual beats (64 words)
    m40, s40 = np.resize(m, 40), np.resize(s, 40)
    w40 = np.frombuffer(rmsnorm_constants(P, qm, m40, s40), "<u4")
    assert w40.size == 256 + 64 and not w40[256 + 40:].any()
    assert np.array_equal(w40[256:296], m40.astype(np.int64) | s40.astype(np.int64) << 16)
    # a smaller table is padded to whole beats
    q6 = dataclasses.replace(qm, rsqrt_bits=6, rsqrt=np.arange(64, dtype=np.int32))
    w6 = np.frombuffer(rmsnorm_constants(P, q6, m, s), "<i4")
    assert w6.size == 64 + 64 and np.array_equal(w6[:64], np.arange(64))
    q5 = dataclasses.replace(qm, rsqrt_bits=5, rsqrt=np.arange(1, 33, dtype=np.int32))
    w5 = np.frombuffer(rmsnorm_constants(P, q5, m, s), "<i4")
    assert w5.size == 32 + 64 and np.array_equal(w5[:32], np.arange(1, 33))


def test_constants_errors(qm):
    m, s = qm.norm1_m[0], qm.norm1_s[0]
    with pytest.raises(PatternError, match="equal-length"):
        rmsnorm_constants(P, qm, m, s[:10])
    with pytest.raises(PatternError, match="equal-length"):
        rmsnorm_constants(P, qm, m[:0], s[:0])
    with pytest.raises(PatternError, match="integer vectors"):
        rmsnorm_constants(P, qm, m.astype(float), s)
    bad = m.copy()
    bad[5] = 1 << 15
    with pytest.raises(PatternError, match=r"channel 5 \(m=32768"):
        rmsnorm_constants(P, qm, bad, s)
    bad[5] = -1
    with pytest.raises(PatternError, match="channel 5"):
        rmsnorm_constants(P, qm, bad, s)
    bad = s.copy()
    bad[7] = 64
    with pytest.raises(PatternError, match=r"channel 7 .*s in 0\.\.63"):
        rmsnorm_constants(P, qm, m, bad)
    with pytest.raises(PatternError, match="2\\*\\*rsqrt_bits = 256"):
        rmsnorm_constants(P, dataclasses.replace(qm, rsqrt=qm.rsqrt[:128]), m, s)
    with pytest.raises(PatternError, match="exceed a PMU .* the largest dim is 3840"):
        rmsnorm_constants(P, qm, np.resize(m, 3841), np.resize(s, 3841))
    assert len(rmsnorm_constants(P, qm, np.resize(m, 3840), np.resize(s, 3840))) == 256 * 64


# ---- building -----------------------------------------------------------------------------------

def test_build_errors(qm):
    for dim in (0, -3, 2.5, True):
        with pytest.raises(PatternError, match="dim must be a positive integer"):
            kernel(qm, dim=dim)
    with pytest.raises(PatternError, match="largest dim is 3840"):
        kernel(qm, dim=3841)
    with pytest.raises(PatternError, match="8 or 16 bit"):
        kernel(qm, out_bits=32)
    for sh in (-1, 64):
        with pytest.raises(PatternError, match="ss_shift must be an integer in 0..63"):
            kernel(qm, ss_shift=sh)
    for eps in (0, 1 << 31):
        with pytest.raises(PatternError, match="eps_int must be"):
            kernel(qm, eps_int=eps)
    for bits in (1, 17):
        with pytest.raises(PatternError, match="rsqrt_bits must be"):
            kernel(qm, rsqrt_bits=bits)
    with pytest.raises(PatternError, match="iterations must be"):
        kernel(qm, iterations=0)
    with pytest.raises(KernelError, match="address 100 is not a multiple of the 64-byte beat"):
        kernel(qm, x=Ref(100))
    with pytest.raises(KernelError, match="per-iteration stride 1000"):
        kernel(qm, const=Ref(64 * 1024, 1000))
    with pytest.raises(PatternError, match=">= 4 FU stages"):
        build_rmsnorm(REDUCED_PARAMS, dim=64, x=0, const=4096, out=1024, ss_shift=3,
                      eps_int=9, rsqrt_bits=8)
    with pytest.raises(PatternError, match=r"missing \['MW'\]"):
        kernel(qm, roles={"P1": "pcu0", "PI": "pcu2", "PH": "pcu1", "P3": "pcu3",
                          "MX": "pmu0", "MT": "pmu3", "ax": "agcu0", "ac": "agcu3",
                          "ao": "agcu2"})
    with pytest.raises(PatternError, match="no unit 'pcu9'"):
        kernel(qm, roles={"P1": "pcu9", "PI": "pcu2", "PH": "pcu1", "P3": "pcu3",
                          "MX": "pmu0", "MT": "pmu3", "MW": "pmu1", "ax": "agcu0",
                          "ac": "agcu3", "ao": "agcu2"})


def _regs(k, role):
    return dict(k.builder.units[k.roles[role]].writes)


@pytest.mark.parametrize("dim,out_bits,x_beats,const_beats,out_beats",
                         [(32, 8, 1, 18, 1), (64, 8, 2, 20, 1), (96, 8, 3, 22, 2),
                          (128, 8, 4, 24, 2), (40, 16, 2, 20, 2), (3840, 8, 120, 256, 60)])
def test_kernel_streams(qm, dim, out_bits, x_beats, const_beats, out_beats):
    lay = rmsnorm_layout(P, dim, 8, out_bits)
    assert (lay.x_beats, lay.const_beats, lay.out_beats) == (x_beats, const_beats, out_beats)
    k = kernel(qm, dim=dim, out_bits=out_bits, iterations=5)
    assert k.reads == {"x": 64 * x_beats, "const": 64 * const_beats}
    assert k.writes == {"out": 64 * out_beats} and k.outputs == {"out": Ref(4096)}
    assert len(k.unit_ids) == 10 and len(k.to_bytes()) > 0
    # the constants program walks layer l's blob at iteration l: stride 2048 B = 32 beats,
    # its region covers the five copies; x and out stay put
    c = _regs(k, "ac")
    assert (c[AgcuReg.BASE], c[AgcuReg.ITER_STRIDE], c[agcu_count_reg(0)]) == (1024, 32,
                                                                            const_beats)
    assert (c[AgcuReg.REGION_BASE], c[AgcuReg.REGION_BEATS]) == (1024, const_beats + 4 * 32)
    x = _regs(k, "ax")
    assert (x[AgcuReg.BASE], x[AgcuReg.ITER_STRIDE], x[agcu_count_reg(0)]) == (0, 0, x_beats)
    o = _regs(k, "ao")
    assert (o[AgcuReg.BASE], o[AgcuReg.ITER_STRIDE], o[agcu_count_reg(0)]) == (64, 0, out_beats)
    assert o[AgcuReg.MODE] == 1
    # the LUT serves the table's words, the words PMU reads the beats after it
    t = _regs(k, "MT")
    assert t[PmuReg.RD_MODE] & 3 == RdMode.SGATHER and t[PmuReg.TBL_SIZE] == 256
    w = _regs(k, "MW")
    assert (w[PmuReg.RD_BASE], w[PmuReg.RD_COUNT0]) == (16, const_beats - 16)


# ---- the configured dataflow, evaluated from the register values --------------------------------

def _s32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _stage(regs, s=None):
    cfg, imm = ((regs[PcuReg.POST_CFG], regs[PcuReg.POST_IMM]) if s is None else
                (regs[PcuReg[f"STAGE{s}_CFG"]], regs[PcuReg[f"STAGE{s}_IMM"]]))
    return {"op": FuOp(cfg & 15), "src": [(cfg >> 4) & 15, (cfg >> 8) & 15, (cfg >> 12) & 15],
            "bits": {0: 32, 1: 8, 2: 16}[(cfg >> 16) & 3], "acc_op": (cfg >> 18) & 3,
            "acc_level": (cfg >> 20) & 3, "imm": imm}


def _fu(st, prev, vin, sin):
    def operand(src):
        if src == Src.PREV:
            return prev
        if src == Src.IMM:
            return _s32(st["imm"])
        if src == Src.ZERO:
            return 0
        if Src.VIN0 <= src <= Src.VIN3:
            return vin[src - Src.VIN0]
        if Src.SIN0 <= src <= Src.SIN3:
            return sin[src - Src.SIN0]
        raise AssertionError(f"operand source {src} not modelled")
    a, b, c = (operand(x) for x in st["src"])
    return fu_op_eval(st["op"], a, b, c, st["bits"])


def run_pcu(regs, beats, sin):
    """One PCU program in software: ``beats`` = per virtual beat, per lane, the vin values;
    ``sin`` the scalar inputs (each popped once per program here). Returns the vector-mode
    beats, or the scalar-mode result of the whole program."""
    n = regs[PcuReg.CTR0] + 1
    assert len(beats) == n and regs[PcuReg.CTR1] == regs[PcuReg.CTR2] == 0
    stages = [_stage(regs, s) for s in range(P.pcu_stages)]
    lanes = len(beats[0])
    acc = {}
    outs = []
    for j, vin_lanes in enumerate(beats):
        out = []
        for i in range(lanes):
            v = vin_lanes[i][0]
            for s, st in enumerate(stages):
                r = _fu(st, v, vin_lanes[i], sin)
                if st["acc_level"]:
                    assert st["acc_level"] == 1 and st["acc_op"] == 0     # SUM over all beats
                    r = _s32(r + (acc[(s, i)] if j else 0))
                    acc[(s, i)] = r
                v = r
            out.append(v)
        outs.append(out)
    red = Red(regs[PcuReg.REDUCE] & 7)
    if red == Red.OFF:
        return outs
    assert regs[PcuReg.EMIT] == (1 if n > 1 else 0)
    last = outs[-1]
    reduced = {Red.SUM: _s32(sum(last)), Red.FIRST: last[0]}[red]
    return _fu(_stage(regs), reduced, [0], sin)


def emulate(k, x, blob, p=P):
    """The kernel's dataflow from its registers: P1 -> v -> PI (idx), PH (half_k) -> LUT in
    the blob -> P3 with the blob's words. Returns (y, v, idx, half_k)."""
    L = p.lanes
    lay = k.info["layout"]
    xs = np.zeros(lay.vbeats * L, np.int64)
    xs[:len(x)] = x
    assert _regs(k, "P1")[PcuReg.VIN0] >> 3 == 1 and _regs(k, "P3")[PcuReg.VIN0] >> 3 == 1
    vbeats = [[[int(xs[j * L + i]), 0, 0] for i in range(L)] for j in range(lay.vbeats)]
    v = run_pcu(_regs(k, "P1"), vbeats, [0, 0])
    one = [[[0, 0, 0]] * L]
    idx = run_pcu(_regs(k, "PI"), one, [v, 0])
    hk = run_pcu(_regs(k, "PH"), one, [v, 0])
    words = np.frombuffer(blob, "<i4")
    t = _regs(k, "MT")
    assert 0 <= idx < t[PmuReg.TBL_SIZE]
    r = int(words[t[PmuReg.RD_BASE] + idx])
    w = _regs(k, "MW")
    req = words[w[PmuReg.RD_BASE] * L:]
    beats = [[[int(xs[j * L + i]), int(req[j * L + i]), 0] for i in range(L)]
             for j in range(lay.vbeats)]
    y = np.array(run_pcu(_regs(k, "P3"), beats, [r, hk])).reshape(-1)
    return y, v, idx, hk


def test_emulated_dataflow_is_golden(qm):
    rng = np.random.default_rng(5)
    dec = GoldenDecoder(qm)
    tok = [1, 40, 300, 77, 5]
    xs = [qm.emb[t].astype(np.int64) for t in tok]
    xs += [rng.integers(-(1 << 15), 1 << 15, 64), rng.integers(-2, 3, 64), np.zeros(64, int),
           np.full(64, 32767), rng.integers(-300, 300, 64)]
    pairs = [(qm.norm1_m[1], qm.norm1_s[1]), (qm.norm2_m[4], qm.norm2_s[4]),
             (qm.normf_m, qm.normf_s)]
    for i, x in enumerate(xs):
        m, s = pairs[i % 3]
        for out_bits in (8, 16):
            k = kernel(qm, out_bits=out_bits)
            y, v, idx, hk = emulate(k, x, rmsnorm_constants(P, qm, m, s))
            assert np.array_equal(y[:64], dec.rmsnorm(x, m, s, out_bits)), (i, out_bits)
            assert not y[64:].any()
            xr = intops.rshift_round(x, qm.ss_shift)
            assert v == int(np.sum(xr * xr)) + qm.eps_int
            assert (idx, hk) == tuple(int(a) for a in intops.rsqrt_index(v, qm.rsqrt_bits))
    # a corrupted constants blob is caught by the same comparison (the check compares)
    m, s = pairs[0]
    blob = bytearray(rmsnorm_constants(P, qm, m, s))
    blob[4 * (256 + 3) + 1] ^= 0x40                  # bit 14 of m of channel 3
    y, *_ = emulate(kernel(qm), xs[0], bytes(blob))
    assert not np.array_equal(y[:64], dec.rmsnorm(xs[0], m, s, 8))
    # and so is a kernel built with the wrong sum-of-squares shift or epsilon
    blob = rmsnorm_constants(P, qm, m, s)
    for kw, x in (({"ss_shift": qm.ss_shift + 1}, xs[5]), ({"eps_int": qm.eps_int + 1}, xs[6])):
        y, *_ = emulate(kernel(qm, **kw), x, blob)
        assert not np.array_equal(y[:64], dec.rmsnorm(x, m, s, 8)), kw


@pytest.mark.parametrize("bits", [5, 7, 8, 10])
def test_emulated_rsqrt_index(qm, bits):
    """The index and half_k chains (PI, PH) for v over the whole range: 1, powers of two and
    their neighbours, 2**31 - 1, random values; odd and even table widths."""
    k = kernel(qm, rsqrt_bits=bits)
    rng = np.random.default_rng(bits)
    vs = {1, 2, 3, (1 << 31) - 1}
    for e in range(1, 31):
        vs |= {(1 << e) - 1, 1 << e, (1 << e) + 1, 3 << (e - 1)}
    vs |= {int(v) for v in rng.integers(1, 1 << 31, 300)}
    one = [[[0, 0, 0]] * P.lanes]
    for v in sorted(vs):
        got = (run_pcu(_regs(k, "PI"), one, [v, 0]), run_pcu(_regs(k, "PH"), one, [v, 0]))
        want = tuple(int(a) for a in intops.rsqrt_index(v, bits))
        assert got == want, (v, got, want)
        assert (1 << (bits - 2)) <= got[0] < (1 << bits) and got[1] <= 15

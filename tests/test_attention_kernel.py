"""Attention-softmax decode kernel without simulation: the constants blob, the errors, the
kernel's programs, and the whole configured dataflow evaluated in software from the
bitstream's own register values and routes (AGCU address programs, PMU write/read chains,
buffers and gathers, PCU counters, pop levels, FU stages through ``hdl.fu.fu_op_eval``,
accumulators, emit, segmented tree and packer), bit for bit against ``GoldenDecoder``
(``attn_scores`` + ``softmax_num``). The chip itself runs the kernel in
``tb/test_attention.py``."""

import numpy as np
import pytest

from hdl.agcu import AgcuMode, AgcuReg, agcu_count_reg, agcu_stride_reg
from hdl.fu import FuOp, fu_op_eval
from hdl.params import DEFAULT_PARAMS
from hdl.pcu import AccOp, PcuReg, Red, Src
from hdl.pmu import PmuReg, RdMode, rd_count_reg, rd_stride_reg, wr_count_reg, wr_stride_reg
from sw.frontend import load_model
from sw.golden import GoldenDecoder, quantized
from sw.kernels.attention import (MARKER, USED_LANE, attn_constants, attn_softmax_constants,
                                  attn_softmax_layout, build_attn_softmax, kv_row_bytes)
from sw.kernels.builder import KernelError
from sw.kernels.gemv import REDUCED_PARAMS
from sw.kernels.kernel import Ref
from sw.kernels.patterns import PatternError
from tb.attention_case import attn_case

P = DEFAULT_PARAMS
L = P.lanes
BB = P.beat_bytes


@pytest.fixture(scope="module")
def qm():
    return quantized(load_model("models/kjv-280k"))


def kernel(**kw):
    args = dict(n_heads=8, n_kv_heads=4, head_dim=8, context=256, pos=9, q=Ref(0),
                kv=Ref(64 * 1024, 32 * 1024), const=Ref(8192, 2048), e=Ref(4096),
                sums=Ref(4096 - 64), iterations=5)
    args.update(kw)
    return build_attn_softmax(P, **args)


# ---- the constants blob -------------------------------------------------------------------------

def test_constants_blob(qm):
    c = qm.config
    blob = attn_constants(P, qm, 2)
    w = np.frombuffer(blob, "<u4")
    assert len(blob) == (1 + 2 + 17) * BB                 # index, words, marker, 258-word table
    # index beat: q byte 4i of head h = i // 2 multiplies K word (h // 2) * 2 + i % 2
    assert list(w[:16]) == [(i // 2 // c.n_rep) * 2 + i % 2 for i in range(16)]
    word = USED_LANE | int(qm.exp_m[2]) | int(qm.exp_s[2]) << 16
    assert list(w[16:32]) == [word] * 8 + [0] * 8
    assert list(w[32:48]) == [257] * 16
    tbl = w[48:].view("<i4")
    assert np.array_equal(tbl[:256], qm.exp) and tbl[256] == 0 and tbl[257] == MARKER
    assert not tbl[258:].any()
    # per layer: only the REQUANT words differ
    other = np.frombuffer(attn_constants(P, qm, 4), "<u4")
    assert (qm.exp_m[4], qm.exp_s[4]) != (qm.exp_m[2], qm.exp_s[2])
    assert list(np.flatnonzero(other != w)) == list(range(16, 24))
    # GQA 16 heads / 4 KV heads, head_dim 32: two q beats of two heads each per beat... eight
    b = np.frombuffer(attn_softmax_constants(P, n_heads=16, n_kv_heads=4, head_dim=32,
                                             exp=qm.exp, m=5, s=7), "<u4")
    idx = b[:8 * 16].reshape(8, 16)
    for j in range(8):
        for i in range(16):
            h, d = divmod(64 * j + 4 * i, 32)
            assert idx[j, i] == ((h // 4) * 32 + d) // 4
    assert list(b[128:144]) == [USED_LANE | 5 | 7 << 16] * 16
    # padding heads (3 heads of 16: q is 48 bytes of the beat) read word 0
    b = np.frombuffer(attn_softmax_constants(P, n_heads=3, n_kv_heads=1, head_dim=16,
                                             exp=[9, 8, 7], m=1, s=0), "<u4")
    assert list(b[:16]) == [0, 1, 2, 3] * 3 + [0] * 4
    assert list(b[16:32]) == [USED_LANE | 1] * 3 + [0] * 13
    assert list(b[32:48]) == [4] * 16
    assert list(b[48:64]) == [9, 8, 7, 0, MARKER] + [0] * 11 and len(b) == 64


def test_constants_errors(qm):
    kw = dict(n_heads=8, n_kv_heads=4, head_dim=8, exp=qm.exp, m=100, s=10)
    with pytest.raises(PatternError, match="0..65535"):
        attn_softmax_constants(P, **{**kw, "exp": np.r_[qm.exp, 70000]})
    with pytest.raises(PatternError, match="0..65535"):
        attn_softmax_constants(P, **{**kw, "exp": np.r_[qm.exp, -1]})
    with pytest.raises(PatternError, match="must be integers"):
        attn_softmax_constants(P, **{**kw, "exp": qm.exp.astype(float)})
    with pytest.raises(PatternError, match="non-empty vector"):
        attn_softmax_constants(P, **{**kw, "exp": np.zeros(0, int)})
    with pytest.raises(PatternError, match="REQUANT m"):
        attn_softmax_constants(P, **{**kw, "m": 1 << 15})
    with pytest.raises(PatternError, match="REQUANT s"):
        attn_softmax_constants(P, **{**kw, "s": 64})
    with pytest.raises(PatternError, match="layer"):
        attn_constants(P, qm, 5)


# ---- building -----------------------------------------------------------------------------------

def test_build_errors():
    with pytest.raises(PatternError, match="at most 16"):
        kernel(n_heads=32, n_kv_heads=8)
    with pytest.raises(PatternError, match="not a multiple of n_kv_heads 3"):
        kernel(n_kv_heads=3)
    for hd in (12, 2, 64, 6):
        with pytest.raises(PatternError, match=r"head_dim in \[4, 8, 16, 32\]"):
            kernel(head_dim=hd)
    with pytest.raises(PatternError, match="outside the context"):
        kernel(pos=256)
    with pytest.raises(PatternError, match="holds 256 beats"):
        kernel(context=512, pos=256)
    with pytest.raises(PatternError, match="n_heads must be an integer"):
        kernel(n_heads=0)
    with pytest.raises(PatternError, match="pos must be an integer"):
        kernel(pos=-1)
    with pytest.raises(PatternError, match="iterations must be"):
        kernel(iterations=0)
    with pytest.raises(PatternError, match="exp_entries"):
        kernel(exp_entries=1 << 15)
    # 16 KV heads of 2 B... kv_dim 16 x 16 = 256 B rows stream; 32-byte rows at 512
    # positions would exceed MK, but the scores PMU refuses first
    with pytest.raises(KernelError, match="right before e .* right after its 10 beats"):
        kernel(sums=Ref(4096 + 64))
    with pytest.raises(KernelError, match="strides"):
        kernel(sums=Ref(4096 - 64, 64))
    with pytest.raises(KernelError, match="not a multiple of the 64-byte beat"):
        kernel(q=Ref(100))
    with pytest.raises(KernelError, match="per-iteration stride 1000"):
        kernel(const=Ref(8192, 1000))
    with pytest.raises(PatternError, match=">= 5 FU stages|3 vector inputs"):
        build_attn_softmax(REDUCED_PARAMS, n_heads=8, n_kv_heads=4, head_dim=8, context=256,
                           pos=3, q=0, kv=4096, const=8192, e=1024, sums=960)
    with pytest.raises(PatternError, match=r"missing \['ML'\]"):
        kernel(roles={"PS": "pcu4", "PM": "pcu2", "PI": "pcu5", "PE": "pcu7", "MI": "pmu0",
                      "MK": "pmu2", "MS": "pmu4", "MW": "pmu3", "aq": "agcu1", "ak": "agcu0",
                      "ac": "agcu2", "ao": "agcu3"})


def _regs(k, role):
    return dict(k.builder.units[k.roles[role]].writes)


@pytest.mark.parametrize("nh,nkv,hd,pos,qb,kb,stream", [
    (8, 4, 8, 255, 1, 128, False), (8, 4, 8, 0, 1, 1, False), (8, 4, 8, 10, 1, 6, False),
    (16, 16, 32, 100, 8, 808, True), (16, 4, 32, 7, 8, 16, True), (1, 1, 4, 3, 1, 1, False),
    (3, 1, 16, 9, 1, 3, False), (16, 8, 8, 50, 2, 51, True), (4, 2, 4, 33, 1, 5, False)])
def test_kernel_streams(nh, nkv, hd, pos, qb, kb, stream):
    k = kernel(n_heads=nh, n_kv_heads=nkv, head_dim=hd, pos=pos)
    lay = k.info["layout"]
    T = pos + 1
    assert (lay.q_beats, lay.k_beats, lay.stream) == (qb, kb, stream)
    assert lay.k_beats * BB >= T * kv_row_bytes(P, nkv * hd)
    assert k.reads == {"q": qb * BB, "kv": kb * BB, "const": lay.const_beats * BB}
    assert k.writes == {"e": (2 * T - 1) * BB, "sums": BB}
    assert k.outputs == {"e": Ref(4096), "sums": Ref(4032)}
    assert len(k.unit_ids) == 13 + (qb > 1) and len(k.to_bytes()) > 0
    # K follows the layer stride (32 KiB = 512 beats), the blob its own (2 KiB), q and the
    # output stay; regions cover the five layers
    kk = _regs(k, "ak")
    assert (kk[AgcuReg.BASE], kk[AgcuReg.ITER_STRIDE], kk[agcu_count_reg(0)]) == (1024, 512, kb)
    assert (kk[AgcuReg.REGION_BASE], kk[AgcuReg.REGION_BEATS]) == (1024, kb + 4 * 512)
    c = _regs(k, "ac")
    assert (c[AgcuReg.BASE], c[AgcuReg.ITER_STRIDE]) == (128, 32)
    o = _regs(k, "ao")
    assert o[AgcuReg.MODE] == AgcuMode.WRITE and o[AgcuReg.ITER_STRIDE] == 0
    assert (o[AgcuReg.BASE], o[agcu_count_reg(0)], o[agcu_count_reg(1)]) == (64 + T - 1, 2, T)
    assert (o[AgcuReg.REGION_BASE], o[AgcuReg.REGION_BEATS]) == (63, T + 1)
    # the segmented tree: hd / 4 lanes per head
    r = _regs(k, "PS")[PcuReg.REDUCE]
    assert (r & 7, r >> 3) == ((Red.OFF, 0) if hd == 4 else (Red.SUM, (hd // 4).bit_length() - 1))


def test_sums_after_e():
    k = kernel(pos=4, e=Ref(4096, 1024), sums=Ref(4096 + 5 * 64, 1024), iterations=3)
    o = _regs(k, "ao")
    assert (o[AgcuReg.BASE], o[AgcuReg.ITER_STRIDE]) == (64, 16)
    assert o[agcu_stride_reg(0)] == o[agcu_stride_reg(1)] == 1
    assert (o[AgcuReg.REGION_BASE], o[AgcuReg.REGION_BEATS]) == (64, 6 + 2 * 16)
    ms = _regs(k, "MS")
    assert (ms[PmuReg.RD_BASE], ms[rd_stride_reg(0)]) == (0, 1)
    assert not k.info["descending"]


# ---- the configured dataflow, evaluated from the registers and routes ----------------------------

def _s32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _signed16(v):
    v &= 0xFFFF
    return v - (1 << 16) if v & 0x8000 else v


def _chain(counts, strides):
    """Offsets of an affine counter chain, innermost first."""
    offs = [0]
    for c, s in zip(counts, strides):
        offs = [o + i * s for i in range(max(c, 1)) for o in offs]
    return offs


def _beat_words(b: bytes):
    return [int(x) for x in np.frombuffer(b, "<i4")]


class Emu:
    """Stream-level evaluation of one kernel launch from its configuration registers."""

    def __init__(self, k, hbm: bytearray, iteration: int):
        self.k, self.hbm, self.it = k, hbm, iteration
        self.units = {name: dict(cfg.writes) for name, cfg in k.builder.units.items()}
        self.kind = {name: cfg.unit.kind for name, cfg in k.builder.units.items()}
        self.src = {}
        for e in k.builder.routes:
            for d in e.route.dsts:
                self.src[d] = e.route.src
        self.memo = {}

    def stream(self, port):
        """The beats arriving at consumer ``port`` (through its route)."""
        return self.out(self.src[port])

    def out(self, port):
        if port not in self.memo:
            unit, name = port.split(".")
            self.memo[port] = getattr(self, f"_{self.kind[unit]}")(unit, name)
        return self.memo[port]

    # AGCU
    def _addrs(self, r):
        n = P.agcu_counters
        counts = [r.get(agcu_count_reg(i), 1) for i in range(n)]
        strides = [_s32(r.get(agcu_stride_reg(i), 0)) for i in range(n)]
        base = r[AgcuReg.BASE] + self.it * _s32(r[AgcuReg.ITER_STRIDE])
        addrs = [base + o for o in _chain(counts, strides)]
        lo, n_r = r[AgcuReg.REGION_BASE], r[AgcuReg.REGION_BEATS]
        assert all(lo <= a < lo + n_r for a in addrs), "AGCU address outside its region"
        return addrs

    def _agcu(self, unit, name):
        r = self.units[unit]
        assert name == "rd" and r[AgcuReg.MODE] == AgcuMode.READ
        return [_beat_words(bytes(self.hbm[a * BB:(a + 1) * BB])) for a in self._addrs(r)]

    def write_back(self, unit):
        r = self.units[unit]
        assert r[AgcuReg.MODE] == AgcuMode.WRITE
        addrs = self._addrs(r)
        beats = self.stream(f"{unit}.wr")
        assert len(beats) == len(addrs), (len(beats), len(addrs))
        for a, b in zip(addrs, beats):                      # in order: later writes win
            self.hbm[a * BB:(a + 1) * BB] = np.array(b, "<i4").astype("<u4").tobytes()

    # PMU
    def _pmu(self, unit, name):
        r = self.units[unit]
        assert name == "rout"
        nc = P.pmu_counters
        assert r[PmuReg.CTRL] & 1, "every PMU here runs SYNC"
        bbase, bsize, nbuf = r[PmuReg.BUF_BASE], r[PmuReg.BUF_SIZE], r[PmuReg.N_BUF]
        assert bbase + nbuf * bsize <= 256 and 1 <= nbuf <= P.pmu_max_buffers
        mem = {}
        win = self.stream(f"{unit}.win")
        wcounts = [r[wr_count_reg(i)] for i in range(nc)]
        wchain = _chain(wcounts, [_signed16(r[wr_stride_reg(i)]) for i in range(nc)])
        rcounts = [r[rd_count_reg(i)] for i in range(nc)]
        rchain = _chain(rcounts, [_signed16(r[rd_stride_reg(i)]) for i in range(nc)])
        wp, rp, rep = r[PmuReg.WR_PASSES], r[PmuReg.RD_PASSES], max(r[PmuReg.RD_REPEAT], 1)
        mode, service = RdMode(r[PmuReg.RD_MODE] & 3), bool(r[PmuReg.RD_MODE] & 4)
        rbase = _signed16(r[PmuReg.RD_BASE])
        assert len(win) == wp * len(wchain), (unit, len(win), wp, len(wchain))
        gidx = self.stream(f"{unit}.gidx") if mode == RdMode.GATHER else None
        out, gi, wi = [], 0, 0

        def write_pass(pidx):
            nonlocal wi
            buf = bbase + (pidx % nbuf) * bsize
            for o in wchain:
                off = _signed16(r[PmuReg.WR_BASE]) + o
                assert 0 <= off < bsize, (unit, "write outside the buffer")
                mem[buf + off] = win[wi]
                wi += 1

        def word(buf, off):
            assert 0 <= off < bsize * L, (unit, "read outside the buffer", off)
            w = mem.get(buf + off // L)
            assert w is not None, (unit, "read of a beat never written", off)
            return w[off % L]

        def gather(buf, o):
            nonlocal gi
            idx = gidx[gi]
            gi += 1
            assert all(0 <= x < r[PmuReg.TBL_SIZE] for x in idx), (unit, "index >= TBL_SIZE")
            return [word(buf, rbase + o + x) for x in idx]

        if service:
            assert mode == RdMode.GATHER and wp == 1
            write_pass(0)
            while gi < len(gidx):
                out.append(gather(bbase, rchain[0]))
            return out
        for pidx in range(max(wp, rp)):
            if pidx < wp:
                write_pass(pidx)
            if pidx < rp:
                buf = bbase + (pidx % nbuf) * bsize
                for _ in range(rep):
                    for o in rchain:
                        if mode == RdMode.VECTOR:
                            off = rbase + o
                            assert 0 <= off < bsize and buf + off in mem, (unit, off)
                            out.append(list(mem[buf + off]))
                        else:
                            assert mode == RdMode.GATHER
                            out.append(gather(buf, o))
        if gidx is not None:
            assert gi == len(gidx), (unit, "gather indices left over")
        return out

    # PCU
    def _pcu(self, unit, name):
        r = self.units[unit]
        assert name == "vout" and r[PcuReg.OUT] & 1
        nc = P.pcu_counters
        counts = [r[PcuReg[f"CTR{i}"]] + 1 for i in range(nc)]
        vins = []
        for kx in range(P.pcu_vector_inputs):
            v = r[PcuReg[f"VIN{kx}"]]
            if v & 1:
                assert v >> 3 == 0, "no unpacking here"
                vins.append((kx, (v >> 1) & 3, self.stream(f"{unit}.vin{kx}")))
        assert not any(r[PcuReg[f"SIN{kx}"]] & 1 for kx in range(P.pcu_scalar_inputs))
        stages = []
        for s in range(P.pcu_stages):
            cfg, imm = r[PcuReg[f"STAGE{s}_CFG"]], r[PcuReg[f"STAGE{s}_IMM"]]
            stages.append((FuOp(cfg & 15), [(cfg >> 4) & 15, (cfg >> 8) & 15, (cfg >> 12) & 15],
                           {0: 32, 1: 8, 2: 16}[(cfg >> 16) & 3], AccOp((cfg >> 18) & 3),
                           (cfg >> 20) & 3, _s32(imm)))
        emit = r[PcuReg.EMIT]
        red, seg = Red(r[PcuReg.REDUCE] & 7), r[PcuReg.REDUCE] >> 3
        assert red in (Red.OFF, Red.SUM) and (red == Red.OFF) == (seg == 0)
        outc = r[PcuReg.OUT]
        assert (outc >> 2) & 3 == 0, "32-bit packing"
        flush = (outc >> 4) & 3
        n_el = L >> seg
        acc = {}
        heads = {kx: 0 for kx, _, _ in vins}
        out, pk = [], []
        total = int(np.prod(counts))
        for n in range(total):
            ctr, rest = [], n
            for c in counts:
                ctr.append(rest % c)
                rest //= c
            first = [all(ctr[i] == 0 for i in range(kk)) for kk in range(nc + 1)]
            last = [all(ctr[i] == counts[i] - 1 for i in range(kk)) for kk in range(nc + 1)]
            beat = {kx: st[heads[kx]] for kx, _, st in vins}
            lanes = []
            for i in range(L):
                vin = [beat[kx][i] if kx in beat else 0 for kx in range(P.pcu_vector_inputs)]
                v = vin[0]
                for s, (op, srcs, bits, aop, alev, imm) in enumerate(stages):
                    def operand(src):
                        if src == Src.PREV:
                            return v
                        if src == Src.IMM:
                            return imm
                        if src == Src.ZERO:
                            return 0
                        if src == Src.ACC:
                            raise AssertionError("ACC operand not used here")
                        return vin[src - Src.VIN0]
                    res = fu_op_eval(op, *(operand(x) for x in srcs), bits)
                    if alev:
                        if not first[alev]:
                            a = acc[(s, i)]
                            res = {AccOp.SUM: _s32(a + res), AccOp.MAX: max(a, res),
                                   AccOp.MIN: min(a, res)}[aop]
                        acc[(s, i)] = res
                    v = res
                lanes.append(v)
            for kx, plev, st in vins:
                if last[plev]:
                    heads[kx] += 1
            if not last[emit]:
                continue
            if red == Red.OFF:
                chunk = lanes
            else:
                g = 1 << seg
                chunk = [_s32(sum(lanes[j * g:(j + 1) * g])) for j in range(n_el)]
            pk += chunk
            if len(pk) == L or last[flush] or last[nc]:
                out.append(pk + [0] * (L - len(pk)))
                pk = []
        for kx, _, st in vins:
            assert heads[kx] == len(st), (unit, f"vin{kx}: {len(st)} beats, {heads[kx]} used")
        return out


def emulate(case):
    """Run ``case`` (``tb.attention_case.AttnCase``) in software; return the output region."""
    hbm = bytearray(P.hbm_bytes)
    for im in case.pk.images:
        hbm[im.addr:im.addr + len(im.data)] = im.data
    reg = case.pk.output
    hbm[reg.addr:reg.addr + reg.nbytes] = bytes(b ^ 0xFF for b in case.pk.expected)
    emu = Emu(case.k, hbm, case.iteration)
    emu.write_back(case.k.roles["ao"])
    return bytes(hbm[reg.addr:reg.addr + reg.nbytes]), emu


def _q_k(rng, nh, nkv, hd, context, lo=-128, hi=128):
    return (rng.integers(lo, hi, (nh, hd)), rng.integers(lo, hi, (context, nkv, hd)))


def test_emulated_decode_step_is_golden(qm):
    """The golden decoder's own q and K cache at layer 2 after a short prompt, and at pos 0."""
    c = qm.config
    seen = {}
    dec = GoldenDecoder(qm, trace=lambda n, l, a: seen.__setitem__((n, l), np.array(a)))
    prompt = [1, 40, 300, 77, 5, 12, 99]
    for i, t in enumerate(prompt):
        dec.step(t)
        if i in (0, len(prompt) - 1):
            pairs = [(qm.exp_m[l], qm.exp_s[l]) for l in range(c.n_layers)]
            kc = [np.transpose(dec.k_cache[l], (1, 0, 2)) for l in range(c.n_layers)]
            case = attn_case(P, qm, q8=seen[("q_rot", 2)], kcaches=kc, pairs=pairs, pos=i,
                             layer=2)
            got, _ = emulate(case)
            assert got == case.pk.expected, i
    assert case.e.shape == (8, len(prompt)) and case.e.max() == 1 << qm.exp_bits


@pytest.mark.parametrize("nh,nkv,hd,pos,before", [
    (8, 4, 8, 0, True), (8, 4, 8, 6, True), (8, 4, 8, 9, False), (8, 8, 8, 13, True),
    (16, 4, 32, 4, True), (16, 16, 32, 2, False), (3, 1, 16, 5, True), (1, 1, 4, 2, True),
    (12, 3, 4, 7, True), (16, 8, 8, 3, True), (4, 1, 16, 40, False), (2, 2, 32, 3, True),
    (12, 3, 32, 5, True)])
def test_emulated_random_is_golden(qm, nh, nkv, hd, pos, before):
    rng = np.random.default_rng(nh * 1000 + hd * 10 + pos)
    context = max(pos + 3, 16)
    q8, _ = _q_k(rng, nh, nkv, hd, context)
    kcs = [_q_k(rng, nh, nkv, hd, context)[1] for _ in range(3)]
    pairs = [(int(rng.integers(1 << 13, 1 << 15)), int(rng.integers(8, 16))) for _ in range(3)]
    case = attn_case(P, qm, q8=q8, kcaches=kcs, pairs=pairs, pos=pos, layer=1,
                     sums_before=before)
    got, _ = emulate(case)
    assert got == case.pk.expected


def test_emulated_checks_compare(qm):
    """The emulation's comparison fails for a wrong kernel: another layer's iteration, a
    corrupted REQUANT word in the blob."""
    rng = np.random.default_rng(3)
    q8, kc = _q_k(rng, 8, 4, 8, 32, -40, 40)
    kcs = [kc, _q_k(rng, 8, 4, 8, 32, -40, 40)[1]]
    pairs = [(20000, 20), (20000, 20)]
    case = attn_case(P, qm, q8=q8, kcaches=kcs, pairs=pairs, pos=11, layer=1)
    good, _ = emulate(case)
    assert good == case.pk.expected
    case.iteration = 0                                   # reads layer 0's K
    bad, _ = emulate(case)
    assert bad != case.pk.expected
    case.iteration = 1
    blob = next(im for im in case.pk.images if im.name == "const1")
    data = bytearray(blob.data)
    data[4 * 16 + 1] ^= 0x40                             # bit 14 of head 0's REQUANT m
    case.pk.images[case.pk.images.index(blob)] = type(blob)(blob.name, blob.addr, bytes(data))
    bad, _ = emulate(case)
    assert bad != case.pk.expected                       # only head 0 (lane 0) differs
    assert np.frombuffer(bad, "<i4").reshape(-1, 16)[:, 1:].tolist() == \
        np.frombuffer(good, "<i4").reshape(-1, 16)[:, 1:].tolist()


def test_emulated_long_and_extremes(qm):
    """T = 256 (the whole context, every row in MK and every score beat in MS), extreme
    values (every score equal: all numerators EXP[0]; huge spreads: clamped indices) and an
    EXP table with zeros at its end."""
    rng = np.random.default_rng(9)
    q8, kc = _q_k(rng, 8, 4, 8, 256)
    pairs = [(int(qm.exp_m[0]), int(qm.exp_s[0]))]
    case = attn_case(P, qm, q8=q8, kcaches=[kc], pairs=pairs, pos=255)
    assert emulate(case)[0] == case.pk.expected
    assert (case.e == 0).any() and case.sums.max() > 1 << 15
    eq = attn_case(P, qm, q8=np.full((8, 8), 3), kcaches=[np.full((40, 4, 8), -7)],
                   pairs=pairs, pos=39)
    assert emulate(eq)[0] == eq.pk.expected and (eq.e == 1 << qm.exp_bits).all()
    big = attn_case(P, qm, q8=np.full((8, 8), -128), kcaches=[kc[:40] * 0 + np.where(
        rng.random((40, 4, 8)) < 0.5, -128, 127)], pairs=[(32767, 0)], pos=39)
    assert emulate(big)[0] == big.pk.expected
    assert (big.e == qm.exp[-1]).any()                 # indices clamped to N - 1

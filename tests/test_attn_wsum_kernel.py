"""Attention weighted-sum-of-V decode kernel without simulation: the constants blob, the
errors, the kernel's HBM programs, and the configured dataflow evaluated in software from the
bitstream's own register values (AGCU programs over an HBM image, PMU write chains, gathers and
buffer passes, each PCU stage through ``hdl.fu.fu_op_eval`` semantics with its counters, pop,
accumulate and emit levels), bit for bit against ``GoldenDecoder.attn_wsum``. The chip itself
runs the kernel in ``tb/test_attn_wsum.py``."""

import numpy as np
import pytest

from hdl.agcu import AgcuMode, AgcuReg, agcu_count_reg, agcu_stride_reg
from hdl.fu import FuOp, OutBits, fu_op_eval
from hdl.params import DEFAULT_PARAMS
from hdl.pcu import PcuReg, Red, Src
from hdl.pmu import PmuReg, RdMode, rd_count_reg, rd_stride_reg, wr_count_reg, wr_stride_reg
from sw import intops
from sw.frontend import load_model
from sw.golden import quantized
from sw.kernels.attn_wsum import (build_attn_wsum, channel_map, wsum_blob, wsum_constants,
                                  wsum_layout)
from sw.kernels.builder import KernelError
from sw.kernels.gemv import REDUCED_PARAMS
from sw.kernels.kernel import Ref
from sw.kernels.patterns import PatternError
from tb.attn_wsum_case import (golden_wsum, random_e, random_pairs, step_operands, v_cache,
                               wsum_hbm)

P = DEFAULT_PARAMS
BB = P.beat_bytes
L = P.lanes


@pytest.fixture(scope="module")
def qm():
    return quantized(load_model("models/kjv-280k"))


def _up(v, a):
    return -(-v // a) * a


# ---- the emulator: the kernel's registers applied to an HBM image ------------------------------

def _s32(v):
    v = np.asarray(v, np.int64) & 0xFFFFFFFF
    return np.where(v & 0x80000000, v - (1 << 32), v)


def _s16(v):
    """A PMU register's 16-bit signed value."""
    v &= 0xFFFF
    return v - (1 << 16) if v & 0x8000 else v


def _fu(op, a, b, c, bits):
    """``fu_op_eval`` over lanes (numpy), for the ops the kernel uses; checked against
    ``fu_op_eval`` element by element in :func:`test_vector_fu_matches_fu_op_eval`."""
    a, b, c = _s32(a), _s32(b), _s32(c)
    if op == FuOp.PASS:
        return a
    if op == FuOp.ADD:
        return _s32(a + b)
    if op == FuOp.SUB:
        return _s32(a - b)
    if op == FuOp.MUL:
        return _s32(a * b + c)
    if op == FuOp.AND:
        return _s32(a & b)
    if op == FuOp.SHL:
        sh = b & 63
        return np.where(sh >= 32, 0, _s32((a & 0xFFFFFFFF) << np.minimum(sh, 31)))
    if op == FuOp.SHLR:
        bb = np.clip(b, -63, 63)
        return _s32(intops.shift_left_or_right(a, bb))
    if op == FuOp.CLZ:
        out = np.full(a.shape, 32, np.int64)
        pos = a > 0
        out[pos] = intops.clz32(a[pos])
        out[a < 0] = 0
        return out
    if op == FuOp.REQUANT:
        s = np.minimum(63, ((b >> 16) & 63) + (c & 0xFFFFFFFF))
        return intops.requant(a, b & 0x7FFF, s, bits).astype(np.int64)
    raise AssertionError(f"op {op!r} not modelled")


def _stage(regs, s):
    cfg, imm = regs[PcuReg[f"STAGE{s}_CFG"]], regs[PcuReg[f"STAGE{s}_IMM"]]
    return {"op": FuOp(cfg & 15), "src": [(cfg >> 4) & 15, (cfg >> 8) & 15, (cfg >> 12) & 15],
            "bits": OutBits((cfg >> 16) & 3).width, "acc_op": (cfg >> 18) & 3,
            "acc_level": (cfg >> 20) & 3, "imm": imm}


def _chain(counts, strides):
    """Offsets of a counter chain (innermost first)."""
    offs = np.zeros(1, np.int64)
    for c, s in zip(counts, strides):
        offs = (np.arange(max(c, 1))[:, None] * s + offs[None, :]).reshape(-1)
    return offs


def agcu_stream(regs, hbm: bytes, iteration):
    """The beats an AGCU program reads (16 words each), in program order."""
    assert regs[AgcuReg.MODE] == AgcuMode.READ
    base = regs[AgcuReg.BASE] + iteration * _s32(regs[AgcuReg.ITER_STRIDE])
    k = 0
    counts, strides = [], []
    while agcu_count_reg(k) in regs:
        counts.append(regs[agcu_count_reg(k)])
        strides.append(int(_s32(regs[agcu_stride_reg(k)])))
        k += 1
    addrs = base + _chain(counts, strides)
    rb, rn = regs[AgcuReg.REGION_BASE], regs[AgcuReg.REGION_BEATS]
    assert addrs.min() >= rb and addrs.max() < rb + rn, "AGCU address outside its region"
    words = np.frombuffer(hbm, "<u4")
    return [words[a * L:(a + 1) * L].astype(np.int64) for a in addrs]


class Pmu:
    """A PMU program from its registers: ``write(beats)`` runs the write passes (keeping each
    pass's buffer), reads then come per pass (SYNC order: a pass is read after it is
    written)."""

    def __init__(self, regs):
        self.r = regs
        self.nc = 3
        self.passes = []

    def _counts(self, wr):
        cr, sr = (wr_count_reg, wr_stride_reg) if wr else (rd_count_reg, rd_stride_reg)
        return ([self.r[cr(k)] for k in range(self.nc)],
                [_s16(self.r[sr(k)]) for k in range(self.nc)])

    def write(self, beats):
        r = self.r
        assert r[PmuReg.CTRL] & 1 and r[PmuReg.WR_MODE] == 0
        size, nbuf = r[PmuReg.BUF_SIZE], r[PmuReg.N_BUF]
        assert r[PmuReg.BUF_BASE] + nbuf * size <= 256
        offs = _chain(*self._counts(True)) + _s16(r[PmuReg.WR_BASE])
        n = len(offs)
        assert len(beats) == n * r[PmuReg.WR_PASSES], (len(beats), n, r[PmuReg.WR_PASSES])
        bufs = [np.zeros((size, L), np.int64) for _ in range(nbuf)]
        for pss in range(r[PmuReg.WR_PASSES]):
            buf = bufs[pss % nbuf]
            for j, o in enumerate(offs):
                assert 0 <= o < size, "write outside the buffer"
                buf[o] = beats[pss * n + j]
            self.passes.append(buf.copy())

    def read_vector(self):
        r = self.r
        assert r[PmuReg.RD_MODE] == RdMode.VECTOR
        offs = _chain(*self._counts(False)) + _s16(r[PmuReg.RD_BASE])
        out = []
        for pss in range(r[PmuReg.RD_PASSES]):
            buf = self.passes[pss]
            for _ in range(max(1, r[PmuReg.RD_REPEAT])):
                for o in offs:
                    assert 0 <= o < buf.shape[0], "read outside the buffer"
                    out.append(buf[o])
        return out

    def gather(self, idx_beats, service=False):
        r = self.r
        assert r[PmuReg.RD_MODE] & 3 == RdMode.GATHER and bool(r[PmuReg.RD_MODE] & 4) == service
        base = _s16(r[PmuReg.RD_BASE])
        tbl = r[PmuReg.TBL_SIZE]
        offs = _chain(*self._counts(False)) + base
        out = []
        it = iter(idx_beats)
        npass = 1 if service else r[PmuReg.RD_PASSES]
        steps = len(idx_beats) if service else len(offs)
        for pss in range(npass):
            words = self.passes[pss].reshape(-1)
            for j in range(steps):
                idx = next(it)
                assert idx.min() >= 0 and idx.max() < tbl, f"gather index outside 0..{tbl - 1}"
                a = (0 if service else offs[j]) + base * service + idx
                assert a.min() >= 0 and a.max() < words.size, "gather outside the buffer"
                out.append(words[a])
        assert next(it, None) is None, "index beats left over"
        return out


def run_pcu(regs, vins):
    """One PCU program (vector mode): ``vins[k]`` = the beats arriving on vin k (lists of 16
    lanes), consumed by pop level. Returns the packed output words (as int32 lanes of the
    output beats)."""
    nctr = [regs[PcuReg[f"CTR{i}"]] + 1 for i in range(3)]
    stages = [_stage(regs, s) for s in range(P.pcu_stages)]
    emit = regs[PcuReg.EMIT]
    assert regs[PcuReg.REDUCE] & 7 == Red.OFF
    out_cfg = regs[PcuReg.OUT]
    pack = OutBits((out_cfg >> 2) & 3).width
    heads = {}
    pos = {k: 0 for k in range(3)}
    acc = {}
    emitted = []
    total = nctr[0] * nctr[1] * nctr[2]
    for n in range(total):
        c = [n % nctr[0], (n // nctr[0]) % nctr[1], n // (nctr[0] * nctr[1])]
        first = [True] + [all(c[i] == 0 for i in range(lv)) for lv in range(1, 4)]
        last = [True] + [all(c[i] == nctr[i] - 1 for i in range(lv)) for lv in range(1, 4)]
        vin = []
        for k in range(3):
            v = regs[PcuReg[f"VIN{k}"]]
            if not v & 1:
                vin.append(np.zeros(L, np.int64))
                continue
            assert (v >> 3) & 3 == 0, "unpacked inputs not modelled"
            vin.append(np.asarray(vins[k][pos[k]], np.int64))
            if last[(v >> 1) & 3]:
                pos[k] += 1
        prev = vin[0]
        for s, st in enumerate(stages):
            def operand(src):
                if src == Src.PREV:
                    return prev
                if src == Src.IMM:
                    return np.full(L, int(_s32(st["imm"])))
                if src == Src.ZERO:
                    return np.zeros(L, np.int64)
                if Src.VIN0 <= src <= Src.VIN2:
                    return vin[src - Src.VIN0]
                raise AssertionError(f"source {src} not modelled")
            r = _fu(st["op"], *(operand(x) for x in st["src"]), st["bits"])
            if st["acc_level"]:
                assert st["acc_op"] == 0
                r = r if first[st["acc_level"]] else _s32(acc[s] + r)
                acc[s] = r
            prev = r
        if last[emit]:
            emitted.append(prev)
    for k in range(3):
        if regs[PcuReg[f"VIN{k}"]] & 1:
            assert pos[k] == len(vins[k]), f"vin{k}: {len(vins[k]) - pos[k]} beats left over"
    flat = np.concatenate(emitted) if emitted else np.zeros(0, np.int64)
    per_beat = BB * 8 // pack
    flat = np.concatenate([flat, np.zeros(_up(flat.size, per_beat) - flat.size, np.int64)])
    return flat, pack


def emulate(k, hbm: bytes, iteration=0):
    """The whole kernel from its registers over ``hbm``; returns the bytes it writes and the
    address (byte) it writes them to."""
    regs = {role: dict(k.builder.units[unit].writes) for role, unit in k.roles.items()}
    pm = {r: Pmu(regs[r]) for r in ("MV", "ME", "MIV", "MIE", "MR", "MW")}
    const = agcu_stream(regs["ac"], hbm, iteration)
    for r in ("MIV", "MIE", "MR", "MW"):
        pm[r].write(const)
    pm["ME"].write(agcu_stream(regs["ae"], hbm, iteration))
    pm["MV"].write(agcu_stream(regs["av"], hbm, iteration))
    e_ch = pm["ME"].gather(pm["MIE"].read_vector())
    v_words = pm["MV"].gather(pm["MIV"].read_vector())
    w = pm["MW"].read_vector()
    acc, _ = run_pcu(regs["PA"], [v_words, e_ch, w])
    sums, _ = run_pcu(regs["PS"], [e_ch, [], []])
    sums = sums.reshape(-1, L)
    ri, _ = run_pcu(regs["PR"], [list(sums), [], []])
    r = pm["MR"].gather(list(ri.reshape(-1, L)), service=True)
    B, _ = run_pcu(regs["PM"], [r, w, []])
    o, pack = run_pcu(regs["PF"], [list(acc.reshape(-1, L)), list(B.reshape(-1, L)),
                                   list(sums)])
    dt = {8: "<i1", 16: "<i2", 32: "<i4"}[pack]
    data = (o & ((1 << pack) - 1)).astype({8: "<u1", 16: "<u2", 32: "<u4"}[pack]).view(dt)
    o_regs = regs["ao"]
    assert o_regs[AgcuReg.MODE] == AgcuMode.WRITE
    n = o_regs[agcu_count_reg(0)]
    assert data.nbytes == n * BB, (data.nbytes, n)
    addr = (o_regs[AgcuReg.BASE] + iteration * int(_s32(o_regs[AgcuReg.ITER_STRIDE]))) * BB
    return data.tobytes(), addr, {"sums": sums, "ri": ri.reshape(-1, L), "acc": acc}


def make_case(qm, *, nh, nkv, hd, T, context=256, layers=1, layer=0, out_bits=8, seed=0,
              e=None, v_caches=None, pairs=None, recip=None):
    """An HBM image (e, sums, junk K caches, V caches with junk past T, one blob per layer at
    a stride with junk between) and the kernel launched for ``layer``; returns
    ``(kernel, hbm, expected bytes, golden, out address)``. ``e``: (T, nh); ``v_caches``: per
    layer (rows >= T, kv_dim) int8 (default random); ``pairs``: per layer (m, s) (default
    random)."""
    rng = np.random.default_rng(seed)
    lay = wsum_layout(P, nh, nkv, hd, qm.recip_bits)
    kvr, kvd = lay.kv_row_bytes, lay.kv_dim
    e = random_e(qm, rng, T, nh) if e is None else np.asarray(e, np.int64)
    Vs = []
    for l in range(layers):
        Vs.append(v_cache(rng, lay, context, T, None if v_caches is None else v_caches[l]))
    if pairs is None:
        pairs = random_pairs(rng, nh * hd, layers)
    recip = qm.recip if recip is None else recip
    blobs = [wsum_blob(P, n_heads=nh, n_kv_heads=nkv, head_dim=hd, m=a, s=b, recip=recip,
                       recip_bits=qm.recip_bits) for a, b in pairs]
    mp = wsum_hbm(P, lay, T=T, context=context, layers=layers, blob_bytes=len(blobs[0]),
                  out_bits=out_bits)
    hbm = bytearray(mp.size)
    ew = np.zeros((T, L), "<i4")
    ew[:, :nh] = e
    hbm[mp.e:mp.e + T * BB] = ew.tobytes()
    sw_ = np.zeros(L, "<i4")
    sw_[:nh] = e.sum(0)
    hbm[mp.sums:mp.sums + BB] = sw_.tobytes()
    for l in range(layers):
        ca = mp.const + l * mp.const_stride
        hbm[ca:ca + len(blobs[l])] = blobs[l]
        junk = rng.integers(0, 256, 3 * BB).astype(np.uint8).tobytes()
        hbm[ca + len(blobs[l]):ca + mp.const_stride] = junk
        kb, voff = mp.kv + l * mp.kv_stride, mp.v_offset
        hbm[kb:kb + voff] = rng.integers(0, 256, voff).astype(np.uint8).tobytes()   # K cache
        hbm[kb + voff:kb + voff + context * kvr] = Vs[l].tobytes()
    V = Vs[layer][:T, :kvd].reshape(T, nkv, hd)
    m, s = pairs[layer]
    g = golden_wsum(qm, e, V, m, s, nh // nkv, out_bits)
    return mp.build(P), bytes(hbm), mp.expected(P, g), g, mp.out


def kernel(**kw):
    args = dict(n_heads=8, n_kv_heads=4, head_dim=8, context=256, pos=10, e=Ref(0),
                sums=Ref(64 * 300), kv=Ref(1 << 20, 32768), const=Ref(1 << 19, 2048),
                out=Ref(64 * 310), iterations=5)
    args.update(kw)
    return build_attn_wsum(P, **args)


def _regs(k, role):
    return dict(k.builder.units[k.roles[role]].writes)


# ---- the constants blob -------------------------------------------------------------------------

def test_constants_blob_layout(qm):
    blob = wsum_constants(P, qm, 2)
    lay = wsum_layout(P, 8, 4, 8)
    assert (lay.vectors, lay.tbl_beats, lay.w_beat, lay.ie_beat, lay.iv_beat, lay.ivc_beat,
            lay.const_beats) == (4, 8, 8, 12, 16, None, 20)
    assert len(blob) == 20 * BB
    w = np.frombuffer(blob, "<i4").astype(np.int64)
    assert np.array_equal(w[:128], qm.recip[128:] - 32768)
    W = w[128:192]
    m, s = qm.attn_m[2].astype(np.int64), qm.attn_s[2].astype(np.int64)
    c = np.arange(64)
    kvbyte = (c // 8 // 2) * 8 + c % 8
    assert np.array_equal(W & 0x7FFF, m) and np.array_equal((W >> 16) & 63, s)
    assert np.array_equal(W >> 22, 24 - 8 * (kvbyte % 4))
    assert np.array_equal(w[192:256], c // 8)                     # head of each channel
    assert np.array_equal(w[256:320], kvbyte // 4)                # its V word in a row
    # every layer has its own blob (its own pairs)
    assert wsum_constants(P, qm, 3) != blob
    # GQA 12 heads / 4 KV heads, head_dim 4: 3 vectors, lanes of 3 heads share a KV head
    b = np.frombuffer(wsum_blob(P, n_heads=12, n_kv_heads=4, head_dim=4, m=np.arange(48),
                                s=np.full(48, 9), recip=qm.recip), "<i4")
    lay = wsum_layout(P, 12, 4, 4)
    assert lay.const_beats == 8 + 3 * 3 and b.size == lay.const_beats * 16
    W = b[128:176].astype(np.int64)
    assert np.array_equal(W & 0x7FFF, np.arange(48)) and set(((W >> 16) & 63).tolist()) == {9}
    assert np.array_equal(b[176:224], np.arange(48) // 4)
    assert np.array_equal(b[224:272], np.arange(48) // 4 // 3)     # kvbyte // 4 = head // 3
    # 6 channels: the other 10 lanes of the vector are zero words and index 0
    b = np.frombuffer(wsum_blob(P, n_heads=1, n_kv_heads=1, head_dim=6, m=np.full(6, 5),
                                s=np.full(6, 7), recip=qm.recip), "<i4")
    assert not b[128 + 6:144].any() and not b[144 + 6:160].any() and not b[160 + 6:176].any()
    assert np.array_equal(b[160:166], [0, 0, 0, 0, 1, 1])
    assert np.array_equal(b[128:134] >> 22, [24, 16, 8, 0, 24, 16])
    # kv rows of 128 bytes: column-relative V indices follow
    lay = wsum_layout(P, 16, 8, 16)
    assert lay.kv_row_bytes == 128 and lay.row_beats == 2 and lay.ivc_beat == 8 + 3 * 16
    b = np.frombuffer(wsum_blob(P, n_heads=16, n_kv_heads=8, head_dim=16,
                                m=np.ones(256, int), s=np.ones(256, int), recip=qm.recip), "<i4")
    assert b.size == (8 + 4 * 16) * 16
    cm = channel_map(lay)
    assert np.array_equal(b[(8 + 32) * 16:(8 + 48) * 16], cm["kvbyte"] // 4)
    assert np.array_equal(b[(8 + 48) * 16:], (cm["kvbyte"] % 64) // 4)


def test_constants_errors(qm):
    args = dict(n_heads=2, n_kv_heads=1, head_dim=8, m=np.ones(16, int), s=np.ones(16, int),
                recip=qm.recip)

    def blob(**kw):
        return wsum_blob(P, **{**args, **kw})

    with pytest.raises(PatternError, match="16 entries"):
        blob(m=np.ones(15, int))
    with pytest.raises(PatternError, match="integer arrays"):
        blob(s=np.ones(16))
    bad = np.ones(16, int)
    bad[5] = 1 << 15
    with pytest.raises(PatternError, match=r"channel 5 \(m=32768"):
        blob(m=bad)
    bad = np.ones(16, int)
    bad[3] = 64
    with pytest.raises(PatternError, match=r"channel 3 .*s in 0\.\.63"):
        blob(s=bad)
    with pytest.raises(PatternError, match="2\\*\\*recip_bits = 256"):
        blob(recip=qm.recip[:128])
    r = qm.recip.copy()
    r[200] = -1
    with pytest.raises(PatternError, match="Q15 mantissas"):
        blob(recip=r)
    r[200] = 1 << 15
    with pytest.raises(PatternError, match="Q15 mantissas"):
        blob(recip=r)
    with pytest.raises(PatternError, match="not a multiple of n_kv_heads"):
        blob(n_kv_heads=3)
    with pytest.raises(PatternError, match="n_heads must be an integer in 1..16"):
        blob(n_heads=17)
    with pytest.raises(PatternError, match="kv_dim = n_kv_heads \\* head_dim >= 4"):
        wsum_blob(P, n_heads=1, n_kv_heads=1, head_dim=2, m=[1, 1], s=[1, 1], recip=qm.recip)
    with pytest.raises(PatternError, match="layer must be an integer in 0..4"):
        wsum_constants(P, qm, 5)


# ---- building -----------------------------------------------------------------------------------

def test_build_errors():
    with pytest.raises(PatternError, match="pos 256 is outside the context of 256"):
        kernel(pos=256)
    with pytest.raises(PatternError, match="pos must be an integer"):
        kernel(pos=-1)
    with pytest.raises(PatternError, match="T = pos \\+ 1 = 300 e rows exceed a PMU"):
        kernel(pos=299, context=512)
    with pytest.raises(PatternError, match="8 or 16 bit"):
        kernel(out_bits=32)
    with pytest.raises(PatternError, match="iterations must be"):
        kernel(iterations=0)
    with pytest.raises(PatternError, match="n_heads must be an integer in 1..16"):
        kernel(n_heads=32, n_kv_heads=8)
    with pytest.raises(PatternError, match="not a multiple of n_kv_heads"):
        kernel(n_kv_heads=3)
    with pytest.raises(KernelError, match="address 100 is not a multiple of the 64-byte beat"):
        kernel(e=Ref(100))
    with pytest.raises(KernelError, match="address .* is not a multiple"):
        kernel(sums=Ref(64 * 300 + 4))
    with pytest.raises(KernelError, match="per-iteration stride 1000"):
        kernel(const=Ref(1 << 19, 1000))
    with pytest.raises(KernelError, match="not a multiple of the 64-byte beat"):
        kernel(v_offset=100)
    # V streamed by column needs equal columns: 6 heads of 16 (96-byte rows, 2 columns of 4
    # and 2 vectors) beyond 128 positions
    kernel(n_heads=6, n_kv_heads=6, head_dim=16, pos=127)
    with pytest.raises(PatternError, match="unequal numbers of channel vectors .* largest T "
                                           "for this shape is 128"):
        kernel(n_heads=6, n_kv_heads=6, head_dim=16, pos=128)
    # GQA head_dim 24 (96-byte KV rows in 128): vector 7 holds heads 4 and 5, whose KV head 2
    # straddles the first two columns
    with pytest.raises(PatternError, match="channel vector 7 spans V columns \\[0, 1\\]"):
        kernel(n_heads=8, n_kv_heads=4, head_dim=24, pos=200)
    with pytest.raises(PatternError, match=">= 4 FU stages|3 vector inputs"):
        build_attn_wsum(REDUCED_PARAMS.replace(pcu_stages=3), n_heads=8, n_kv_heads=4,
                        head_dim=8, context=256, pos=3, e=0, sums=64, kv=1 << 16, const=4096,
                        out=128)
    with pytest.raises(PatternError, match=r"missing \['ao'\]"):
        kernel(roles={"PA": "pcu2"} | {r: "x" for r in ("PS", "PR", "PM", "PF", "MV", "ME",
                                                          "MIV", "MIE", "MR", "MW", "ae",
                                                          "av", "ac")})


@pytest.mark.parametrize("shape,pos,v_beats,cb,columns",
                         [((8, 4, 8), 10, 6, 20, False), ((8, 4, 8), 0, 1, 20, False),
                          ((8, 4, 8), 255, 128, 20, False), ((4, 4, 16), 36, 37, 20, False),
                          ((16, 16, 16), 15, 64, 8 + 3 * 16, False),
                          ((16, 16, 16), 99, 400, 8 + 4 * 16, True),
                          ((16, 4, 32), 200, 402, 8 + 4 * 32, True),
                          ((16, 4, 32), 127, 256, 8 + 3 * 32, False)])
def test_kernel_streams(shape, pos, v_beats, cb, columns):
    nh, nkv, hd = shape
    k = kernel(n_heads=nh, n_kv_heads=nkv, head_dim=hd, pos=pos)
    lay = k.info["layout"]
    T = pos + 1
    assert k.info["v_plan"].columns == columns
    assert k.reads == {"e": 64 * T, "kv": 64 * v_beats, "const": 64 * cb}
    out_beats = _up(nh * hd, 64) // 64
    assert k.writes == {"out": 64 * out_beats} and k.outputs == {"out": Ref(64 * 310)}
    assert len(k.unit_ids) == 15 and len(k.to_bytes()) > 0
    # V: layer l's V cache at kv + l * stride + roundup(256 rows, 64 B)
    v = _regs(k, "av")
    voff = _up(256 * lay.kv_row_bytes, 64) // 64
    assert (v[AgcuReg.BASE], v[AgcuReg.ITER_STRIDE]) == ((1 << 20) // 64 + voff, 512)
    assert v[AgcuReg.REGION_BEATS] == v_beats + 4 * 512
    if columns:
        n = lay.row_beats
        assert [v[agcu_count_reg(i)] for i in range(2)] == [T, n]
        assert [v[agcu_stride_reg(i)] for i in range(2)] == [n, 1]
        mv = _regs(k, "MV")
        assert (mv[PmuReg.N_BUF], mv[PmuReg.BUF_SIZE], mv[PmuReg.WR_PASSES],
                mv[PmuReg.RD_PASSES]) == (2 if 2 * T <= 256 else 1, T, n, n)
    else:
        assert (v[agcu_count_reg(0)], v[agcu_count_reg(1)]) == (v_beats, 1)
    c = _regs(k, "ac")
    assert (c[AgcuReg.BASE], c[AgcuReg.ITER_STRIDE], c[agcu_count_reg(0)]) == (8192, 32, cb)
    e = _regs(k, "ae")
    assert (e[AgcuReg.BASE], e[AgcuReg.ITER_STRIDE], e[agcu_count_reg(0)]) == (0, 0, T)
    o = _regs(k, "ao")
    assert (o[AgcuReg.MODE], o[AgcuReg.BASE], o[agcu_count_reg(0)]) == (1, 310, out_beats)
    # nothing reads the sums operand
    assert all(_regs(k, r)[AgcuReg.BASE] != 300 for r in ("ae", "av", "ac", "ao"))
    # the PCUs run T x K and K beats
    K = lay.vectors
    for role, ctr in (("PA", (T, K)), ("PS", (T, K)), ("PR", (K, 1)), ("PF", (K, 1))):
        r = _regs(k, role)
        assert (r[PcuReg.CTR0] + 1, r[PcuReg.CTR1] + 1) == ctr, role


# ---- the configured dataflow, evaluated from the register values --------------------------------

def test_vector_fu_matches_fu_op_eval():
    rng = np.random.default_rng(3)
    vals = np.concatenate([rng.integers(-(1 << 31), 1 << 31, 300),
                           [0, 1, -1, 127, -128, 255, 1 << 30, -(1 << 31), (1 << 31) - 1]])
    shifts = np.concatenate([rng.integers(-70, 70, 100), [0, 8, 16, 24, 31, 32, 63, -8]])
    words = np.concatenate([rng.integers(0, 1 << 22, 200), [15 << 16, 1 | 63 << 16]])
    for op in (FuOp.PASS, FuOp.ADD, FuOp.SUB, FuOp.MUL, FuOp.AND, FuOp.CLZ):
        a = rng.choice(vals, 400)
        b = rng.choice(vals, 400)
        c = rng.choice(vals, 400)
        got = _fu(op, a, b, c, 32)
        want = [fu_op_eval(op, int(x), int(y), int(z)) for x, y, z in zip(a, b, c)]
        assert np.array_equal(got, want), op
    for op in (FuOp.SHL, FuOp.SHLR):
        a = rng.choice(vals, 400)
        b = rng.choice(shifts, 400)
        got = _fu(op, a, b, 0, 32)
        assert np.array_equal(got, [fu_op_eval(op, int(x), int(y)) for x, y in zip(a, b)]), op
    for bits in (8, 16):
        a = rng.integers(-(1 << 31), 1 << 31, 400)
        b = rng.choice(words, 400)
        c = rng.integers(0, 40, 400)
        got = _fu(FuOp.REQUANT, a, b, c, bits)
        want = [fu_op_eval(FuOp.REQUANT, int(x), int(y), int(z), bits) for x, y, z in zip(a, b, c)]
        assert np.array_equal(got, want), bits


@pytest.mark.parametrize("shape,T,out_bits", [
    ((8, 4, 8), 11, 8),          # the default model
    ((8, 4, 8), 1, 8),           # one position
    ((8, 4, 8), 256, 8),         # the whole context
    ((4, 4, 16), 37, 8),         # MHA, head_dim 16 (64-byte rows)
    ((12, 4, 4), 20, 16),        # GQA n_rep 3, head_dim 4 (16-byte rows), 16-bit out
    ((16, 4, 32), 9, 8),         # GQA n_rep 4, head_dim 32 (128-byte rows, one pass)
    ((16, 16, 16), 40, 8),       # MHA 256-byte rows: 160 beats, one pass
    ((16, 16, 16), 100, 8),      # ... 400 beats: V streamed by column, double buffer
    ((3, 1, 6), 5, 8),           # head_dim 6: bytes of a word from two heads, 18 channels
])
def test_emulated_dataflow_is_golden(qm, shape, T, out_bits):
    nh, nkv, hd = shape
    k, hbm, expected, g, oa = make_case(qm, nh=nh, nkv=nkv, hd=hd, T=T, out_bits=out_bits,
                                        seed=T + nh)
    data, addr, inner = emulate(k, hbm)
    assert addr == oa
    assert data == expected, shape
    # the outputs are not trivial (neither all zero nor all saturated)
    top = (1 << (out_bits - 1)) - 1
    assert np.count_nonzero(g) > g.size // 2 and np.count_nonzero(np.abs(g) >= top) < g.size // 2
    # the chip's scalar path: per-channel sums and recip indices as the golden model's
    C = nh * hd
    e = np.frombuffer(hbm[:T * BB], "<i4").reshape(T, 16)[:, :nh].astype(np.int64)
    tot = e.sum(0)[np.arange(C) // hd]
    assert np.array_equal(inner["sums"].reshape(-1)[:C], tot)
    assert np.array_equal(inner["ri"].reshape(-1)[:C], intops.recip_index(tot, 8)[0])


def test_emulated_layers_and_corruption(qm):
    """Launched at iteration 2 with three layers' V caches and blobs at their strides, the
    kernel computes layer 2; a corrupted blob, or another layer, gives another result."""
    k, hbm, expected, g, oa = make_case(qm, nh=8, nkv=4, hd=8, T=30, layers=3, layer=2,
                                        seed=9)
    data, _, _ = emulate(k, hbm, iteration=2)
    assert data == expected
    assert emulate(k, hbm, iteration=1)[0] != expected
    # flip bit 13 of m of the largest unsaturated output's channel in layer 2's blob
    c = int(np.argmax(np.where(np.abs(g) < 100, np.abs(g), 0)))
    assert abs(g[c]) > 20
    cregs = _regs(k, "ac")
    ca = (cregs[AgcuReg.BASE] + 2 * cregs[AgcuReg.ITER_STRIDE]) * BB
    lay = k.info["layout"]
    bad = bytearray(hbm)
    bad[ca + (lay.w_beat * 16 + c) * 4 + 1] ^= 0x20
    assert emulate(k, bytes(bad), iteration=2)[0] != expected
    # the sums operand is not read: junk there changes nothing
    junk = bytearray(hbm)
    sa = _up(30 * BB, 1024)
    junk[sa:sa + BB] = bytes(range(64))
    assert emulate(k, bytes(junk), iteration=2)[0] == expected


@pytest.mark.parametrize("n_tokens,iteration", [(11, 2), (1, 0)])
def test_emulated_real_decode_step(qm, n_tokens, iteration):
    """A real golden decode step of layer 2 (the decoder's own e, V cache and attn_out), with
    every layer's V cache and blob at their strides, launched at iteration 2 (or, for the
    first token, with layer 2's data at iteration 0)."""
    tok = load_model("models/kjv-280k").tokenizer
    ids = ([tok.bos_id] + tok.encode("In the beginning God created the heaven"))[:n_tokens]
    assert len(ids) == n_tokens
    st = step_operands(qm, ids)
    op = st[2]
    c = qm.config
    pairs = [(qm.attn_m[l], qm.attn_s[l]) for l in range(c.n_layers)]
    if iteration == 0:
        layers, rows, pairs = 1, [st["rows"][2]], [pairs[2]]
    else:
        layers, rows = c.n_layers, list(st["rows"])
    k, hbm, expected, g, _ = make_case(qm, nh=c.n_heads, nkv=c.n_kv_heads, hd=c.head_dim,
                                       T=n_tokens, layers=layers, layer=iteration,
                                       e=op["e"], v_caches=rows, pairs=pairs)
    assert np.array_equal(g, op["attn_out"])
    assert np.array_equal(op["e"].sum(0), op["sums"])
    assert emulate(k, hbm, iteration)[0] == expected


def test_emulated_scalar_path(qm):
    """The per-channel chain from its registers, over the whole operand ranges: PR's recip
    index for sums from 1 to 2**31 - 1, PM's ``mh | s << 16`` for every table entry and
    multipliers 0..32767 (rounding included), PF's exponent and final REQUANT."""
    k = kernel(pos=3)
    rng = np.random.default_rng(11)
    # PR: ri = recip_index(sum)[0], lanes of 16, K = 4 beats per program
    vs = {1, 2, 3, 127, 128, 255, 256, (1 << 31) - 1}
    for e_ in range(1, 31):
        vs |= {(1 << e_) - 1, 1 << e_, (1 << e_) + 1, 3 << (e_ - 1)}
    vs = np.array(sorted(vs | {int(v) for v in rng.integers(1, 1 << 31, 500)}), np.int64)
    vs = np.concatenate([vs, np.ones(_up(vs.size, 64) - vs.size, np.int64)])
    regs = _regs(k, "PR")
    for beats in vs.reshape(-1, 4, L):
        got, _ = run_pcu(regs, [list(beats), [], []])
        assert np.array_equal(got, intops.recip_index(beats.reshape(-1), 8)[0])
    # PM: B & 0x7FFF = REQUANT(RECIP[ri], m, 15, 16), B[21:16] = s, for every ri
    regs = _regs(k, "PM")
    table = qm.recip[128:].astype(np.int64) - (1 << 15)
    ms = np.concatenate([[0, 1, 2, 1 << 14, 32767], rng.integers(0, 1 << 15, 59)])
    for m in ms.reshape(-1, 4 * L // 16):
        ri = np.arange(128, 256)
        for part in range(0, 128, 4 * L // 4):
            r_idx = np.repeat(ri[part:part + 16], 4)                  # 64 lanes = 4 beats
            mm = np.tile(m, 16)
            s = rng.integers(0, 64, 64)
            sh = rng.choice([0, 8, 16, 24], 64)
            W = mm | s << 16 | sh << 22
            got, _ = run_pcu(regs, [list(table[r_idx - 128].reshape(4, L)),
                                    list(W.reshape(4, L)), []])
            want = intops.requant(qm.recip[r_idx], mm, 15, 16)
            assert np.array_equal(got & 0x7FFF, want), (m, part)
            assert np.array_equal((got >> 16) & 63, s)
    # PF: o = REQUANT(acc, mh, s + E) with E = ilog2(sum)
    regs = _regs(k, "PF")
    for _ in range(20):
        acc = rng.integers(-(1 << 31), 1 << 31, 64)
        sums = rng.integers(1, 1 << rng.integers(1, 32), 64)
        E = intops.ilog2(sums)
        mh = rng.integers(0, 1 << 15, 64)
        s = rng.integers(0, 64 - 31, 64)
        B = mh | s << 16 | rng.choice([0, 8, 16, 24], 64) << 22
        got, _ = run_pcu(regs, [list(acc.reshape(4, L)), list(B.reshape(4, L)),
                                list(sums.reshape(4, L))])
        assert np.array_equal(got, intops.requant(acc, mh, s + E, 8))

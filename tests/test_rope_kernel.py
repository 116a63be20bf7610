"""RoPE and KV-append kernels (``sw/kernels/rope.py``) without a simulator: the blobs, the
errors, the bitstream/contract fields, and the dataflow of the built kernels replayed in numpy
from their own PMU/PCU/AGCU configurations (address chains, ring buffers, FU ops via
``hdl.fu.fu_op_eval``) against the golden model. The chip runs are in ``tb/test_rope.py``."""

import itertools
import types

import numpy as np
import pytest

from hdl.agcu import AgcuReg
from hdl.fu import FuOp, fu_op_eval
from hdl.params import DEFAULT_PARAMS, RduParams
from hdl.pcu import PcuReg
from hdl.pmu import RdMode
from sw.bitstream import Bitstream
from sw.golden import GoldenDecoder, quantized
from sw.kernels.builder import KernelError
from sw.kernels.kernel import Ref
from sw.kernels.rope import (PatternError, build_kv_append, build_rope, kv_cache_bytes,
                             kv_row_bytes, rope_constants, rope_row_bytes, rope_row_words,
                             rope_table_bytes, rope_tables)

P = DEFAULT_PARAMS
BB = P.beat_bytes
L = P.lanes


# ---- a numpy replay of the configured units -----------------------------------------------------

def chain(counts, strides):
    """Offsets of an affine counter chain, innermost counter first (count 0 counts as 1)."""
    counts = [max(1, c) for c in counts]
    return [sum(i * s for i, s in zip(idx[::-1], strides))
            for idx in itertools.product(*[range(c) for c in reversed(counts)])]


class PmuModel:
    """One PMU program of these kernels (SYNC ring, as many read as write passes, one repeat):
    write pass k then read pass k, buffer k % n_buf. Checks every address against its buffer;
    ``strict``: every word read must have been written in this kernel."""

    def __init__(self, cfg, strict=True):
        self.c, self.strict = cfg, strict
        assert cfg.sync and cfg.wr_passes == cfg.rd_passes and cfg.rd_repeat == 1
        assert cfg.n_buf * cfg.buf_size <= 256 and not cfg.rd_service
        self.mem = {}

    def run(self, items):
        c = self.c
        items = list(items)
        out = []
        per_pass = len(chain(c.wr_counts, c.wr_strides))
        scale = 1 if c.wr_scalar else L
        assert len(items) == per_pass * c.wr_passes * (1 if c.wr_scalar else 1)
        for k in range(c.wr_passes):
            base = (c.buf_base + (k % c.n_buf) * c.buf_size) * L
            for off, item in zip(chain(c.wr_counts, c.wr_strides),
                                 items[k * per_pass:(k + 1) * per_pass]):
                off += c.wr_base
                assert 0 <= off < c.buf_size * L // scale, ("write outside its buffer", off)
                if c.wr_scalar:
                    self.mem[base + off] = int(item)
                else:
                    for i in range(L):
                        self.mem[base + off * L + i] = int(item[i])
            assert c.rd_mode == RdMode.SCALAR
            for off in chain(c.rd_counts, c.rd_strides):
                off += c.rd_base
                assert 0 <= off < c.buf_size * L, ("read outside its buffer", off)
                if self.strict:
                    assert base + off in self.mem, ("read of a word never written", off)
                out.append(self.mem.get(base + off))
        return out


def replay_rope(k, x16, row_words, word):
    """The RoPE kernel's units on ``x16`` (flat int16), table row words and REQUANT word."""
    pm, pc = k.info["pmus"], k.info["pcus"]
    n, bits = k.info["elements"], k.info["out_bits"]
    nv = pc["PA"].regs[PcuReg.CTR0] + 1
    assert nv % 2 == 0 and nv * L >= n
    xw = np.zeros(nv * L, np.int64)
    xw[:n] = x16
    s1 = PmuModel(pm["M1"]).run(xw.reshape(nv, L))
    s2 = PmuModel(pm["M2"]).run(s1)
    row = np.zeros(pm["Mt"].buf_size * L, np.int64)
    row[:len(row_words)] = row_words
    st = PmuModel(pm["Mt"]).run(row.reshape(-1, L))
    assert len(s2) == len(st) == 2 * n
    out = []
    for e in range(n):                 # PB: MUL acc over the 2-beat group, REQUANT
        acc = fu_op_eval(FuOp.MUL, s2[2 * e], st[2 * e])
        acc = fu_op_eval(FuOp.ADD, acc, fu_op_eval(FuOp.MUL, s2[2 * e + 1], st[2 * e + 1]))
        out.append(fu_op_eval(FuOp.REQUANT, acc, word, 0, bits))
    return np.array(out)


def golden_rope(cos, sin, pos, x, m, s, bits):
    fake = types.SimpleNamespace(qm=types.SimpleNamespace(rope_cos=cos, rope_sin=sin), pos=pos)
    return GoldenDecoder.rope(fake, x, m, s, bits)


def rope(hd=8, H=8, pos=0, **kw):
    args = dict(n_heads=H, head_dim=hd, x16=Ref(0), out=Ref(4096), tables=Ref(8192),
                const=Ref(1 << 20, 256), pos=pos)
    args.update(kw)
    return build_rope(P, **args)


# ---- RoPE ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qm():
    from sw.frontend import load_model
    return quantized(load_model("models/kjv-280k"))


def test_rope_tables_layout(qm):
    blob = rope_tables(P, qm)
    hd = qm.config.head_dim
    rb = rope_row_bytes(P, hd)
    assert rb == 64 and len(blob) == qm.config.max_seq_len * rb
    for pos in (0, 1, 100, 255):
        row = np.frombuffer(blob[pos * rb:(pos + 1) * rb], "<i4")
        c, s = qm.rope_cos[pos].astype(np.int64), qm.rope_sin[pos].astype(np.int64)
        h = hd // 2
        assert np.array_equal(row[0:hd:2], c) and np.array_equal(row[1:hd:2], -s)
        assert np.array_equal(row[hd::2][:h], s) and np.array_equal(row[hd + 1::2][:h], c)
        assert not row[2 * hd:].any()
    # rows of hd 32 take 4 beats; hd 10 rounds 80 B up to 2 beats with zeros
    assert rope_row_bytes(P, 32) == 256 and rope_row_bytes(P, 10) == 128
    b = rope_table_bytes(P, np.ones((3, 5), np.int16), np.full((3, 5), 2, np.int16))
    assert len(b) == 3 * 128 and not any(b[80:128])


def test_rope_constants():
    c = rope_constants(P, 20614, 36)
    assert len(c) == BB
    assert set(np.frombuffer(c, "<u4")) == {20614 | 36 << 16}
    with pytest.raises(PatternError, match="rope REQUANT pair"):
        rope_constants(P, 1 << 15, 3)
    with pytest.raises(PatternError, match="integer"):
        rope_constants(P, 1.5, 3)


def test_rope_replay_matches_golden_model(qm):
    """The configured dataflow on the model's q and k at several positions and layers."""
    c = qm.config
    seen = {}

    def trace(name, l, a):
        if name in ("q", "k", "q_rot", "k_rot"):
            seen[(dec.pos, l, name)] = np.array(a)

    dec = GoldenDecoder(qm, trace=trace)
    for t in [1, 40, 7, 300, 12, 99, 5, 3, 250, 8]:
        dec.step(t)
    blob = rope_tables(P, qm)
    rb = rope_row_bytes(P, c.head_dim)
    for pos in (0, 3, 9):
        row = np.frombuffer(blob[pos * rb:(pos + 1) * rb], "<i4")
        for l in range(c.n_layers):
            for t, H, m, s, bits in (("q", c.n_heads, qm.rope_q_m[l], qm.rope_q_s[l],
                                      qm.act_bits["q_rot"]),
                                     ("k", c.n_kv_heads, qm.rope_k_m[l], qm.rope_k_s[l], 8)):
                k = rope(c.head_dim, H, pos, out_bits=bits)
                got = replay_rope(k, seen[(pos, l, t)].ravel(), row, int(m) | int(s) << 16)
                assert np.array_equal(got, seen[(pos, l, t + "_rot")].ravel()), (pos, l, t)


@pytest.mark.parametrize("hd", [2, 4, 6, 8, 10, 12, 16, 22, 30, 32])
def test_rope_replay_random_shapes(hd):
    rng = np.random.default_rng(hd)
    for H in (1, 2, 5, 16):
        pos = int(rng.integers(0, 9))
        cos = rng.integers(-16384, 16385, (9, hd // 2)).astype(np.int16)
        sin = rng.integers(-16384, 16385, (9, hd // 2)).astype(np.int16)
        x = rng.integers(-32768, 32768, (H, hd)).astype(np.int16)
        m, s = int(rng.integers(1 << 14, 1 << 15)), int(rng.integers(34, 38))
        bits = (8, 16, 32)[H % 3]
        s -= {8: 0, 16: 8, 32: 24}[bits]
        k = rope(hd, H, pos, out_bits=bits)
        row = rope_row_words(cos[pos], sin[pos])
        got = replay_rope(k, x.ravel(), row, m | s << 16)
        assert np.array_equal(got, golden_rope(cos, sin, pos, x, m, s, bits).ravel()), (hd, H)


def test_rope_replay_detects_a_wrong_table():
    """The replay is a real check: swapping the sign convention of the table fails it."""
    rng = np.random.default_rng(3)
    cos = rng.integers(-16384, 16385, (2, 4)).astype(np.int16)
    sin = rng.integers(1, 16385, (2, 4)).astype(np.int16)
    x = rng.integers(-32768, 32768, (2, 8)).astype(np.int16)
    k = rope(8, 2, 1)
    wrong = rope_row_words(cos[1], -sin[1])
    got = replay_rope(k, x.ravel(), wrong, 20000 | 36 << 16)
    assert not np.array_equal(got, golden_rope(cos, sin, 1, x, 20000, 36, 8).ravel())


def test_rope_kernel_contract():
    k = rope(8, 8, pos=12, x16=Ref(0), out=Ref(1024), tables=Ref(4096),
             const=Ref(1 << 20, 192), iterations=5)
    assert k.pattern == "rope" and k.params == P
    assert k.reads == {"x16": 128, "tables": 64, "const": 64} and k.writes == {"out": 64}
    assert k.hbm_bytes == 320 and k.outputs == {"out": Ref(1024)}
    assert sorted(k.roles) == ["M1", "M2", "Mt", "PA", "PB", "ac", "ao", "at", "ax"]
    assert len(k.unit_ids) == 9 and k.watchdog > 1000
    bs = Bitstream.from_bytes(k.to_bytes(), P)
    assert bs.metadata["pattern"] == "rope" and len(bs.routes["routes"]) == 8
    regs = {(w.unit, w.reg): w.value for w in bs.writes}
    ids = {u.name: u.id for u in __import__("hdl.unitmap", fromlist=["x"]).unit_map(P)}
    at, ac = ids[k.roles["at"]], ids[k.roles["ac"]]
    assert regs[(at, AgcuReg.BASE)] == 4096 // BB + 12        # row 12 of the tables
    assert regs[(at, AgcuReg.ITER_STRIDE)] == 0
    assert regs[(ac, AgcuReg.BASE)] == (1 << 20) // BB          # layer 0's constants
    assert regs[(ac, AgcuReg.ITER_STRIDE)] == 3                # + 3 beats per layer
    assert regs[(ac, AgcuReg.REGION_BEATS)] == 1 + 4 * 3       # every layer's copy allowed
    assert "rope" in k.describe()


@pytest.mark.parametrize("kw, msg", [
    (dict(head_dim=7), "head_dim must be even"),
    (dict(head_dim=0), "head_dim must be even"),
    (dict(n_heads=0), "n_heads must be >= 1"),
    (dict(pos=-1), "pos must be >= 0"),
    (dict(out_bits=12), "out_bits must be 8, 16 or 32"),
    (dict(iterations=0), "iterations must be >= 1"),
    (dict(pos=2.0), "pos must be an integer"),
    (dict(n_heads=16, head_dim=512), r"8192 elements: x as 32-bit words needs 512 beats, a PMU "
                                     r"holds 256; use fewer heads or a smaller head_dim"),
])
def test_rope_errors(kw, msg):
    with pytest.raises(PatternError, match=msg):
        rope(**kw)


def test_rope_address_errors():
    with pytest.raises(KernelError, match="not a multiple of the 64-byte beat"):
        rope(x16=Ref(32))
    with pytest.raises(KernelError, match="per-iteration stride"):
        rope(const=Ref(0, 100))
    with pytest.raises(KernelError, match=r"outside its region .* or the HBM"):
        rope(out=Ref(P.hbm_bytes - 64), n_heads=16)
    small = RduParams(grid_rows=2, grid_cols=3, n_agcus=2)
    with pytest.raises(PatternError, match="needs 4 AGCUs"):
        build_rope(small, n_heads=1, head_dim=8, x16=0, out=64, tables=128, const=192, pos=0)


# ---- KV append ----------------------------------------------------------------------------

def replay_merge(k, old_beats, k_beat, v_beat):
    """The merge kernel's units: Mo (old K, V beats), Mk (k, v beats), PM's lanes and post."""
    pm, pc = k.info["pmus"], k.info["pcus"]["PM"]
    old = PmuModel(pm["Mo"]).run(old_beats)
    new = PmuModel(pm["Mk"], strict=False).run([k_beat, v_beat])
    regs = pc.regs
    imm = [regs[PcuReg[f"STAGE{s}_IMM"]] for s in range(5)]
    out = []
    for c in range(2):
        for i in range(L):
            j = fu_op_eval(FuOp.SUB, i + imm[0], imm[1])
            f = fu_op_eval(FuOp.SHLR, fu_op_eval(FuOp.CLZ, fu_op_eval(FuOp.SHLR, j, imm[2])),
                           imm[4])
            assert f in (0, 1)
            if f:
                assert new[c * L + i] is not None, "a selected word was never written"
            out.append(fu_op_eval(FuOp.SELECT, new[c * L + i] or 0, old[c * L + i], f))
    return np.array(out, np.int64).astype("<i4").view(np.uint8)


@pytest.mark.parametrize("n_kv, hd", [(4, 8), (1, 4), (1, 8), (2, 8), (1, 16), (2, 6), (3, 4)])
def test_kv_merge_replay(n_kv, hd):
    """Every position of a small cache: the merged beats hold the new row at its place and the
    old bytes everywhere else."""
    rng = np.random.default_rng(n_kv * 100 + hd)
    kv_dim = n_kv * hd
    rb = kv_row_bytes(P, n_kv, hd)
    assert rb < BB and rb >= kv_dim and rb & (rb - 1) == 0
    for pos in range(2 * BB // rb):
        k = build_kv_append(P, n_kv_heads=n_kv, head_dim=hd, context=40, k=0, v=128,
                            kv=Ref(4096, 8192), pos=pos)
        assert k.info["mode"] == "merge"
        old = rng.integers(0, 256, (2, BB), dtype=np.uint8)
        kb = np.zeros(BB, np.uint8)
        kb[:kv_dim] = rng.integers(0, 256, kv_dim)
        vb = np.zeros(BB, np.uint8)
        vb[:kv_dim] = rng.integers(0, 256, kv_dim)
        got = replay_merge(k, [o.view("<i4") for o in old], kb.view("<i4"), vb.view("<i4"))
        o = (pos % (BB // rb)) * rb
        exp = old.copy()
        exp[0, o:o + rb] = kb[:rb]
        exp[1, o:o + rb] = vb[:rb]
        assert np.array_equal(got, exp.ravel()), (pos, n_kv, hd)
        # the programs address the beat holding row pos of K and of V
        cache = kv_cache_bytes(P, n_kv, hd, 40) // BB
        base = 4096 // BB + pos // (BB // rb)
        for prog in (k.info["agcus"]["aw"],):
            assert (prog.base, prog.counts, prog.strides) == (base, (2,), (cache,))
            assert prog.iter_stride == 8192 // BB


def test_kv_rows_mode():
    k = build_kv_append(P, n_kv_heads=3, head_dim=32, context=10, k=0, v=1024,
                        kv=Ref(8192, 1 << 14), pos=4, iterations=3)
    assert k.info["mode"] == "rows" and k.info["row_bytes"] == 128
    rd, wr = k.info["agcus"]["an"], k.info["agcus"]["aw"]
    assert (rd.base, rd.counts, rd.strides) == (0, (2, 2), (1, 1024 // BB))
    assert (wr.base, wr.counts, wr.strides) == (8192 // BB + 8, (2, 2), (1, 20))
    assert wr.iter_stride == (1 << 14) // BB and wr.region == (136, 22 + 2 * 256)
    assert k.reads == {"k": 128, "v": 128} and k.writes == {"kv": 256}
    assert len(k.unit_ids) == 2


def test_kv_layout_matches_compiler_layout(qm):
    """Row pitch and V offset are the compiler's (sw/compiler/layout.py) for the model."""
    from sw.compiler.layout import plan_layout
    c = qm.config
    lay = plan_layout(qm, P)
    assert lay.kv_row_bytes == kv_row_bytes(P, c.n_kv_heads, c.head_dim) == 32
    kc, vc = lay.region("k_cache"), lay.region("v_cache")
    assert vc.offset - kc.offset == kv_cache_bytes(P, c.n_kv_heads, c.head_dim, c.max_seq_len)
    k = build_kv_append(P, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim,
                        context=c.max_seq_len, k=0, v=64,
                        kv=Ref(kc.offset, lay.kv_layer_stride), pos=9,
                        iterations=c.n_layers)
    assert k.reads == {"k": 64, "v": 64, "kv": 128} and k.writes == {"kv": 128}
    assert k.info["word_offset"] == 8 and k.info["rows_per_beat"] == 2
    Bitstream.from_bytes(k.to_bytes(), P)
    # a context whose cache is not whole bursts: the compiler's V offset is passed explicitly
    lay = plan_layout(qm, P, context=100)
    kc, vc = lay.region("k_cache"), lay.region("v_cache")
    assert vc.offset - kc.offset == 3328 != kv_cache_bytes(P, c.n_kv_heads, c.head_dim, 100)
    k = build_kv_append(P, n_kv_heads=c.n_kv_heads, head_dim=c.head_dim, context=100, k=0,
                        v=64, kv=Ref(kc.offset, lay.kv_layer_stride), pos=9,
                        v_offset=vc.offset - kc.offset)
    assert k.info["agcus"]["aw"].strides == (3328 // BB,)


@pytest.mark.parametrize("kw, msg", [
    (dict(pos=256), r"pos 256 outside the cache's context 0..255"),
    (dict(pos=-1), "outside the cache's context"),
    (dict(context=0), "context must be >= 1"),
    (dict(n_kv_heads=0), "n_kv_heads and head_dim must be >= 1"),
    (dict(v=Ref(128, 64)), "same per-iteration stride"),
    (dict(iterations=0), "iterations must be >= 1"),
    (dict(v_offset=4096), "v_offset 4096 would overlap the K cache"),
    (dict(v_offset=8200), "v_offset 8200 is not a multiple of the 64-byte beat"),
])
def test_kv_errors(kw, msg):
    args = dict(n_kv_heads=4, head_dim=8, context=256, k=0, v=128, kv=Ref(4096, 1 << 15),
                pos=0)
    args.update(kw)
    with pytest.raises(PatternError, match=msg):
        build_kv_append(P, **args)


def test_kv_address_errors():
    with pytest.raises(KernelError, match="not a multiple of the 64-byte beat"):
        build_kv_append(P, n_kv_heads=4, head_dim=8, context=16, k=0, v=128, kv=Ref(100),
                        pos=0)
    with pytest.raises(KernelError, match=r"outside its region .* or the HBM"):
        build_kv_append(P, n_kv_heads=4, head_dim=8, context=256, k=0, v=128,
                        kv=Ref(P.hbm_bytes - 4096), pos=200)

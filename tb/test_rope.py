"""RoPE and KV-cache append decode kernels (``sw/kernels/rope.py``) on the Verilator default chip.

RoPE: q and k of a real golden decode of ``models/kjv-280k`` (layer 2) at positions 0, 7 (odd),
12 (even) and 255 (the last of the context), at iteration 0 and, with per-layer strides on every
operand, as layer 3 launched at iteration 3 (the other layers' slots hold other data, so a wrong
offset cannot pass); then random operands and tables for head_dim 4, 8, 16 (and 32, 6) with
1..16 heads. KV append: real k_rot/v8 rows at even and odd positions into a cache of random
bytes (the testbench compares the whole cache region: the other rows sharing the beat, and every
other row, must survive), rows of 8 and 16 bytes (8 and 4 rows per beat) and whole-beat rows,
and a layer-strided launch at iteration 2 checked over all five layers' caches. Each group runs
in one simulation; each also holds one case whose golden bytes were corrupted on purpose, which
must be reported as the only failure (the check really compares). Bit-exact everywhere; the HBM
traffic is checked against the kernel's declared reads and writes.
"""

import json
import types

import numpy as np
import pytest

from hdl.params import DEFAULT_PARAMS
from sw.golden import GoldenDecoder
from sw.kernels.kernel import Ref
from sw.kernels.patterns import HbmImage, HbmRegion, PatternKernel
from sw.kernels.rope import (build_kv_append, build_rope, kv_cache_bytes, kv_row_bytes,
                             rope_constants, rope_row_bytes, rope_table_bytes, rope_tables)
from tb.kernel_checks import Launch, run_checked

pytestmark = pytest.mark.verilator

P = DEFAULT_PARAMS
BB = P.beat_bytes
TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, "
        "and void; and darkness was upon the face of the deep. ")
POSITIONS = (0, 7, 12, 255)
LAYERS = (2, 3)


def _up(v, a=BB):
    return -(-v // a) * a


@pytest.fixture(scope="module")
def steps(model, qm):
    """``{(pos, layer): {q, k, v, q_rot, k_rot}}`` from a golden decode of 256 tokens."""
    tok = model.tokenizer
    ids = ([tok.bos_id] + tok.encode(TEXT * 8))[:qm.config.max_seq_len]
    assert len(ids) == 256
    seen = {}

    def trace(name, l, a):
        if dec.pos in POSITIONS and l in LAYERS and name in ("q", "k", "v", "q_rot", "k_rot"):
            seen.setdefault((dec.pos, l), {})[name] = np.array(a)

    dec = GoldenDecoder(qm, trace=trace)
    for t in ids:
        dec.step(t)
    return seen


def _golden_rope(cos, sin, pos, x, m, s, bits):
    """``GoldenDecoder.rope`` itself, on a decoder whose tables are ``cos``/``sin``."""
    fake = types.SimpleNamespace(qm=types.SimpleNamespace(rope_cos=cos, rope_sin=sin), pos=pos)
    return GoldenDecoder.rope(fake, x, m, s, bits)


def _dt(bits):
    return {8: "<i1", 16: "<i2", 32: "<i4"}[bits]


def rope_case(label, *, x, tables_blob, ms, layer, pos, expected, out_bits=8, strided=False,
              seed=0):
    """A PatternKernel running ``build_rope`` on ``x`` (heads, hd) int16 as layer ``layer``
    (``ms``: the (m, s) of every layer). Not ``strided``: the const Ref is layer ``layer``'s blob,
    launched at iteration 0. ``strided``: one const blob per layer at ``const + l * stride`` and
    x16 and out per layer too (the other layers' slots hold random data), launched at iteration
    ``layer``. Returns ``(label, Launch)``."""
    rng = np.random.default_rng(seed)
    H, hd = x.shape
    n = H * hd
    xbytes, obytes = _up(2 * n), _up(n * out_bits // 8)
    if not strided:
        ms = [ms[layer]]
    nl = len(ms) if strided else 1
    xs = _up(xbytes + 3 * BB) if strided else 0          # per-layer strides (not powers of 2)
    os_ = _up(obytes + 2 * BB) if strided else 0
    cs = 3 * BB
    at = 0
    xa, at = at, at + max(1, nl) * max(xs, xbytes)
    ta, at = _up(at), _up(at) + len(tables_blob)
    ca, at = _up(at), _up(at) + len(ms) * cs
    oa = _up(at)
    it = layer if strided else 0
    k = build_rope(P, n_heads=H, head_dim=hd, x16=Ref(xa, xs), out=Ref(oa, os_),
                   tables=Ref(ta), const=Ref(ca, cs), pos=pos, out_bits=out_bits,
                   iterations=nl if strided else 1)
    xi = bytearray(rng.integers(0, 256, max(1, nl) * max(xs, xbytes), dtype=np.uint8).tobytes())
    xl = np.zeros(xbytes // 2, "<i2")
    xl[:n] = x.ravel()
    xi[it * xs:it * xs + xbytes] = xl.tobytes()
    consts = bytearray(rng.integers(0, 256, len(ms) * cs, dtype=np.uint8).tobytes())
    for l, (m, s) in enumerate(ms):
        consts[l * cs:l * cs + BB] = rope_constants(P, m, s)
    exp = np.zeros(obytes * 8 // out_bits, _dt(out_bits))
    exp[:n] = np.asarray(expected).ravel()
    images = [HbmImage("x16", xa, bytes(xi)), HbmImage("tables", ta, tables_blob),
              HbmImage("const", ca, bytes(consts))]
    pk = PatternKernel("rope", P, k.builder, k.roles, images,
                       HbmRegion("out", oa + it * os_, obytes), exp.tobytes(), out_bits,
                       expected, {"heads": H, "head_dim": hd, "pos": pos}, k.watchdog)
    assert pk.output.nbytes == sum(k.writes.values()), label     # the read-back reads them
    return label, Launch(pk, k, it)


def test_rope_decode_step(tmp_path, qm, steps):
    """q and k of layer 2 at four positions (iteration 0), and q and k of layer 3 at position
    12 launched at iteration 3 with every operand strided per layer."""
    c = qm.config
    blob = rope_tables(P, qm)
    assert len(blob) == c.max_seq_len * rope_row_bytes(P, c.head_dim)
    qms = list(zip(qm.rope_q_m, qm.rope_q_s))
    kms = list(zip(qm.rope_k_m, qm.rope_k_s))
    items = []
    for pos in POSITIONS:
        st = steps[(pos, 2)]
        items.append(rope_case(f"q pos {pos}", x=st["q"], tables_blob=blob, ms=qms, layer=2,
                               pos=pos, expected=st["q_rot"], out_bits=qm.act_bits["q_rot"]))
        items.append(rope_case(f"k pos {pos}", x=st["k"], tables_blob=blob, ms=kms, layer=2,
                               pos=pos, expected=st["k_rot"]))
    st = steps[(12, 3)]
    items.append(rope_case("q layer 3 at iteration 3", x=st["q"], tables_blob=blob, ms=qms,
                           layer=3, pos=12, expected=st["q_rot"], strided=True, seed=5))
    items.append(rope_case("k layer 3 at iteration 3", x=st["k"], tables_blob=blob, ms=kms,
                           layer=3, pos=12, expected=st["k_rot"], strided=True, seed=6))
    # the golden bytes are the decoder's own (its trace), and GoldenDecoder.rope gives them
    dec = GoldenDecoder(qm)
    for pos in POSITIONS:
        dec.pos = pos
        st = steps[(pos, 2)]
        assert np.array_equal(dec.rope(st["q"], *qms[2], qm.act_bits["q_rot"]), st["q_rot"])
    results = run_checked(P, tmp_path, items)
    cyc = {label: r["counters"]["run_busy_cycles"] for (label, _), r in zip(items, results)}
    print("rope cycles per launch:", json.dumps(cyc))
    # fill (HBM latency ~150) + 2 PCU beats per element (q: 64, k: 32 elements) + drain:
    # q ~350, k ~280 cycles today
    assert max(v for lbl, v in cyc.items() if lbl.startswith("q")) < 600, cyc
    assert max(v for lbl, v in cyc.items() if lbl.startswith("k")) < 450, cyc


def test_rope_random(tmp_path):
    rng = np.random.default_rng(41)
    items = []
    shapes = [(4, 3), (8, 16), (16, 5), (4, 1), (32, 2), (6, 7)]
    for i, (hd, H) in enumerate(shapes):
        positions = 40
        cos = rng.integers(-16384, 16385, (positions, hd // 2)).astype(np.int16)
        sin = rng.integers(-16384, 16385, (positions, hd // 2)).astype(np.int16)
        x = rng.integers(-32768, 32768, (H, hd)).astype(np.int16)
        bits = 16 if i == 1 else 8
        # |x*C| ~ 2**29, m ~ 2**14.5: s ~ 36 spreads int8 outputs (a few saturate)
        m, s = int(rng.integers(1 << 14, 1 << 15)), int(rng.integers(35, 38)) - (bits - 8)
        pos = int(rng.integers(0, positions))
        y = _golden_rope(cos, sin, pos, x, m, s, bits)
        assert np.unique(y).size > y.size // 4            # the outputs really spread
        items.append(rope_case(f"random hd {hd} heads {H} pos {pos} out {bits}", x=x,
                               tables_blob=rope_table_bytes(P, cos, sin), ms=[(m, s)],
                               layer=0, pos=pos, expected=y, out_bits=bits, seed=i))
    # the last case's golden bytes are corrupted: it must be the one failure
    items.append(rope_case("corrupted golden", x=x, tables_blob=rope_table_bytes(P, cos, sin),
                           ms=[(m, s)], layer=0, pos=pos, expected=y, seed=9))
    results = run_checked(P, tmp_path, items, corrupt={"corrupted golden": 0})
    cyc = {label: r["counters"]["run_busy_cycles"] for (label, _), r in zip(items, results)}
    print("rope cycles per launch:", json.dumps(cyc))
    # 128 elements (hd 8 x 16 heads): 256 PCU beats after the fill (~480 cycles today)
    assert cyc[items[1][0]] < 650, cyc


# ---- KV append ------------------------------------------------------------------------------

def kv_case(label, *, n_kv, hd, context, k8, v8, pos, layer=0, layers=1, seed=0):
    """An in-place case: ``layers`` per-layer caches of random bytes (K then V at
    ``kv_cache_bytes`` each, layer stride not a power of two), ``k8``/``v8`` appended at row
    ``pos`` of layer ``layer`` (launched at iteration ``layer``); the checked region is every
    layer's caches. Returns ``(label, Launch)``."""
    rng = np.random.default_rng(seed)
    kv_dim = n_kv * hd
    rb = kv_row_bytes(P, n_kv, hd)
    cache = kv_cache_bytes(P, n_kv, hd, context)
    stride = 2 * cache + 2 * BB
    kbytes = _up(kv_dim)
    ka, va = 0, kbytes + BB                                 # k, v activations (a gap between)
    kva = _up(va + kbytes + BB)
    k = build_kv_append(P, n_kv_heads=n_kv, head_dim=hd, context=context, k=Ref(ka),
                        v=Ref(va), kv=Ref(kva, stride), pos=pos, iterations=layers)
    initial = rng.integers(0, 256, layers * stride, dtype=np.uint8)
    exp = initial.copy()
    for base, row in ((layer * stride, k8), (layer * stride + cache, v8)):
        new = np.zeros(rb, np.uint8)
        new[:kv_dim] = np.asarray(row, np.int8).ravel().view(np.uint8)
        exp[base + pos * rb:base + (pos + 1) * rb] = new
    assert not np.array_equal(exp, initial), label          # a no-op kernel must fail
    kimg = np.zeros(kbytes, np.int8)
    kimg[:kv_dim] = np.asarray(k8).ravel()
    vimg = np.zeros(kbytes, np.int8)
    vimg[:kv_dim] = np.asarray(v8).ravel()
    images = [HbmImage("k", ka, kimg.tobytes()), HbmImage("v", va, vimg.tobytes())]
    pk = PatternKernel("kv_append", P, k.builder, k.roles, images,
                       HbmRegion("kv", kva, layers * stride), exp.tobytes(), 8, None,
                       {"n_kv": n_kv, "hd": hd, "pos": pos}, k.watchdog)
    return label, Launch(pk, k, layer, initial.tobytes())


def test_kv_append(tmp_path, qm, steps):
    c = qm.config
    rng = np.random.default_rng(51)
    items = []
    for pos in (12, 7, 255, 0):                 # even, odd, the last row, the first row
        st = steps[(pos, 2)]
        items.append(kv_case(f"kv model pos {pos}", n_kv=c.n_kv_heads, hd=c.head_dim,
                             context=c.max_seq_len, k8=st["k_rot"], v8=st["v"], pos=pos,
                             seed=pos))
    st = steps[(7, 3)]
    items.append(kv_case("kv model layer 3 of 5 at iteration 3, pos 7", n_kv=c.n_kv_heads,
                         hd=c.head_dim, context=c.max_seq_len, k8=st["k_rot"], v8=st["v"],
                         pos=7, layer=3, layers=c.n_layers, seed=3))
    for n_kv, hd, context, pos in ((1, 8, 64, 13), (1, 16, 40, 6), (2, 16, 30, 9),
                                   (3, 12, 20, 19), (1, 4, 50, 47)):
        kv_dim = n_kv * hd
        k8 = rng.integers(-128, 128, kv_dim).astype(np.int8)
        v8 = rng.integers(-128, 128, kv_dim).astype(np.int8)
        items.append(kv_case(f"kv random {n_kv}x{hd} context {context} pos {pos}", n_kv=n_kv,
                             hd=hd, context=context, k8=k8, v8=v8, pos=pos, seed=pos + 100))
    items.append(kv_case("kv corrupted golden", n_kv=c.n_kv_heads, hd=c.head_dim, context=16,
                         k8=st["k_rot"], v8=st["v"], pos=3, seed=77))
    modes = [c.k.info["mode"] for _, c in items]
    assert "merge" in modes and "rows" in modes
    # one byte of a row that must survive
    results = run_checked(P, tmp_path, items, corrupt={"kv corrupted golden": -1})
    cyc = {label: r["counters"]["run_busy_cycles"] for (label, _), r in zip(items, results)}
    print("kv append cycles per launch:", json.dumps(cyc))
    # two HBM round trips (read the beats, write them back) + 32 merge beats: ~230 today
    assert max(cyc.values()) < 400, cyc

"""Attention weighted-sum-of-V decode kernel (``sw/kernels/attn_wsum.py``) on the default chip
(Verilator), bit-exact with ``GoldenDecoder.attn_wsum``.

``test_attn_wsum_decode_step``: a real golden decode step of ``models/kjv-280k`` (8 heads, 4 KV
heads, head_dim 8): after an 11-token prompt, the softmax numerators e (and sums) and the V
cache of layer 2, launched at iteration 2 with all five layers' V caches and constants blobs
at their layer strides (another layer's data gives another result), the same for layer 4 at
iteration 4, and the first token (pos 0, T = 1) with layer 2's data at iteration 0. Each
case's golden output is the decoder's own ``attn_out``.

``test_attn_wsum_random``: random e (as the softmax makes them: EXP-table values, each head's
maximum once at least) and V: the model's shape at T = 1, 64, 200 and 256 (the whole context),
MHA (4 heads of 16, T = 37), GQA (12 heads on 4 KV heads of 4, T = 64, 16-bit output; 16 heads
on 4 KV heads of 32, T = 9), MHA 16 heads of 16 at T = 100 (256-byte rows: V streamed by
64-byte column through a double buffer), head_dim 6 (V bytes of a PMU word from two heads),
and one case with a corrupted golden image, which must be reported (and only it).

Every case: the whole padded output region is checked (filled with the complement of the
expected bytes before the run); the K caches, the V rows past T, the gaps between the layers'
blobs and the ``sums`` beat hold junk the kernel must not use (sums is not read); HBM traffic
is exactly e, the V rows, the blob read once and the output written once.
"""

import numpy as np
import pytest

from hdl.params import DEFAULT_PARAMS
from sw.kernels.attn_wsum import wsum_blob, wsum_layout
from sw.kernels.patterns import HbmImage, HbmRegion, PatternKernel
from tb.attn_wsum_case import (golden_wsum, random_e, random_pairs, step_operands, v_cache,
                               wsum_hbm)
from tb.kernel_checks import Launch, run_checked

pytestmark = pytest.mark.verilator

P = DEFAULT_PARAMS
BB = P.beat_bytes
PROMPT = "In the beginning God created the heaven"


def wsum_case(qm, *, nh, nkv, hd, T, rng, context=256, layers=1, layer=0, out_bits=8,
              e=None, v_rows=None, pairs=None):
    """A runnable case around ``build_attn_wsum``: e at byte 0, the sums beat (junk: it is not
    read), the output, one constants blob per layer at a stride (junk between), then per layer
    a KV block at a stride: junk K cache, V cache (``v_rows[l]`` for rows < T, junk after).
    Launched at iteration ``layer``."""
    lay = wsum_layout(P, nh, nkv, hd, qm.recip_bits)
    kvd = lay.kv_dim
    e = random_e(qm, rng, T, nh) if e is None else np.asarray(e, np.int64)
    if pairs is None:
        pairs = random_pairs(rng, nh * hd, layers)
    blobs = [wsum_blob(P, n_heads=nh, n_kv_heads=nkv, head_dim=hd, m=m, s=s, recip=qm.recip,
                       recip_bits=qm.recip_bits) for m, s in pairs]
    hbm = wsum_hbm(P, lay, T=T, context=context, layers=layers, blob_bytes=len(blobs[0]),
                   out_bits=out_bits)
    ew = np.zeros((T, P.lanes), "<i4")
    ew[:, :nh] = e
    images = [HbmImage("e", hbm.e, ew.tobytes()),
              HbmImage("sums (junk)", hbm.sums,
                       rng.integers(0, 256, BB).astype(np.uint8).tobytes())]
    for l, b in enumerate(blobs):
        junk = rng.integers(0, 256, 3 * BB).astype(np.uint8).tobytes()
        images.append(HbmImage(f"const{l}", hbm.const + l * hbm.const_stride, b + junk))
    Vs = []
    for l in range(layers):
        rows = v_cache(rng, lay, context, T, None if v_rows is None else v_rows[l])
        Vs.append(rows)
        k_junk = rng.integers(0, 256, hbm.v_offset).astype(np.uint8).tobytes()
        images.append(HbmImage(f"kv{l}", hbm.kv + l * hbm.kv_stride, k_junk + rows.tobytes()))
    m, s = pairs[layer]
    g = golden_wsum(qm, e, Vs[layer][:T, :kvd].reshape(T, nkv, hd), m, s, nh // nkv, out_bits)
    k = hbm.build(P)
    pk = PatternKernel("attn_wsum", P, k.builder, k.roles, images,
                       HbmRegion("out", hbm.out, hbm.out_beats * BB), hbm.expected(P, g),
                       out_bits, g, {"shape": (nh, nkv, hd), "T": T, "layer": layer}, k.watchdog)
    return Launch(pk, k, layer)


def _describe(label, c):
    k = c.k
    return f", T {k.info['T']}, {k.info['layout'].vectors} vectors, HBM {k.hbm_bytes} B"


def test_attn_wsum_decode_step(tmp_path, model, qm):
    tok = model.tokenizer
    ids = ([tok.bos_id] + tok.encode(PROMPT))[:11]         # an 11-token prompt
    assert len(ids) == 11, ids
    c = qm.config
    step = step_operands(qm, ids)
    first = step_operands(qm, ids[:1])
    pairs = [(qm.attn_m[l], qm.attn_s[l]) for l in range(c.n_layers)]
    rng = np.random.default_rng(51)
    shape = dict(nh=c.n_heads, nkv=c.n_kv_heads, hd=c.head_dim, context=c.max_seq_len)
    cases = [
        ("decode step T=11 layer 2, iteration 2",
         wsum_case(qm, **shape, T=11, rng=rng, layers=c.n_layers, layer=2, e=step[2]["e"],
                   v_rows=step["rows"], pairs=pairs), step[2]),
        ("decode step T=11 layer 4, iteration 4",
         wsum_case(qm, **shape, T=11, rng=rng, layers=c.n_layers, layer=4, e=step[4]["e"],
                   v_rows=step["rows"], pairs=pairs), step[4]),
        ("first token (pos 0) layer 2, iteration 0",
         wsum_case(qm, **shape, T=1, rng=rng, e=first[2]["e"], v_rows=first["rows"][2:3],
                   pairs=pairs[2:3]), first[2]),
    ]
    for label, case, op in cases:               # the decoder's own attention outputs
        assert np.array_equal(case.pk.golden, op["attn_out"]), label
        assert np.array_equal(op["e"].sum(0), op["sums"]), label
    # the layers differ (V cache and pairs): a kernel reading another layer's data would fail
    assert not np.array_equal(step["rows"][2], step["rows"][4])
    assert not np.array_equal(qm.attn_m[2], qm.attn_m[4])
    results = run_checked(P, tmp_path, [(label, case) for label, case, _ in cases],
                          describe=_describe)
    cyc = results[0]["counters"]["run_busy_cycles"]
    # ~150 cycles of HBM latency, T x K = 44 MAC beats, then the per-channel chain
    assert cyc < 700, cyc


def test_attn_wsum_random(tmp_path, qm):
    rng = np.random.default_rng(52)
    cases = [
        ("model shape T=1", wsum_case(qm, nh=8, nkv=4, hd=8, T=1, rng=rng)),
        ("model shape T=64", wsum_case(qm, nh=8, nkv=4, hd=8, T=64, rng=rng)),
        ("model shape T=200, 5 layers at iteration 3",
         wsum_case(qm, nh=8, nkv=4, hd=8, T=200, rng=rng, layers=5, layer=3)),
        ("model shape T=256 (whole context)", wsum_case(qm, nh=8, nkv=4, hd=8, T=256, rng=rng)),
        ("MHA 4x16 T=37", wsum_case(qm, nh=4, nkv=4, hd=16, T=37, rng=rng)),
        ("GQA 12/4x4 T=64 16-bit out",
         wsum_case(qm, nh=12, nkv=4, hd=4, T=64, rng=rng, out_bits=16)),
        ("GQA 16/4x32 T=9", wsum_case(qm, nh=16, nkv=4, hd=32, T=9, rng=rng)),
        ("MHA 16x16 T=100 (V by column)", wsum_case(qm, nh=16, nkv=16, hd=16, T=100, rng=rng)),
        ("head_dim 6, 3 heads, T=5, corrupted golden",
         wsum_case(qm, nh=3, nkv=1, hd=6, T=5, rng=rng)),
    ]
    assert cases[7][1].k.info["v_plan"].columns and cases[7][1].k.info["v_plan"].n_buf == 2
    for label, c in cases:                       # outputs neither trivial nor all saturated
        g = c.pk.golden
        top = (1 << (c.pk.elem_bits - 1)) - 1
        assert np.count_nonzero(g) > g.size // 2, label
        assert np.count_nonzero(np.abs(g) >= top) < g.size // 2, label
    results = run_checked(P, tmp_path, cases, describe=_describe,
                          corrupt={"head_dim 6, 3 heads, T=5, corrupted golden": 3})
    # The MAC PCU takes one (position, 16-channel vector) beat per cycle, T * K, after the e
    # rows are in (T beats at one per cycle, behind the HBM latency): ~280 + 5 T on the
    # model's shape. The loads of e, V and the blob run at once; where their HBM bank walks
    # collide, each row miss costs the in-order channel ~24 cycles (T = 256 here: ~20 misses
    # per channel, 1,884 cycles; 1,557 with the KV block 64 KiB further).
    for i in range(len(cases)):
        c = results[i]["counters"]
        k = cases[i][1].k
        T, K = k.info["T"], k.info["layout"].vectors
        misses = max(c[f"ch{j}_row_misses"] for j in range(P.hbm_channels))
        refresh = max(c[f"ch{j}_refresh_cycles"] for j in range(P.hbm_channels))
        bound = 350 + (K + 1) * T + 30 * misses + refresh
        assert c["run_busy_cycles"] < bound, (cases[i][0], c["run_busy_cycles"], bound, c)

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

import dataclasses

import numpy as np
import pytest

from hdl.params import DEFAULT_PARAMS
from sw.frontend import load_model
from sw.golden import GoldenDecoder, quantized
from sw.kernels.attn_wsum import build_attn_wsum, wsum_blob, wsum_layout
from sw.kernels.kernel import Ref
from sw.kernels.patterns import HbmImage, HbmRegion, PatternKernel, run_cases, write_case

pytestmark = pytest.mark.verilator

P = DEFAULT_PARAMS
BB = P.beat_bytes
MODEL = "models/kjv-280k"
PROMPT = "In the beginning God created the heaven"


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)


@pytest.fixture(scope="module")
def qm(model):
    return quantized(model)


def _up(v, a):
    return -(-v // a) * a


def golden(qm, e, V, m, s, n_rep, out_bits=8):
    """``GoldenDecoder.attn_wsum`` for e (T, n_heads), V (T, n_kv, hd), per-channel m, s."""
    q = dataclasses.replace(qm, act_bits={**qm.act_bits, "attn_out": out_bits})
    dec = GoldenDecoder(q)
    nh, hd = e.shape[1], V.shape[2]
    E = np.asarray(e, np.int64).T
    Vh = np.asarray(V)[:, np.arange(nh) // n_rep, :].transpose(1, 0, 2)
    return dec.attn_wsum(E, E.sum(1), Vh, np.reshape(m, (nh, hd)),
                         np.reshape(s, (nh, hd))).reshape(-1)


def step_operands(qm, ids):
    """Per layer: e (T, n_heads) and sums of the softmax, and attn_out, at the last token of
    ``ids``; and the V cache rows (layers, T, kv_dim). All the golden decoder's own values."""
    seen = {}

    def trace(name, l, arr):
        seen.setdefault((name, l), []).append(np.array(arr))

    dec = GoldenDecoder(qm, trace=trace)
    for t in ids:
        seen.clear()
        dec.step(t)
    c = qm.config
    T = dec.pos
    kv_of = np.arange(c.n_heads) // c.n_rep
    out = {"rows": dec.v_cache[:, :, :T].transpose(0, 2, 1, 3).reshape(c.n_layers, T, -1)}
    for l in range(c.n_layers):
        sc = dec.attn_scores(seen[("q_rot", l)][0], dec.k_cache[l, kv_of, :T])
        e, tot = dec.softmax_num(sc, qm.exp_m[l], qm.exp_s[l])
        out[l] = {"e": e.T, "sums": tot, "attn_out": seen[("attn_out", l)][0].reshape(-1)}
    return out


def wsum_case(qm, *, nh, nkv, hd, T, rng, context=256, layers=1, layer=0, out_bits=8,
              e=None, v_rows=None, pairs=None):
    """A runnable case around ``build_attn_wsum``: e at byte 0, the sums beat (junk: it is not
    read), the output, one constants blob per layer at a stride (junk between), then per layer
    a KV block at a stride: junk K cache, V cache (``v_rows[l]`` for rows < T, junk after).
    Launched at iteration ``layer``. Returns ``(PatternKernel, DecodeKernel, iteration)``."""
    lay = wsum_layout(P, nh, nkv, hd, qm.recip_bits)
    C = nh * hd
    kvr, kvd = lay.kv_row_bytes, lay.kv_dim
    if e is None:                           # EXP values, each head's maximum at least once
        idx = rng.integers(0, qm.exp.size, (T, nh))
        idx[rng.integers(0, T, nh), np.arange(nh)] = 0
        e = qm.exp[idx]
    e = np.asarray(e, np.int64)
    if pairs is None:                       # o ~ (e-weighted mean of V) * m / 2**s
        pairs = [(rng.integers(1 << 14, 1 << 15, C), rng.integers(14, 17, C))
                 for _ in range(layers)]
    blobs = [wsum_blob(P, n_heads=nh, n_kv_heads=nkv, head_dim=hd, m=m, s=s, recip=qm.recip,
                       recip_bits=qm.recip_bits) for m, s in pairs]
    ea = 0
    sa = _up(T * BB, 1024)
    oa = sa + 1024
    out_beats = _up(C * out_bits // 8, BB) // BB
    ca = _up(oa + out_beats * BB, 1024)
    cstride = len(blobs[0]) + 3 * BB if layers > 1 else 0
    voff = lay.v_offset(P, context)
    kva = _up(ca + layers * (len(blobs[0]) + 3 * BB), 4096)
    kvstride = _up(voff + context * kvr, 1024) + 2 * BB if layers > 1 else 0
    ew = np.zeros((T, P.lanes), "<i4")
    ew[:, :nh] = e
    images = [HbmImage("e", ea, ew.tobytes()),
              HbmImage("sums (junk)", sa, rng.integers(0, 256, BB).astype(np.uint8).tobytes())]
    for l, b in enumerate(blobs):
        junk = rng.integers(0, 256, 3 * BB).astype(np.uint8).tobytes()
        images.append(HbmImage(f"const{l}", ca + l * cstride, b + junk))
    Vs = []
    for l in range(layers):
        rows = rng.integers(-128, 128, (context, kvr)).astype(np.int8)    # junk past T
        if v_rows is not None:
            rows[:T, :kvd] = v_rows[l][:T]
        Vs.append(rows)
        k_junk = rng.integers(0, 256, voff).astype(np.uint8).tobytes()
        images.append(HbmImage(f"kv{l}", kva + l * kvstride, k_junk + rows.tobytes()))
    m, s = pairs[layer]
    g = golden(qm, e, Vs[layer][:T, :kvd].reshape(T, nkv, hd), m, s, nh // nkv, out_bits)
    dt = {8: "<i1", 16: "<i2"}[out_bits]
    expected = np.zeros(out_beats * BB // (out_bits // 8), dt)
    expected[:C] = g
    k = build_attn_wsum(P, n_heads=nh, n_kv_heads=nkv, head_dim=hd, context=context,
                        pos=T - 1, e=Ref(ea), sums=Ref(sa), kv=Ref(kva, kvstride),
                        const=Ref(ca, cstride), out=Ref(oa), out_bits=out_bits,
                        iterations=layers)
    pk = PatternKernel("attn_wsum", P, k.builder, k.roles, images,
                       HbmRegion("out", oa, out_beats * BB), expected.tobytes(), out_bits, g,
                       {"shape": (nh, nkv, hd), "T": T, "layer": layer}, k.watchdog)
    return pk, k, layer


def _run(tmp_path, cases, corrupt=None):
    """Run ``(label, (PatternKernel, DecodeKernel, iteration))`` in one simulation. Checks
    every case bit-exact (but ``corrupt``: a label whose golden image gets one element
    flipped, which must be the only failure) and its HBM traffic; returns the results."""
    written = []
    for i, (label, (pk, _, it)) in enumerate(cases):
        c = write_case(pk, tmp_path / f"case{i}", name=label, iteration=it)
        if label == corrupt:
            exp = bytearray(open(c["expected"], "rb").read())
            exp[3 * pk.elem_bits // 8] ^= 0x01
            open(c["expected"], "wb").write(bytes(exp))
        written.append(c)
    results, _, err = run_cases(P, written, tmp_path)
    if corrupt is None:
        assert err is None, err
    else:
        assert err is not None and f"{corrupt}: 1/" in str(err), err
        assert not [l for l, _ in cases if l != corrupt and l in str(err)], err
    for (label, (pk, k, _)), res in zip(cases, results):
        if label == corrupt:
            assert not res["bit_exact"] and res["mismatches"] == 1, (label, res)
            assert res["first_mismatch"]["index"] == 3, (label, res)
            continue
        assert res["bit_exact"], (label, res["first_mismatch"])
        c = res["counters_after_readback"]       # the read-back reads the output once more
        rd = sum(c[f"ch{j}_rd_beats"] for j in range(P.hbm_channels)) * BB
        wr = sum(c[f"ch{j}_wr_beats"] for j in range(P.hbm_channels)) * BB
        out = pk.output.nbytes
        assert (rd - out, wr) == (sum(k.reads.values()), sum(k.writes.values())), (label, c)
    for (label, (pk, k, _)), res in zip(cases, results):
        print(f"{label}: {res['counters']['run_busy_cycles']} cycles, T {k.info['T']}, "
              f"{k.info['layout'].vectors} vectors, HBM {k.hbm_bytes} B")
    return results


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
    for label, (pk, _, _), op in cases:         # the decoder's own attention outputs
        assert np.array_equal(pk.golden, op["attn_out"]), label
        assert np.array_equal(op["e"].sum(0), op["sums"]), label
    # the layers differ (V cache and pairs): a kernel reading another layer's data would fail
    assert not np.array_equal(step["rows"][2], step["rows"][4])
    assert not np.array_equal(qm.attn_m[2], qm.attn_m[4])
    results = _run(tmp_path, [(label, c) for label, c, _ in cases])
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
    assert cases[7][1][1].info["v_plan"].columns and cases[7][1][1].info["v_plan"].n_buf == 2
    for label, (pk, _, _) in cases:              # outputs neither trivial nor all saturated
        g = pk.golden
        top = (1 << (pk.elem_bits - 1)) - 1
        assert np.count_nonzero(g) > g.size // 2, label
        assert np.count_nonzero(np.abs(g) >= top) < g.size // 2, label
    results = _run(tmp_path, cases, corrupt="head_dim 6, 3 heads, T=5, corrupted golden")
    # The MAC PCU takes one (position, 16-channel vector) beat per cycle, T * K, after the e
    # rows are in (T beats at one per cycle, behind the HBM latency): ~280 + 5 T on the
    # model's shape. The loads of e, V and the blob run at once; where their HBM bank walks
    # collide, each row miss costs the in-order channel ~24 cycles (T = 256 here: ~20 misses
    # per channel, 1,884 cycles; 1,557 with the KV block 64 KiB further).
    for i in range(len(cases)):
        c = results[i]["counters"]
        k = cases[i][1][1]
        T, K = k.info["T"], k.info["layout"].vectors
        misses = max(c[f"ch{j}_row_misses"] for j in range(P.hbm_channels))
        refresh = max(c[f"ch{j}_refresh_cycles"] for j in range(P.hbm_channels))
        bound = 350 + (K + 1) * T + 30 * misses + refresh
        assert c["run_busy_cycles"] < bound, (cases[i][0], c["run_busy_cycles"], bound, c)

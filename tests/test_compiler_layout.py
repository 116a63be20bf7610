"""HBM layout (sw/compiler/layout.py): placement, alignment, strides, round trips, fit."""

import dataclasses

import numpy as np
import pytest

from hdl.params import DEFAULT_PARAMS, RduParams
from hdl.pcu import PcuConfig
from sw import golden, quant
from sw.compiler.graph import build_graph, run_graph
from sw.compiler.layout import HbmLayout, LayoutError, plan_layout, requant_words
from sw.frontend import load_model
from sw.golden import GoldenDecoder
from sw.kernels.gemv import build_gemv
from sw.model import LlamaConfig, random_model

from compiler_shapes import DEFAULT_MODEL, RANDOM_CONFIGS

GEMVS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


@pytest.fixture(scope="module")
def default_qm():
    return golden.quantized(load_model(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def default_layout(default_qm):
    return plan_layout(default_qm, DEFAULT_PARAMS)


@pytest.fixture(scope="module")
def default_image(default_layout, default_qm):
    return default_layout.pack(default_qm)


@pytest.fixture(scope="module", params=sorted(RANDOM_CONFIGS))
def random_qm(request):
    return quant.quantize(random_model(RANDOM_CONFIGS[request.param], seed=7))


def assert_round_trip(lay, qm, image):
    """Every array the graph binds reads back equal (value and dtype) from ``image``."""
    back = lay.unpack_params(image)
    arrays = {f.name for f in dataclasses.fields(qm) if isinstance(getattr(qm, f.name), np.ndarray)}
    assert set(back) == arrays
    for name, arr in back.items():
        want = getattr(qm, name)
        assert arr.dtype == want.dtype, name
        assert np.array_equal(arr, want), name


# ---- the default model ------------------------------------------------------------------------

def test_default_model_fits_default_params(default_layout):
    lay = default_layout
    assert lay.total_bytes <= DEFAULT_PARAMS.hbm_bytes
    assert lay.context == 256
    assert lay.layer_stride == 54_784 and lay.kv_layer_stride == 16_384
    assert lay.kv_row_bytes == 32
    assert lay.total_bytes == 466_432


def test_default_model_figures(default_layout, default_qm):
    lay, c = default_layout, default_qm.config
    # every int8 weight + every requant word + one int16 embedding row + tables
    assert lay.weight_bytes_per_token >= default_qm.weight_bytes()
    assert lay.weight_bytes_per_token == 308_160
    # KV: per layer, K and V: beats of rows 0..pos read + the beat of row pos written
    assert lay.kv_bytes_per_token(0) == 2 * c.n_layers * (64 + 64) == 1_280
    assert lay.kv_bytes_per_token(255) == 2 * c.n_layers * (256 * 32 + 64) == 82_560
    assert lay.io_bytes_per_token == 64 + 64 + 4 * c.vocab_size
    with pytest.raises(ValueError, match="context"):
        lay.kv_bytes_per_token(256)
    # the layout moves at least the graph's logical reads (it adds beat padding)
    g = build_graph(default_qm)
    for pos in (0, 17, 255):
        physical_reads = (lay.weight_bytes_per_token + lay.kv_bytes_per_token(pos)
                          + lay.region("token").nbytes)
        assert g.hbm_read_bytes(pos) <= physical_reads <= 1.05 * g.hbm_read_bytes(pos) + 4096


def test_report(default_layout):
    text = default_layout.report()
    for word in ("region", "offset", "stride", "total", "% HBM", "token", "logits", "emb", "wq",
                 "w_down_rq", "silu", "lm_head", "k_cache", "v_cache", "free", "per token"):
        assert word in text, word
    assert "54,784" in text                        # the layer stride
    assert "466,432" in text and "22.2" in text    # total used, % of 2 MiB
    assert "82,560 B at pos 255" in text


# ---- placement --------------------------------------------------------------------------------

def check_placement(lay: HbmLayout, p: RduParams):
    burst = p.beat_bytes * p.hbm_burst_beats
    period = burst * p.hbm_channels
    ext = lay.extents()
    for label, a, b in ext:
        assert a % burst == 0 and (b - a) % burst == 0, f"{label} not burst-aligned"
        assert 0 <= a < b <= lay.total_bytes <= p.hbm_bytes
    for (l1, _, e1), (l2, s2, _) in zip(ext, ext[1:]):
        assert e1 <= s2, f"{l1} overlaps {l2}"
    for r in lay.regions:
        assert r.nbytes % p.beat_bytes == 0 and r.nbytes <= r.span
        if r.group in ("layer", "kv"):
            stride = lay.layer_stride if r.group == "layer" else lay.kv_layer_stride
            base = lay.layers_base if r.group == "layer" else lay.kv_base
            assert r.count == lay.config.n_layers and r.stride == stride
            for l in range(r.count):
                a = lay.address(r.name, l)
                assert a == base + l * stride + r.block_offset     # same offset in every block
                assert base + l * stride <= a and a + r.span <= base + (l + 1) * stride
    for base, stride in ((lay.layers_base, lay.layer_stride), (lay.kv_base, lay.kv_layer_stride)):
        assert base % period == 0 and stride % period == 0 and stride > 0


def test_placement_default(default_layout):
    check_placement(default_layout, DEFAULT_PARAMS)
    # the placement checker itself catches an overlap
    bad = default_layout.regions[5]
    default_layout.regions[5] = dataclasses.replace(bad, offset=bad.offset - 256)
    try:
        with pytest.raises(AssertionError, match="overlaps"):
            check_placement(default_layout, DEFAULT_PARAMS)
    finally:
        default_layout.regions[5] = bad


def test_placement_random(random_qm):
    for p in (DEFAULT_PARAMS, DEFAULT_PARAMS.replace(hbm_burst_beats=8, hbm_channels=4)):
        check_placement(plan_layout(random_qm, p), p)


def test_layer_block_holds_everything_per_layer(default_layout, default_qm):
    names = [r.name for r in default_layout.regions if r.group == "layer"]
    g = build_graph(default_qm)
    assert names == [p.name for p in g.layer_params(0)]
    for stem in GEMVS:
        assert stem in names and stem + "_rq" in names
    for table in ("norm1_rq", "norm2_rq", "rope_q_rq", "rope_k_rq", "exp_rq", "attn_rq",
                  "silu", "mid_rq"):
        assert table in names


# ---- round trips ------------------------------------------------------------------------------

def test_round_trip_default(default_layout, default_qm, default_image):
    lay, img = default_layout, default_image
    assert len(img) == lay.total_bytes
    assert_round_trip(lay, default_qm, img)
    # the round trip detects a single corrupted byte inside layer 3's wq
    bad = bytearray(img)
    bad[lay.address("wq", 3) + 100] ^= 0x40
    with pytest.raises(AssertionError, match="wq"):
        assert_round_trip(lay, default_qm, bytes(bad))
    # the KV cache and the I/O area start zero
    k, v = lay.read_kv(img)
    assert not k.any() and not v.any()
    assert not any(img[:lay.io_bytes])


def test_round_trip_random(random_qm):
    lay = plan_layout(random_qm)
    img = lay.pack(random_qm)
    assert_round_trip(lay, random_qm, img)


def test_unpacked_model_decodes_identically(default_layout, default_qm, default_image):
    """A QuantModel rebuilt from the HBM image decodes bit-exactly (golden and graph)."""
    qm2 = dataclasses.replace(default_qm, **default_layout.unpack_params(default_image))
    g = build_graph(qm2)
    a, b, c = GoldenDecoder(default_qm), GoldenDecoder(qm2), GoldenDecoder(default_qm)
    for t in (256, 65, 32, 100):
        want = a.step(t)
        assert np.array_equal(b.step(t), want)
        assert np.array_equal(run_graph(g, qm2, c, t), want)


def test_gemv_weights_are_what_the_gemv_kernel_reads(default_layout, default_qm, default_image):
    """Row-major, as GemvKernel.w_image; per-row words as PcuConfig.requant_word."""
    lay, img = default_layout, default_image
    for stem in GEMVS:
        for l in (0, default_qm.config.n_layers - 1):
            w = getattr(default_qm, stem)[l]
            rows, cols = w.shape
            for pcus in (1, 2) if cols >= 2 * DEFAULT_PARAMS.beat_bytes else (1,):
                k = build_gemv(DEFAULT_PARAMS, rows, cols, pcus=pcus, m=1, s=0)
                assert k.w_layout == "row-major"
                a = lay.address(stem, l)
                assert img[a:a + rows * cols] == k.w_image(w), (stem, l, pcus)
            a = lay.address(stem + "_rq", l)
            m, s = getattr(default_qm, stem + "_m")[l], getattr(default_qm, stem + "_s")[l]
            words = np.frombuffer(img[a:a + 4 * rows], "<u4")
            assert words.tolist() == [PcuConfig.requant_word(int(x), int(y)) for x, y in zip(m, s)]


def test_rows_padded_to_beats():
    """dim 32 (half a beat): every weight row and embedding row owns one beat, pad zero."""
    qm = quant.quantize(random_model(RANDOM_CONFIGS["mha-d32-l1-tied"], seed=1))
    lay = plan_layout(qm)
    img = lay.pack(qm)
    r = lay.region("wq")
    assert r.row_bytes == 64 and r.nbytes == 32 * 64
    a = lay.address("wq", 0)
    rows = np.frombuffer(img[a:a + r.nbytes], np.int8).reshape(32, 64)
    assert np.array_equal(rows[:, :32], qm.wq[0]) and not rows[:, 32:].any()
    assert lay.region("emb").row_bytes == 64           # 32 int16 = one beat
    assert lay.kv_row_bytes == 32                      # kv_dim 32: half a beat, never straddles


def test_requant_words():
    m = np.array([0, 1, 32767, 12345])
    s = np.array([0, 63, 5, 40])
    w = requant_words(m, s)
    assert w.tolist() == [PcuConfig.requant_word(int(a), int(b)) for a, b in zip(m, s)]
    with pytest.raises(ValueError):
        requant_words([1 << 15], [0])


def test_kv_cache_round_trip_and_physical_order(default_layout, default_qm):
    lay, c = default_layout, default_qm.config
    dec = GoldenDecoder(default_qm)
    for t in (1, 2, 3, 4, 5):
        dec.step(t)
    img = bytearray(lay.pack(default_qm))
    lay.write_kv(img, dec.k_cache, dec.v_cache)
    k, v = lay.read_kv(img)
    assert np.array_equal(k, dec.k_cache) and np.array_equal(v, dec.v_cache)
    # position-major: row t of layer l holds [kv_head][d] of position t
    l, t, h, d = 3, 4, 2, 5
    a = lay.address("v_cache", l) + t * lay.kv_row_bytes + h * c.head_dim + d
    assert np.int8(img[a] - 256 if img[a] > 127 else img[a]) == dec.v_cache[l, h, t, d]
    # writing the cache leaves every parameter alone
    assert_round_trip(lay, default_qm, img)


def test_io_round_trip(default_layout):
    lay = default_layout
    img = bytearray(lay.total_bytes)
    logits = np.arange(-256, 256, dtype=np.int32) * 4099
    lay.write_io(img, "logits", logits)
    lay.write_io(img, "token", 311)
    lay.write_io(img, "next_token", 7)
    assert np.array_equal(lay.read_io(img, "logits"), logits)
    assert int(lay.read_io(img, "token")) == 311 and int(lay.read_io(img, "next_token")) == 7
    with pytest.raises(ValueError, match="shape"):
        lay.write_io(img, "logits", logits[:10])


def test_pack_refuses_another_model(default_layout):
    other = quant.quantize(random_model(RANDOM_CONFIGS["mha-d32-l1-tied"], seed=2))
    with pytest.raises(LayoutError, match="planned for"):
        default_layout.pack(other)


# ---- fit ----------------------------------------------------------------------------------------

def test_layout_error_when_the_model_does_not_fit(default_qm):
    small = DEFAULT_PARAMS.replace(hbm_bytes=256 * 1024)
    with pytest.raises(LayoutError) as e:
        plan_layout(default_qm, small)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    for part in ("kjv-280k needs 455.5 KiB of HBM", "KV cache 80.0 KiB at context 256",
                 "the chip has 256.0 KiB", "raise RduParams.hbm_bytes to 512.0 KiB"):
        assert part in msg, msg


def test_layout_error_suggests_a_context_that_fits():
    cfg = LlamaConfig(dim=128, n_layers=4, n_heads=8, n_kv_heads=8, hidden_dim=256,
                      vocab_size=256, max_seq_len=4096)
    qm = quant.quantize(random_model(cfg, seed=3), calib_ids=[list(range(64))])
    p = DEFAULT_PARAMS.replace(hbm_bytes=4 * 1024 * 1024)
    need = HbmLayout(p, qm, 4096).total_bytes
    assert need > p.hbm_bytes                        # KV cache: 4 x 2 x 4096 x 128 B = 4 MiB
    with pytest.raises(LayoutError, match="shorten the context") as e:
        plan_layout(qm, p)
    n = int(str(e.value).split("N <= ")[1].rstrip(")"))
    assert plan_layout(qm, p, context=n).total_bytes <= p.hbm_bytes
    with pytest.raises(LayoutError):
        plan_layout(qm, p, context=n + 1)
    with pytest.raises(LayoutError, match="context 5000 outside"):
        plan_layout(qm, p, context=5000)


def test_shorter_context_shrinks_only_the_kv_cache(default_qm, default_layout):
    short = plan_layout(default_qm, context=64)
    assert short.kv_layer_stride < default_layout.kv_layer_stride
    assert short.weights_total == default_layout.weights_total
    assert short.weight_bytes_per_token == default_layout.weight_bytes_per_token
    assert short.read_kv(short.pack(default_qm))[0].shape[2] == 64

"""Checkpoint frontends: safetensors, HF folders, llama2.c .bin + tokenizer.bin, load_model."""

import json
import struct

import numpy as np
import pytest

from sw.frontend import ModelFormatError, detect_format, load_model
from sw.frontend.hf import load_hf, save_hf
from sw.frontend.llama2c import (Llama2cTokenizer, half_to_interleaved, interleaved_to_half,
                                 load_llama2c, read_llama2c_tokenizer, save_llama2c,
                                 write_llama2c_tokenizer)
from sw.frontend.safetensors import (read_header, read_safetensors, write_safetensors,
                                     f32_to_bf16_bits, bf16_bits_to_f32)
from sw.model import LlamaConfig, random_model

SHAPES = {
    "mha_tied": LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=4, hidden_dim=96,
                            vocab_size=61, max_seq_len=16),
    "gqa_untied": LlamaConfig(dim=48, n_layers=3, n_heads=6, n_kv_heads=2, hidden_dim=100,
                              vocab_size=37, max_seq_len=24, tie_embeddings=False),
    "mqa_untied": LlamaConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=40,
                              vocab_size=300, max_seq_len=8, tie_embeddings=False),
    "default": LlamaConfig(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, hidden_dim=192,
                           vocab_size=512, max_seq_len=256),
}


def assert_same(a, b, exact_dtype=True):
    assert a.config == b.config
    pairs = [("tok_embeddings", a.tok_embeddings, b.tok_embeddings), ("norm", a.norm, b.norm),
             ("lm_head", a.lm_head, b.lm_head)]
    for i, (la, lb) in enumerate(zip(a.layers, b.layers, strict=True)):
        for f in la.expected_shapes(a.config):
            pairs.append((f"layers.{i}.{f}", getattr(la, f), getattr(lb, f)))
    for name, x, y in pairs:
        assert x.dtype == y.dtype == np.float32, name
        assert x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs"
    if a.config.tie_embeddings:
        assert b.lm_head is b.tok_embeddings


# ---- safetensors -----------------------------------------------------------------------

def test_safetensors_roundtrip_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    t = {"a": rng.standard_normal((3, 5)).astype(np.float32),
         "b": np.arange(-5, 5, dtype=np.int8), "c": rng.standard_normal(7).astype(np.float16),
         "d": np.zeros((0, 4), np.float32), "e": np.array(3.5, np.float64)}
    p = tmp_path / "x.safetensors"
    write_safetensors(p, t, metadata={"format": "pt"})
    back, meta = read_safetensors(p, with_metadata=True)
    assert meta == {"format": "pt"}
    for k in t:
        assert back[k].dtype == t[k].dtype and back[k].shape == t[k].shape
        assert back[k].tobytes() == t[k].tobytes()
    n = struct.unpack("<Q", p.read_bytes()[:8])[0]
    assert n % 8 == 0


def test_bf16_conversion(tmp_path):
    x = np.array([1.0, -2.5, 3.140625, 1e-3, 65504.0, 0.0], np.float32)
    bits = f32_to_bf16_bits(x)
    assert bits.dtype == np.uint16
    assert bits[0] == 0x3F80 and bits[1] == 0xC020
    y = bf16_bits_to_f32(bits)
    assert y.dtype == np.float32 and y[2] == 3.140625 and abs(y[3] - 1e-3) < 1e-5
    # round to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 -> 1
    assert f32_to_bf16_bits(np.array([1 + 2 ** -8], np.float32))[0] == 0x3F80
    assert f32_to_bf16_bits(np.array([1 + 3 * 2 ** -9], np.float32))[0] == 0x3F81
    p = tmp_path / "b.safetensors"
    write_safetensors(p, {"w": x}, dtypes={"w": "BF16"})
    assert read_header(p)[0]["w"][0] == "BF16"
    np.testing.assert_array_equal(read_safetensors(p)["w"], y)


def test_safetensors_matches_reference_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    t = {"w": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "i": np.arange(3, dtype=np.int32)}
    write_safetensors(tmp_path / "ours.safetensors", t)
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    st.save_file(t, str(tmp_path / "theirs.safetensors"))
    ours = read_safetensors(tmp_path / "theirs.safetensors")
    for k in t:
        np.testing.assert_array_equal(theirs[k], t[k])
        np.testing.assert_array_equal(ours[k], t[k])


def _raw_st(path, header: dict, data: bytes):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


@pytest.mark.parametrize("case,msg", [
    ("short", "truncated safetensors file"),
    ("hdr_past_end", "header length 1000 runs past the end of the file"),
    ("bad_json", "header is not valid JSON"),
    ("overlap", "tensors a [0, 16] and b [8, 24] overlap"),
    ("out_of_range", "tensor a: data_offsets [0, 64] are out of range"),
    ("size_mismatch", "tensor a: F32 (2, 3) needs 24 bytes but data_offsets [0, 16] hold 16"),
    ("bad_dtype", "tensor a: unknown dtype 'Q4'"),
    ("f8", "tensor a: unsupported dtype F8_E4M3"),
])
def test_safetensors_malformed(tmp_path, case, msg):
    p = tmp_path / "m.safetensors"
    if case == "short":
        p.write_bytes(b"\x01\x02\x03")
    elif case == "hdr_past_end":
        p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    elif case == "bad_json":
        p.write_bytes(struct.pack("<Q", 5) + b"{abc}")
    elif case == "overlap":
        _raw_st(p, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24))
    elif case == "out_of_range":
        _raw_st(p, {"a": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}, bytes(32))
    elif case == "size_mismatch":
        _raw_st(p, {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, bytes(16))
    elif case == "bad_dtype":
        _raw_st(p, {"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}, bytes(1))
    elif case == "f8":
        _raw_st(p, {"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, bytes(2))
    with pytest.raises(ModelFormatError) as ei:
        read_safetensors(p)
    assert msg in str(ei.value)
    assert str(p) in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_safetensors_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="file not found"):
        read_safetensors(tmp_path / "nope.safetensors")


# ---- Hugging Face folders ----------------------------------------------------------------

@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_hf_roundtrip(tmp_path, shape):
    m = random_model(SHAPES[shape], seed=1)
    save_hf(m, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "tokenizer.json").exists()
    back = load_hf(tmp_path / "ckpt")
    assert_same(m, back)
    assert back.name == "ckpt" and back.meta["format"] == "hf" and back.tokenizer is None
    names = read_header(tmp_path / "ckpt" / "model.safetensors")[0]
    assert ("lm_head.weight" in names) == (not m.config.tie_embeddings)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] == m.config.tie_embeddings
    assert cfg["num_key_value_heads"] == m.config.n_kv_heads


def test_hf_bf16_and_f16(tmp_path):
    m = random_model(SHAPES["gqa_untied"], seed=2)
    for dt in ("BF16", "F16"):
        save_hf(m, tmp_path / dt, dtype=dt)
        back = load_hf(tmp_path / dt)
        if dt == "BF16":
            want = bf16_bits_to_f32(f32_to_bf16_bits(m.layers[1].wk))
        else:
            want = m.layers[1].wk.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(back.layers[1].wk, want)
        assert back.layers[0].wq.dtype == np.float32


def test_hf_sharded(tmp_path):
    m = random_model(SHAPES["mha_tied"], seed=3)
    save_hf(m, tmp_path / "one")
    t = read_safetensors(tmp_path / "one" / "model.safetensors")
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text((tmp_path / "one" / "config.json").read_text())
    names = list(t)
    halves = {"model-00001-of-00002.safetensors": names[:5],
              "model-00002-of-00002.safetensors": names[5:]}
    wmap = {}
    for shard, ns in halves.items():
        write_safetensors(d / shard, {k: t[k] for k in ns})
        wmap.update({k: shard for k in ns})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    assert_same(m, load_hf(d))


def _hf_folder(tmp_path, config=None, seed=0, **cfg_changes):
    m = random_model(config or SHAPES["default"], seed=seed)
    d = tmp_path / "hf"
    save_hf(m, d)
    if cfg_changes:
        cfg = json.loads((d / "config.json").read_text())
        for k, v in cfg_changes.items():
            if v is KeyError:
                cfg.pop(k)
            else:
                cfg[k] = v
        (d / "config.json").write_text(json.dumps(cfg))
    return m, d


def _edit_tensors(d, fn):
    t = read_safetensors(d / "model.safetensors")
    fn(t)
    write_safetensors(d / "model.safetensors", t)


def _load_err(d):
    with pytest.raises(ModelFormatError) as ei:
        load_hf(d)
    return str(ei.value)


def test_hf_missing_tensor(tmp_path):
    _, d = _hf_folder(tmp_path)
    _edit_tensors(d, lambda t: t.pop("model.layers.2.self_attn.v_proj.weight"))
    assert "missing tensor model.layers.2.self_attn.v_proj.weight" in _load_err(d)


def test_hf_extra_bias(tmp_path):
    _, d = _hf_folder(tmp_path)
    _edit_tensors(d, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias",
                                             np.zeros(64, np.float32)))
    assert "biases are not supported: model.layers.0.self_attn.q_proj.bias" in _load_err(d)


def test_hf_extra_tensor_and_extra_layer(tmp_path):
    _, d = _hf_folder(tmp_path)
    _edit_tensors(d, lambda t: t.__setitem__("model.layers.5.input_layernorm.weight",
                                             np.ones(64, np.float32)))
    assert "unexpected tensor model.layers.5.input_layernorm.weight" in _load_err(d)


def test_hf_ignores_rotary_inv_freq(tmp_path):
    m, d = _hf_folder(tmp_path)
    _edit_tensors(d, lambda t: t.__setitem__("model.layers.0.self_attn.rotary_emb.inv_freq",
                                             np.ones(4, np.float32)))
    assert_same(m, load_hf(d))


def test_hf_wrong_shape(tmp_path):
    _, d = _hf_folder(tmp_path)
    _edit_tensors(d, lambda t: t.__setitem__("model.layers.3.mlp.up_proj.weight",
                                             np.ascontiguousarray(t["model.layers.3.mlp.up_proj.weight"].T)))
    err = _load_err(d)
    assert "model.layers.3.mlp.up_proj.weight has shape (64, 192), expected (192, 64)" in err
    assert "model.safetensors" in err


def test_hf_unsupported_dtype(tmp_path):
    _, d = _hf_folder(tmp_path)
    _edit_tensors(d, lambda t: t.__setitem__("model.norm.weight", np.ones(64, np.int8)))
    assert "unsupported dtype int8 for model.norm.weight (expected F32, F16 or BF16)" in _load_err(d)


def test_hf_untied_missing_lm_head(tmp_path):
    _, d = _hf_folder(tmp_path, tie_word_embeddings=False)
    assert "missing tensor lm_head.weight (config.json has tie_word_embeddings false)" in _load_err(d)


def test_hf_tied_with_equal_lm_head_ok_and_different_rejected(tmp_path):
    m, d = _hf_folder(tmp_path, config=SHAPES["mha_tied"])
    _edit_tensors(d, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"]))
    assert_same(m, load_hf(d))
    _edit_tensors(d, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"] * 2))
    assert "lm_head.weight differs from model.embed_tokens.weight" in _load_err(d)


@pytest.mark.parametrize("change,msg", [
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_parameters is not supported"),
    ({"hidden_act": "gelu"}, "unsupported hidden_act 'gelu' (only 'silu')"),
    ({"attention_bias": True}, "attention_bias is true; biases are not supported"),
    ({"mlp_bias": True}, "mlp_bias is true; biases are not supported"),
    ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"},
     "unsupported architecture MistralForCausalLM"),
    ({"hidden_size": KeyError}, "missing field hidden_size"),
    ({"num_attention_heads": 7}, "dim 64 is not a multiple of n_heads 7"),
    ({"num_key_value_heads": 3}, "n_heads 8 is not a multiple of n_kv_heads 3"),
    ({"vocab_size": 0}, "vocab_size must be a positive integer, got 0"),
    ({"head_dim": 16}, "head_dim 16 differs"),
])
def test_hf_bad_config(tmp_path, change, msg):
    _, d = _hf_folder(tmp_path, config=SHAPES["default"], **change)
    err = _load_err(d)
    assert msg in err and "config.json" in err


def test_hf_config_defaults_and_rope_parameters(tmp_path):
    # num_key_value_heads defaults to heads; rope_theta may come from rope_parameters (HF v5)
    c = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=4, hidden_dim=64, vocab_size=20,
                    max_seq_len=8, rope_theta=500000.0)
    m, d = _hf_folder(tmp_path, config=c, num_key_value_heads=KeyError, rope_theta=KeyError,
                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    assert_same(m, load_hf(d))


def test_hf_missing_files(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    assert "config.json not found" in _load_err(d)
    (d / "config.json").write_text("{not json")
    assert "config.json: not valid JSON" in _load_err(d)
    _, d2 = _hf_folder(tmp_path)
    (d2 / "model.safetensors").rename(d2 / "pytorch_model.bin")
    assert "model.safetensors not found (found pytorch_model.bin; only safetensors" in _load_err(d2)


def test_hf_truncated_safetensors(tmp_path):
    _, d = _hf_folder(tmp_path, config=SHAPES["mha_tied"])
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-10])
    assert "are out of range" in _load_err(d)


def test_hf_tokenizer_json(tmp_path):
    tokmod = pytest.importorskip("sw.tokenizer")
    tok = tokmod.train_bpe("the cat sat on the mat. the end. " * 4, vocab_size=270)
    c = LlamaConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32,
                    vocab_size=tok.vocab_size, max_seq_len=8)
    m = random_model(c, seed=0)
    m.tokenizer = tok
    save_hf(m, tmp_path / "t")
    back = load_hf(tmp_path / "t")
    assert back.tokenizer is not None and back.tokenizer.vocab_size == tok.vocab_size
    assert back.tokenizer.encode("the cat") == tok.encode("the cat")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["bos_token_id"] == tok.bos_id
    # a copy of a loaded model carries its tokenizer.json along
    save_hf(back, tmp_path / "t2")
    assert (tmp_path / "t2" / "tokenizer.json").read_text() == \
        (tmp_path / "t" / "tokenizer.json").read_text()
    small = random_model(LlamaConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32,
                                     vocab_size=tok.vocab_size - 1, max_seq_len=8))
    save_hf(small, tmp_path / "t3", tokenizer_json=tmp_path / "t" / "tokenizer.json")
    assert f"the tokenizer has {tok.vocab_size} tokens but the model's vocabulary has only" \
        in _load_err(tmp_path / "t3")
    (tmp_path / "t" / "tokenizer.json").write_text("{broken")
    assert "cannot load tokenizer" in _load_err(tmp_path / "t")


# ---- llama2.c ------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_llama2c_roundtrip(tmp_path, shape, version):
    m = random_model(SHAPES[shape], seed=4)
    p = save_llama2c(m, tmp_path / "m.bin", version=version)
    back = load_llama2c(p)
    assert_same(m, back)
    assert back.meta["format"] == f"llama2c-v{version}" and back.name == "m"


def test_llama2c_v0_layout(tmp_path):
    """The raw file holds wq in interleaved order, vocab < 0 for an untied head, and freq_cis."""
    c = SHAPES["gqa_untied"]
    m = random_model(c, seed=5)
    p = save_llama2c(m, tmp_path / "m.bin")
    raw = p.read_bytes()
    hdr = struct.unpack("<7i", raw[:28])
    assert hdr == (48, 100, 3, 6, 2, -37, 24)
    w = np.frombuffer(raw, "<f4", offset=28)
    emb = w[:37 * 48].reshape(37, 48)
    np.testing.assert_array_equal(emb, m.tok_embeddings)
    off = 37 * 48 + 3 * 48
    wq0 = w[off:off + 48 * 48].reshape(48, 48)
    np.testing.assert_array_equal(interleaved_to_half(wq0, 6), m.layers[0].wq)
    hd = 8
    assert np.array_equal(wq0[2], m.layers[0].wq[1])          # pair j=1 real part
    assert np.array_equal(wq0[3], m.layers[0].wq[hd // 2 + 1])  # pair j=1 imag part
    # freq_cis_real for pos 1 starts cos(1), right after rms_final
    n_before = 37 * 48 + 3 * (48 + 48 * 48 + 2 * 16 * 48 + 48 * 48 + 48 + 3 * 100 * 48) + 48
    assert abs(w[n_before + hd // 2] - np.cos(1.0)) < 1e-6


def test_permutation_inverse():
    w = np.arange(24 * 3, dtype=np.float32).reshape(24, 3)
    for heads in (1, 2, 3, 6):
        np.testing.assert_array_equal(half_to_interleaved(interleaved_to_half(w, heads), heads), w)
    # one head of size 4: interleaved rows (r0 i0 r1 i1) -> (r0 r1 i0 i1)
    x = np.arange(4, dtype=np.float32)[:, None]
    assert interleaved_to_half(x, 1)[:, 0].tolist() == [0, 2, 1, 3]


def _rope_llama2c(v, pos, head_size, theta=10000.0):
    """run.c's RoPE: interleaved pairs (v[i], v[i+1]), freq from i % head_size."""
    v = v.astype(np.float64).copy()
    for i in range(0, len(v), 2):
        freq = 1.0 / theta ** ((i % head_size) / head_size)
        cr, ci = np.cos(pos * freq), np.sin(pos * freq)
        v0, v1 = v[i], v[i + 1]
        v[i], v[i + 1] = v0 * cr - v1 * ci, v0 * ci + v1 * cr
    return v


def _rope_hf(v, pos, head_size, theta=10000.0):
    """HF rotate_half RoPE, head by head."""
    h = head_size // 2
    inv = 1.0 / theta ** (np.arange(0, head_size, 2) / head_size)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)
    out = v.astype(np.float64).reshape(-1, head_size).copy()
    x1, x2 = out[:, :h].copy(), out[:, h:].copy()
    out[:, :h], out[:, h:] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    return out.reshape(-1)


def test_rope_permutation_preserves_attention_scores(tmp_path):
    """llama2.c (raw weights, interleaved RoPE) and HF (loaded weights, rotate_half) give the
    same q.k scores for every head pair and positions."""
    c = SHAPES["gqa_untied"]                       # 6 heads, 2 kv heads, head dim 8
    m = random_model(c, seed=6)
    p = save_llama2c(m, tmp_path / "m.bin")
    raw_wq = half_to_interleaved(m.layers[1].wq, c.n_heads)   # what the file holds
    raw_wk = half_to_interleaved(m.layers[1].wk, c.n_kv_heads)
    loaded = load_llama2c(p)
    rng = np.random.default_rng(0)
    hd = c.head_dim
    for pq, pk in [(0, 0), (5, 2), (23, 11), (7, 7)]:
        xq, xk = rng.standard_normal(c.dim), rng.standard_normal(c.dim)
        q_c = _rope_llama2c(raw_wq @ xq, pq, hd).reshape(c.n_heads, hd)
        k_c = _rope_llama2c(raw_wk @ xk, pk, hd).reshape(c.n_kv_heads, hd)
        q_h = _rope_hf(loaded.layers[1].wq.astype(np.float64) @ xq, pq, hd).reshape(c.n_heads, hd)
        k_h = _rope_hf(loaded.layers[1].wk.astype(np.float64) @ xk, pk, hd).reshape(c.n_kv_heads, hd)
        s_c = np.array([q_c[h] @ k_c[h // c.n_rep] for h in range(c.n_heads)])
        s_h = np.array([q_h[h] @ k_h[h // c.n_rep] for h in range(c.n_heads)])
        np.testing.assert_allclose(s_h, s_c, rtol=1e-9, atol=1e-9)
        if pq != pk:   # without the permutation the scores would differ
            q_bad = _rope_hf(raw_wq.astype(np.float64) @ xq, pq, hd).reshape(c.n_heads, hd)
            k_bad = _rope_hf(raw_wk.astype(np.float64) @ xk, pk, hd).reshape(c.n_kv_heads, hd)
            s_bad = np.array([q_bad[h] @ k_bad[h // c.n_rep] for h in range(c.n_heads)])
            assert not np.allclose(s_bad, s_c)


def _bin_err(p):
    with pytest.raises(ModelFormatError) as ei:
        load_llama2c(p)
    assert str(p) in str(ei.value)
    return str(ei.value)


@pytest.mark.parametrize("version", [0, 1])
def test_llama2c_truncated_and_trailing(tmp_path, version):
    m = random_model(SHAPES["mha_tied"], seed=7)
    p = save_llama2c(m, tmp_path / "m.bin", version=version)
    good = p.read_bytes()
    p.write_bytes(good[:-4])
    err = _bin_err(p)
    assert f"file is {len(good) - 4} bytes but its header" in err
    assert f"needs {len(good)}: truncated" in err
    p.write_bytes(good + b"garbage!")
    assert "8 trailing bytes after the weights" in _bin_err(p)
    p.write_bytes(good[:20])
    assert "truncated llama2.c checkpoint (20 bytes" in _bin_err(p)


@pytest.mark.parametrize("fields,msg", [
    ((64, 192, 5, 6, 6, 512, 256), "bad header: dim 64 is not a multiple of n_heads 6"),
    ((64, 192, 5, 8, 3, 512, 256), "bad header: n_heads 8 is not a multiple of n_kv_heads 3"),
    ((64, 192, 0, 8, 8, 512, 256), "header field n_layers = 0 must be positive"),
    ((64, -192, 5, 8, 8, 512, 256), "header field hidden_dim = -192 must be positive"),
    ((40, 192, 5, 8, 8, 512, 256), "bad header: head_dim 5 must be even"),
])
def test_llama2c_bad_header(tmp_path, fields, msg):
    p = tmp_path / "bad.bin"
    p.write_bytes(struct.pack("<7i", *fields) + bytes(64))
    assert msg in _bin_err(p)


def test_llama2c_unsupported_version(tmp_path):
    p = tmp_path / "q8.bin"
    p.write_bytes(struct.pack("<Ii7iB", 0x616B3432, 2, 64, 192, 5, 8, 8, 512, 256, 1).ljust(256, b"\0"))
    assert "version 2 (int8 Q8_0) is not supported" in _bin_err(p)


def test_llama2c_rejects_non_llama2c_hyperparameters(tmp_path):
    c = LlamaConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=32, vocab_size=10,
                    max_seq_len=4, norm_eps=1e-6)
    with pytest.raises(ValueError, match="norm_eps=1e-5"):
        save_llama2c(random_model(c), tmp_path / "x.bin")


# ---- tokenizer.bin -------------------------------------------------------------------------

MERGES = ["th", "he", "the", " t", " the", "in", " a", "an", " an", "nd", " and", " c", "at",
          " cat", "er", " s", "at."]


def tiny_llama2c_vocab():
    """Like llama2.c's tokenizers: <unk>, BOS, EOS, 256 byte pieces, chars, then merges."""
    pieces = ["<unk>", "\n<s>\n", "\n</s>\n"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(pieces)
    chars = [chr(i) for i in range(32, 127)]
    pieces += chars
    scores += [-1e9] * len(chars)          # single characters are never merge results
    for k, mtok in enumerate(MERGES):
        pieces.append(mtok)
        scores.append(-float(k))           # earlier merges score higher
    return pieces, scores


def test_tokenizer_bin_roundtrip(tmp_path):
    pieces, scores = tiny_llama2c_vocab()
    p = write_llama2c_tokenizer(tmp_path / "tokenizer.bin", pieces, scores)
    tok = read_llama2c_tokenizer(p, vocab_size=len(pieces))
    assert tok.vocab_size == len(pieces) and tok.bos_id == 1 and tok.eos_id == 2
    assert tok.pieces[300] == pieces[300].encode()
    text = "the cat and the hat sat.\nThen: 42 {x}!"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == text
    # greedy merges: " the" is one piece, " cat" too
    idx = {pc: i for i, pc in enumerate(pieces)}
    assert tok.encode("the cat") == [idx[" the"], idx[" cat"]]
    assert tok.encode("") == []
    assert tok.encode("a", bos=True, eos=True) == [1, idx[" a"], 2]
    # non-ASCII falls back to <0xXX> byte pieces and decodes back
    e = tok.encode("café")
    assert e[-2:] == [3 + 0xC3, 3 + 0xA9]
    assert tok.decode(e) == "café"
    # leading space stripped only at the start / after BOS, kept elsewhere
    assert tok.decode([idx[" the"], idx[" cat"]]) == "the cat"
    assert tok.decode([idx["a"], idx[" the"]]) == "a the"


def test_tokenizer_bin_errors(tmp_path):
    pieces, scores = tiny_llama2c_vocab()
    p = write_llama2c_tokenizer(tmp_path / "tokenizer.bin", pieces, scores)
    with pytest.raises(ModelFormatError, match="has 371 tokens but the model's vocabulary has 400"):
        read_llama2c_tokenizer(p, vocab_size=400)
    with pytest.raises(ModelFormatError, match="trailing bytes after the 300 tokens"):
        read_llama2c_tokenizer(p, vocab_size=300)
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(ModelFormatError, match="token 370 has bad length"):
        read_llama2c_tokenizer(p)
    tok = Llama2cTokenizer([b"<unk>", b"<s>", b"</s>", b"a", b" "], [0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="cannot encode 'b'"):
        tok.encode("ab")


# ---- load_model ----------------------------------------------------------------------------

def test_load_model_detects_formats(tmp_path):
    m = random_model(SHAPES["mha_tied"], seed=8)
    save_hf(m, tmp_path / "hfmodel")
    assert detect_format(tmp_path / "hfmodel") == "hf"
    assert_same(m, load_model(tmp_path / "hfmodel"))
    d = tmp_path / "l2c"
    d.mkdir()
    save_llama2c(m, d / "stories.bin")
    a = load_model(d / "stories.bin")
    assert a.name == "stories" and a.tokenizer is None
    assert_same(m, a)
    big = LlamaConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=32,
                      vocab_size=len(tiny_llama2c_vocab()[0]), max_seq_len=8)
    save_llama2c(random_model(big), d / "stories.bin")
    write_llama2c_tokenizer(d / "tokenizer.bin", *tiny_llama2c_vocab())
    b = load_model(str(d / "stories.bin"))
    assert isinstance(b.tokenizer, Llama2cTokenizer)


@pytest.mark.parametrize("case,msg", [
    ("missing", "no such file or folder"),
    ("empty", "the folder is empty"),
    ("ext", "unknown model format"),
    ("st_file", "pass the checkpoint folder"),
    ("tok", "this is a tokenizer, not a model checkpoint"),
    ("dir_with_bin", "pass the .bin file itself (m.bin)"),
])
def test_load_model_errors(tmp_path, case, msg):
    target = {"missing": tmp_path / "nope", "empty": tmp_path / "empty",
              "ext": tmp_path / "model.gguf", "st_file": tmp_path / "model.safetensors",
              "tok": tmp_path / "tokenizer.bin", "dir_with_bin": tmp_path / "d"}[case]
    if case == "empty":
        target.mkdir()
    elif case == "dir_with_bin":
        target.mkdir()
        (target / "m.bin").write_bytes(b"")
    elif case != "missing":
        target.write_bytes(b"x")
    with pytest.raises(ModelFormatError) as ei:
        load_model(target)
    assert msg in str(ei.value) and "\n" not in str(ei.value)


def _runc_forward(path, ids):
    """An independent float64 port of llama2.c run.c's forward() on the raw version-0 file."""
    raw = path.read_bytes()
    dim, hidden, L, H, KV, vocab, seq = struct.unpack("<7i", raw[:28])
    shared, vocab = vocab > 0, abs(vocab)
    hs = dim // H
    kv_dim = KV * hs
    w = np.frombuffer(raw, "<f4", offset=28).astype(np.float64)
    pos = [0]

    def take(*shape):
        n = int(np.prod(shape))
        out = w[pos[0]:pos[0] + n].reshape(shape)
        pos[0] += n
        return out
    emb = take(vocab, dim)
    rms_att, wq, wk = take(L, dim), take(L, dim, dim), take(L, kv_dim, dim)
    wv, wo = take(L, kv_dim, dim), take(L, dim, dim)
    rms_ffn, w1, w2, w3 = take(L, dim), take(L, hidden, dim), take(L, dim, hidden), take(L, hidden, dim)
    rms_final = take(dim)
    take(seq * hs // 2), take(seq * hs // 2)
    wcls = emb if shared else take(vocab, dim)
    assert pos[0] == len(w)

    def rmsnorm(x, g):
        return x / np.sqrt(np.mean(x * x) + 1e-5) * g
    kc, vc = np.zeros((L, seq, kv_dim)), np.zeros((L, seq, kv_dim))
    out = []
    for p, tok in enumerate(ids):
        x = emb[tok].copy()
        for l in range(L):
            xb = rmsnorm(x, rms_att[l])
            q = _rope_llama2c(wq[l] @ xb, p, hs)
            kc[l, p] = _rope_llama2c(wk[l] @ xb, p, hs)
            vc[l, p] = wv[l] @ xb
            att_out = np.zeros(dim)
            for h in range(H):
                kvh = h // (H // KV)
                s = kc[l, :p + 1, kvh * hs:(kvh + 1) * hs] @ q[h * hs:(h + 1) * hs] / np.sqrt(hs)
                a = np.exp(s - s.max())
                a /= a.sum()
                att_out[h * hs:(h + 1) * hs] = a @ vc[l, :p + 1, kvh * hs:(kvh + 1) * hs]
            x = x + wo[l] @ att_out
            xb = rmsnorm(x, rms_ffn[l])
            g = w1[l] @ xb
            x = x + w2[l] @ (g / (1 + np.exp(-g)) * (w3[l] @ xb))
        out.append(wcls @ rmsnorm(x, rms_final))
    return np.array(out)


@pytest.mark.parametrize("shape", ["gqa_untied", "mha_tied"])
def test_llama2c_logits_match_runc(tmp_path, shape):
    """End to end: run.c semantics on the raw file == the float reference on the loaded model."""
    ref = pytest.importorskip("sw.reference")
    m = random_model(SHAPES[shape], seed=9)
    p = save_llama2c(m, tmp_path / "m.bin")
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    want = _runc_forward(p, ids)
    got = ref.forward_logits(load_llama2c(p), ids)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

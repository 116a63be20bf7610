"""Quantiser: int types and ranges, calibration, tables, save/load."""

import dataclasses

import numpy as np
import pytest

from sw import golden, quant
from sw.model import LlamaConfig, random_model

CFG = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, vocab_size=50,
                  max_seq_len=24)


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=5)


@pytest.fixture(scope="module")
def qm(model):
    return quant.quantize(model)


def test_kv_constant():
    assert quant.KV_BYTES == 1 and quant.KV_BITS == 8


def test_all_arrays_are_integer_with_hardware_ranges(qm):
    c = qm.config
    for f in dataclasses.fields(qm):
        v = getattr(qm, f.name)
        if isinstance(v, np.ndarray):
            assert v.dtype.kind == "i", f.name
    for k in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
        w = getattr(qm, k)
        assert w.dtype == np.int8 and w.shape[0] == c.n_layers
        assert w.min() >= -127                                   # symmetric
        m, s = getattr(qm, k + "_m"), getattr(qm, k + "_s")
        assert m.shape == w.shape[:2] and s.shape == w.shape[:2]
    assert qm.wq.shape[1:] == (c.n_heads * c.head_dim, c.dim)
    assert qm.emb.dtype == np.int16 and qm.emb.shape == (c.vocab_size, c.dim)
    assert qm.lm_head.dtype == np.int8 and qm.lm_head.shape == (c.vocab_size, c.dim)
    ms = [(n[:-2], getattr(qm, n), getattr(qm, n[:-2] + "_s")) for n in
          (f.name for f in dataclasses.fields(qm)) if n.endswith("_m")]
    for name, m, s in ms:
        assert 0 <= np.min(m) and np.max(m) < 2**15, name
        assert 0 <= np.min(s) and np.max(s) <= 63, name
    assert qm.silu.shape == (c.n_layers, 256) and qm.silu.dtype == np.int16
    assert qm.rope_cos.shape == (c.max_seq_len, c.head_dim // 2) and qm.rope_cos.dtype == np.int16
    assert qm.rope_cos[0].tolist() == [16384] * (c.head_dim // 2) and not qm.rope_sin[0].any()
    assert c.dim * (32768 >> qm.ss_shift) ** 2 < 2**31 and qm.eps_int >= 1


def test_weight_rows_dequantise_within_half_a_step():
    w = np.random.default_rng(0).standard_normal((10, 33)) * np.arange(1, 11)[:, None]
    q, scale = quant._quant_rows(w)
    assert q.dtype == np.int8 and np.all(np.abs(q).max(1) == 127)
    assert np.all(np.abs(q * scale[:, None] - w) <= scale[:, None] / 2 + 1e-12)


def test_tables():
    e = quant.make_exp_table(15, quant.EXP_SIZE, quant.EXP_FRAC)
    assert e[0] == 2**15 and np.all(np.diff(e) <= 0) and e[-1] == 0   # exp(-16) rounds to 0
    assert len(e) == 256
    for bits in (8, 10):
        r = quant.make_rsqrt_table(bits)
        assert r.max() < 2**15 and np.all(np.diff(r[1 << (bits - 2):]) <= 0)
        rc = quant.make_recip_table(bits)
        assert rc.max() < 2**15 and rc[1 << (bits - 1):].min() >= 2**14
    assert quant.exp_bits_for(256) == 15
    assert quant.exp_bits_for(4096) == 11
    with pytest.raises(ValueError):
        quant.exp_bits_for(2**20)


def test_silu_table_matches_float(qm):
    s_g = qm.scales["gate"][0]
    g = np.arange(-128, 128)
    sv = g * s_g / (1 + np.exp(-g * s_g))
    tab = qm.silu[0][g & 0xFF].astype(np.float64)
    s_silu = np.abs(sv).max() / 32767
    assert np.abs(tab * s_silu - sv).max() <= s_silu


def test_calibration_default_ids(model):
    ids = quant.default_calib_ids(model)                 # no tokenizer: seeded random
    assert ids == quant.default_calib_ids(model)
    assert all(len(s) <= CFG.max_seq_len for s in ids)
    assert sum(len(s) for s in ids) == quant.CALIB_RANDOM_TOKENS

    class Tok:
        bos_id = 1
        def encode(self, text):
            return [2 + (ord(ch) % 40) for ch in text]
    m2 = dataclasses.replace(model, tokenizer=Tok())
    seqs = quant.default_calib_ids(m2)
    assert all(s[0] == 1 and len(s) <= CFG.max_seq_len for s in seqs)
    st = quant.calibrate(m2, [[1, 2, 3], [4, 5]])
    assert int(st["n_tokens"]) == 5
    assert st["q"].shape == (CFG.n_layers,) and st["x"].shape == ()


def test_quantize_is_deterministic(model, qm):
    q2 = quant.quantize(model)
    for f in dataclasses.fields(qm):
        a, b = getattr(qm, f.name), getattr(q2, f.name)
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b), f.name


def test_save_load_roundtrip(tmp_path, qm):
    p = tmp_path / "q.npz"
    quant.save(qm, p)
    q2 = quant.load(p)
    assert q2.config == qm.config and q2.scales == qm.scales and q2.ss_shift == qm.ss_shift
    for f in dataclasses.fields(qm):
        a, b = getattr(qm, f.name), getattr(q2, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
    ids = [3, 1, 4, 1, 5]
    assert np.array_equal(golden.forward_logits(qm, ids), golden.forward_logits(q2, ids))

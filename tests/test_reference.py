"""Float reference: incremental KV-cache decode == an independent full causal forward."""

import numpy as np
import pytest

from sw.model import LlamaConfig, random_model
from sw.reference import FloatDecoder, forward_logits, generate


def full_forward(m, ids):
    """Whole-sequence causal forward written independently of FloatDecoder (float64)."""
    c = m.config
    T, hd = len(ids), c.head_dim
    x = m.tok_embeddings[ids].astype(np.float64)
    inv = 1.0 / (c.rope_theta ** (np.arange(0, hd, 2) / hd))
    ang = np.arange(T)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, axis=1)
    sin = np.concatenate([np.sin(ang)] * 2, axis=1)

    def norm(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + c.norm_eps) * g

    def rot(t):  # t: (T, H, hd)
        h = hd // 2
        rh = np.concatenate([-t[..., h:], t[..., :h]], axis=-1)
        return t * cos[:, None, :] + rh * sin[:, None, :]

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for L in m.layers:
        h = norm(x, L.attn_norm)
        q = rot((h @ L.wq.T).reshape(T, c.n_heads, hd))
        k = rot((h @ L.wk.T).reshape(T, c.n_kv_heads, hd))
        v = (h @ L.wv.T).reshape(T, c.n_kv_heads, hd)
        k = np.repeat(k, c.n_rep, axis=1)
        v = np.repeat(v, c.n_rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", p, v).reshape(T, -1)
        x = x + o @ L.wo.T
        h = norm(x, L.ffn_norm)
        g = h @ L.w_gate.T
        x = x + ((g / (1 + np.exp(-g))) * (h @ L.w_up.T)) @ L.w_down.T
    return norm(x, m.norm) @ m.lm_head.T


CFGS = [
    LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, vocab_size=40,
                max_seq_len=20, tie_embeddings=True),
    LlamaConfig(dim=24, n_layers=1, n_heads=3, n_kv_heads=3, hidden_dim=40, vocab_size=30,
                max_seq_len=12, tie_embeddings=False, rope_theta=100.0),
]


@pytest.mark.parametrize("cfg", CFGS)
def test_incremental_equals_full_forward(cfg):
    m = random_model(cfg, seed=3)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=cfg.max_seq_len)
    inc = forward_logits(m, ids)
    full = full_forward(m, ids)
    assert inc.dtype == np.float32 and inc.shape == (len(ids), cfg.vocab_size)
    assert np.max(np.abs(inc - full)) < 1e-4


def test_reset_and_overflow():
    cfg = CFGS[1]
    m = random_model(cfg, seed=1)
    dec = FloatDecoder(m)
    a = [dec.step(t) for t in (1, 2, 3)]
    dec.reset()
    b = [dec.step(t) for t in (1, 2, 3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    dec.reset()
    for i in range(cfg.max_seq_len):
        dec.step(i % cfg.vocab_size)
    with pytest.raises(ValueError, match="max_seq_len"):
        dec.step(0)
    with pytest.raises(ValueError, match="vocabulary"):
        FloatDecoder(m).step(cfg.vocab_size)


def test_generate_greedy_consistent():
    cfg = CFGS[0]
    m = random_model(cfg, seed=2)
    out = generate(m, [1, 5, 7], 6)
    assert len(out) == 6 and all(isinstance(t, int) for t in out)
    # teacher-forcing the generated sequence reproduces the argmaxes
    lg = forward_logits(m, [1, 5, 7] + out[:-1])
    assert [int(np.argmax(r)) for r in lg[2:]] == out
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(m, [1] * 10, cfg.max_seq_len)

"""Float32 numpy reference decoder (the "float engine"), with a KV cache.

Semantics follow Hugging Face ``LlamaForCausalLM`` (checked by ``tests/test_reference_hf.py``):
RMSNorm ``x * rsqrt(mean(x^2) + eps) * g`` computed in float32, RoPE in the rotate_half layout
with ``inv_freq[j] = theta ** (-2j / head_dim)``, grouped-query attention (query head ``h``
reads KV head ``h // n_rep``), causal softmax, SwiGLU ``down(silu(gate(x)) * up(x))``,
residual adds, final norm and LM head.

An optional ``observer(name, layer, array)`` callback sees every intermediate activation the
quantiser needs (``sw/quant.py`` calibrates its static scales with it).
"""

from __future__ import annotations

import numpy as np

from .model import LlamaModel

__all__ = ["FloatDecoder", "generate", "forward_logits", "rope_inv_freq", "rope_tables"]

f32 = np.float32


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """``theta ** (-2j / head_dim)`` for ``j < head_dim/2``, as HF computes it (float32)."""
    j = np.arange(0, head_dim, 2, dtype=np.int64).astype(f32)
    return (1.0 / (theta ** (j / head_dim))).astype(f32)


def rope_tables(max_seq_len: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each (max_seq_len, head_dim/2) float32."""
    inv = rope_inv_freq(head_dim, theta)
    ang = np.arange(max_seq_len, dtype=f32)[:, None] * inv[None, :]
    return np.cos(ang).astype(f32), np.sin(ang).astype(f32)


def _rmsnorm(x: np.ndarray, eps: float) -> np.ndarray:
    """Normalisation without the gain (the gain is applied by the caller)."""
    ms = np.mean(x * x, dtype=f32)
    return (x * (f32(1.0) / np.sqrt(ms + f32(eps)))).astype(f32)


def _silu(x: np.ndarray) -> np.ndarray:
    return (x / (f32(1.0) + np.exp(-x))).astype(f32)


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x: (heads, hd); cos/sin: (hd/2,). rotate_half layout."""
    h = x.shape[-1] // 2
    x1, x2 = x[:, :h], x[:, h:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(f32)


class FloatDecoder:
    """Incremental float32 decoder: ``step(token)`` returns the next-token logits."""

    def __init__(self, model: LlamaModel, observer=None):
        model.validate()
        self.model = model
        self.config = c = model.config
        self.observer = observer
        self.cos, self.sin = rope_tables(c.max_seq_len, c.head_dim, c.rope_theta)
        self.k_cache = np.zeros((c.n_layers, c.n_kv_heads, c.max_seq_len, c.head_dim), f32)
        self.v_cache = np.zeros_like(self.k_cache)
        self.pos = 0

    def reset(self) -> None:
        self.k_cache[:] = 0
        self.v_cache[:] = 0
        self.pos = 0

    def _obs(self, name, layer, arr):
        if self.observer is not None:
            self.observer(name, layer, arr)

    def step(self, token_id: int) -> np.ndarray:
        m, c = self.model, self.config
        token_id = c.check_step(self.pos, token_id)
        p = self.pos
        hd, nh, nkv = c.head_dim, c.n_heads, c.n_kv_heads
        x = m.tok_embeddings[token_id].astype(f32)
        self._obs("x", -1, x)
        cos, sin = self.cos[p], self.sin[p]
        scale = f32(1.0 / np.sqrt(hd))
        for li, L in enumerate(m.layers):
            hn = _rmsnorm(x, c.norm_eps)
            self._obs("h_attn", li, hn)
            h = hn * L.attn_norm
            self._obs("h_attn_g", li, h)
            q = (L.wq @ h).reshape(nh, hd)
            k = (L.wk @ h).reshape(nkv, hd)
            v = (L.wv @ h).reshape(nkv, hd)
            self._obs("q", li, q)
            self._obs("k", li, k)
            self._obs("v", li, v)
            q = _rope(q, cos, sin)
            k = _rope(k, cos, sin)
            self._obs("q_rot", li, q)
            self._obs("k_rot", li, k)
            self.k_cache[li, :, p] = k
            self.v_cache[li, :, p] = v
            K = self.k_cache[li, :, : p + 1]            # (nkv, T, hd)
            V = self.v_cache[li, :, : p + 1]
            kv_of = np.arange(nh) // c.n_rep
            s = np.einsum("hd,htd->ht", q, K[kv_of]).astype(f32) * scale   # (nh, T)
            self._obs("scores", li, s)
            s = s - s.max(axis=1, keepdims=True)
            e = np.exp(s).astype(f32)
            pr = e / e.sum(axis=1, keepdims=True)
            o = np.einsum("ht,htd->hd", pr, V[kv_of]).astype(f32).reshape(nh * hd)
            self._obs("attn_out", li, o)
            a = (L.wo @ o).astype(f32)
            x = (x + a).astype(f32)
            self._obs("x", li, x)
            hn = _rmsnorm(x, c.norm_eps)
            self._obs("h_ffn", li, hn)
            h = hn * L.ffn_norm
            self._obs("h_ffn_g", li, h)
            g = L.w_gate @ h
            u = L.w_up @ h
            self._obs("gate", li, g)
            self._obs("up", li, u)
            mid = (_silu(g) * u).astype(f32)
            self._obs("mid", li, mid)
            x = (x + L.w_down @ mid).astype(f32)
            self._obs("x", li, x)
        hn = _rmsnorm(x, c.norm_eps)
        self._obs("h_final", -1, hn)
        h = hn * m.norm
        self._obs("h_final_g", -1, h)
        logits = (m.lm_head @ h).astype(f32)
        self._obs("logits", -1, logits)
        self.pos += 1
        return logits


def forward_logits(model: LlamaModel, ids, observer=None) -> np.ndarray:
    """Teacher-forced logits for every position of ``ids``: (T, vocab) float32."""
    dec = FloatDecoder(model, observer=observer)
    return np.stack([dec.step(t) for t in ids]) if len(ids) else np.zeros((0, model.config.vocab_size), f32)


def generate(model: LlamaModel, prompt_ids, n_tokens: int) -> list[int]:
    """Greedy decode: feed the prompt token by token, then ``n_tokens`` argmax tokens.

    Returns only the generated tokens. Raises ``ValueError`` if prompt + generation would
    exceed ``max_seq_len``.
    """
    prompt_ids = [int(t) for t in prompt_ids]
    if not prompt_ids:
        raise ValueError("empty prompt")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    c = model.config
    if len(prompt_ids) + n_tokens - 1 > c.max_seq_len:
        raise ValueError(f"context overflow: prompt of {len(prompt_ids)} + {n_tokens} tokens "
                         f"exceeds max_seq_len {c.max_seq_len}")
    dec = FloatDecoder(model)
    logits = None
    for t in prompt_ids:
        logits = dec.step(t)
    out = []
    for i in range(n_tokens):
        nxt = int(np.argmax(logits))
        out.append(nxt)
        if i + 1 < n_tokens:
            logits = dec.step(nxt)
    return out

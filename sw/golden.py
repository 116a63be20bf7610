"""Bit-exact integer decode: the oracle the RTL is checked against.

Integer only: every operand is an integer numpy array (``sw.intops`` refuses floats and checks
every hardware width), and the decoder never reads ``QuantModel.scales``. One decode step is a
sequence of named steps, each one hardware pattern:

====================  ===========================================  ===============================
step (method)         integer semantics                            pattern / units
====================  ===========================================  ===============================
``embed``             x = EMB[token] (int16, residual scale)       embedding gather: AGCU reads
                                                                   one row from HBM into a PMU
``rmsnorm``           ss = SUM((x >>r sh)^2) (int32);              RMSNorm: PCU MUL + SUM reduce;
                      v = ss + eps; (idx, hk) = rsqrt_index(v);    scalar CLZ/shift; PMU LUT;
                      r = RSQRT[idx];                              PCU MUL + per-channel REQUANT
                      y_c = REQUANT(x_c*r, m_c, s_c+hk, 8)         (m_c holds |gain_c| and the
                                                                   smoothing factor)
``gemv``              acc = W8 @ x (int32), x int8 or int16;       GEMV: DP4 lanes + SUM reduce;
                      y = REQUANT(acc, m[row], s[row], bits)       int16 x: DP4 (x>>8) << 8 plus
                                                                   DP4U (x & 0xFF); per-row (m,s)
                                                                   streamed beside the weights
``rope``              y1 = REQUANT(x1*C - x2*S, m, s, 8),          RoPE: PCU MUL/SUB/ADD on int16
                      y2 = REQUANT(x2*C + x1*S, m, s, 8)           x Q14 tables (PMU, row = pos)
``kv_write``          K[l,:,pos] = k8, V[l,:,pos] = v8             PMU/AGCU write to KV (HBM)
``attn_scores``       s_t = SUM_d q8[d] * K[t,d] (int32)           attention scores: DP4 + SUM
                      (query head h reads KV head h // n_rep)
``softmax_num``       mx = MAX_t s_t; i = MIN(REQUANT(mx-s_t,      softmax: MAX reduce, SUB,
                      m_e, s_e, 16), N-1); e_t = EXP[i];           REQUANT, MIN, PMU LUT,
                      sum = SUM_t e_t (int32)                      SUM reduce
``attn_wsum``         acc[d] = SUM_t e_t * V[t,d] (int32);         weighted sum of V: MAC lanes;
                      (ri, E) = recip_index(sum);                  reciprocal by CLZ + LUT (no
                      mh_c = REQUANT(RECIP[ri], m_c, 15, 16);      divider): per-lane REQUANT of
                      o_c = REQUANT(acc_c, mh_c, s_c + E, 8)       the head's scalar, vector REQUANT
``swiglu``            g8 = gate GEMV; u16 = up GEMV;               SwiGLU: PMU LUT (SiLU) on the
                      h_c = REQUANT(SILU[g8 & 0xFF]*u16, m_c,      raw byte (AND 0xFF), PCU MUL
                                    s_c, 16)                       + per-lane REQUANT
``residual``          x = add_sat(x, y, 16)                        residual add: PCU ADD, saturate
``lm_head``           final ``rmsnorm`` + ``gemv`` to int32 logits LM head GEMV (REQUANT, 32 bit)
``argmax``            lowest index of the maximum                  MAX reduce with index
====================  ===========================================  ===============================

``>>r`` is :func:`sw.intops.rshift_round` (round half up). The softmax divides by multiplying
with a reciprocal from a table (``RECIP``, normalised by CLZ), deferred until after the
weighted sum of V (one reciprocal per head, as the hardware would do it: no divider).
Widths of the data-dependent shifts: ``hk`` <= 15, ``E`` <= 30; every REQUANT shift stays
within 0..63 (checked by ``intops.requant``). The widths chosen per tensor (``qm.act_bits``)
are documented in ``sw/quant.py``.
"""

from __future__ import annotations

import weakref

import numpy as np

from . import intops as I
from .model import LlamaModel
from .quant import QuantModel, quantize

__all__ = ["GoldenDecoder", "generate", "forward_logits", "quantized", "dequant_logits"]


class GoldenDecoder:
    """Integer decoder with an int8 KV cache. ``step(token)`` returns int32 logits."""

    def __init__(self, qm: QuantModel, trace=None):
        self.qm = qm
        self.trace = trace          # optional trace(name, layer, int array): per-pattern dumps
        self.config = c = qm.config
        shape = (c.n_layers, c.n_kv_heads, c.max_seq_len, c.head_dim)
        self.k_cache = np.zeros(shape, np.int8)
        self.v_cache = np.zeros(shape, np.int8)
        self.pos = 0

    def reset(self) -> None:
        self.k_cache[:] = 0
        self.v_cache[:] = 0
        self.pos = 0

    def _t(self, name, layer, arr):
        if self.trace is not None:
            self.trace(name, layer, arr)

    # ---- the patterns ---------------------------------------------------------------------
    def embed(self, token_id: int) -> np.ndarray:
        return I.lut(self.qm.emb, np.int64(token_id)).astype(np.int16)

    def rmsnorm(self, x: np.ndarray, m: np.ndarray, s: np.ndarray, bits: int = 8) -> np.ndarray:
        """x: (dim,) int16 -> (dim,) int8 (or int16); m, s per channel (gain and smoothing)."""
        qm = self.qm
        xs = I.rshift_round(I.check_range(x, 16, "rmsnorm input"), qm.ss_shift)
        ss = I.check_range(np.sum(xs * xs), 32, "sum of squares")
        v = I.check_range(ss + qm.eps_int, 32, "mean square")
        idx, half_k = I.rsqrt_index(v, qm.rsqrt_bits)
        r = I.lut(qm.rsqrt, idx)
        return I.requant(I.mul(x, r), m, I.as_int(s) + half_k, bits)

    @staticmethod
    def gemv(w, x, m, s, bits: int) -> np.ndarray:
        x_bits = 8 if x.dtype == np.int8 else 16
        return I.requant(I.gemv(w, x, x_bits), m, s, bits)

    def rope(self, x16: np.ndarray, m: int, s: int, bits: int = 8) -> np.ndarray:
        """x16: (heads, hd) int16 -> int8 (or ``bits``), rotate_half pairs (j, j + hd/2)."""
        h = x16.shape[-1] // 2
        cos = self.qm.rope_cos[self.pos]
        sin = self.qm.rope_sin[self.pos]
        x1, x2 = x16[:, :h], x16[:, h:]
        y1 = I.check_range(I.mul(x1, cos).astype(np.int64) - I.mul(x2, sin), 32, "rope")
        y2 = I.check_range(I.mul(x2, cos).astype(np.int64) + I.mul(x1, sin), 32, "rope")
        return np.concatenate([I.requant(y1, m, s, bits), I.requant(y2, m, s, bits)], axis=-1)

    def attn_scores(self, q8: np.ndarray, K: np.ndarray) -> np.ndarray:
        """q8: (heads, hd), K: (heads, T, hd) int8 -> (heads, T) int32 (one DP4 row per t)."""
        return I.dot(q8[:, None, :], K, axis=-1)

    def softmax_num(self, scores: np.ndarray, m: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        """Unnormalised softmax numerators (exp-table units) per head, and their sums.

        scores: (heads, T) int32 -> e: (heads, T) int32 in [0, 2**exp_bits], sum: (heads,).
        """
        qm = self.qm
        mx = np.max(scores, axis=-1, keepdims=True)
        d = I.check_range(mx.astype(np.int64) - scores, 32, "score difference")
        idx = np.minimum(I.requant(d, m, s, 16).astype(np.int64), qm.exp.shape[0] - 1)
        e = I.lut(qm.exp, idx)
        return e, I.check_range(np.sum(e, axis=-1), 32, "softmax sum")

    def attn_wsum(self, e: np.ndarray, total: np.ndarray, V: np.ndarray, m, s) -> np.ndarray:
        """(sum_t e_t V[t]) times 1/total, requantised to int8; the reciprocal is a table.

        e: (heads, T), total: (heads,), V: (heads, T, hd), m/s: (heads, hd) per channel
        -> (heads, hd) int8.
        """
        qm = self.qm
        acc = I.dot(e[:, :, None], V, axis=1)                           # (heads, hd) int32
        ri, E = I.recip_index(total, qm.recip_bits)                     # per head (scalar path)
        r = I.lut(qm.recip, ri)[:, None]                                # (heads, 1) Q15 mantissa
        mh = I.requant(r, m, 15, 16)                                    # < 2**15: no saturation
        return I.requant(acc, mh, I.as_int(s) + E[:, None], qm.act_bits["attn_out"])

    def swiglu(self, g8: np.ndarray, u16: np.ndarray, silu_table: np.ndarray, m: int, s: int):
        sg = I.lut(silu_table, I.int8_lut_index(g8))
        return I.requant(I.mul(sg, I.check_range(u16, 16, "up")), m, s, self.qm.act_bits["mid"])

    @staticmethod
    def residual(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return I.add_sat(x, y, 16)

    # ---- one decode step -------------------------------------------------------------------
    def step(self, token_id: int) -> np.ndarray:
        qm, c = self.qm, self.config
        token_id = c.check_step(self.pos, token_id)
        p, hd, nh, nkv = self.pos, c.head_dim, c.n_heads, c.n_kv_heads
        x = self.embed(token_id)
        self._t("x", -1, x)
        for l in range(c.n_layers):
            # attention block
            h = self.rmsnorm(x, qm.norm1_m[l], qm.norm1_s[l], qm.act_bits["norm_attn"])
            self._t("h_attn", l, h)
            q = self.gemv(qm.wq[l], h, qm.wq_m[l], qm.wq_s[l], 16).reshape(nh, hd)
            k = self.gemv(qm.wk[l], h, qm.wk_m[l], qm.wk_s[l], 16).reshape(nkv, hd)
            v = self.gemv(qm.wv[l], h, qm.wv_m[l], qm.wv_s[l], 8).reshape(nkv, hd)
            self._t("q", l, q)
            self._t("k", l, k)
            self._t("v", l, v)
            q = self.rope(q, qm.rope_q_m[l], qm.rope_q_s[l], qm.act_bits["q_rot"])
            k = self.rope(k, qm.rope_k_m[l], qm.rope_k_s[l])
            self._t("q_rot", l, q)
            self._t("k_rot", l, k)
            self.k_cache[l, :, p] = k                                   # kv_write
            self.v_cache[l, :, p] = v
            kv_of = np.arange(nh) // c.n_rep                          # GQA: head -> KV head
            K = self.k_cache[l, kv_of, : p + 1]                         # (nh, T, hd)
            V = self.v_cache[l, kv_of, : p + 1]
            sc = self.attn_scores(q, K)
            e, tot = self.softmax_num(sc, qm.exp_m[l], qm.exp_s[l])
            o = self.attn_wsum(e, tot, V, qm.attn_m[l].reshape(nh, hd), qm.attn_s[l].reshape(nh, hd))
            self._t("attn_out", l, o)
            a = self.gemv(qm.wo[l], o.reshape(-1), qm.wo_m[l], qm.wo_s[l], 16)
            x = self.residual(x, a)
            self._t("x", l, x)
            # MLP block
            h = self.rmsnorm(x, qm.norm2_m[l], qm.norm2_s[l], qm.act_bits["norm_ffn"])
            self._t("h_ffn", l, h)
            g = self.gemv(qm.w_gate[l], h, qm.w_gate_m[l], qm.w_gate_s[l], 8)
            u = self.gemv(qm.w_up[l], h, qm.w_up_m[l], qm.w_up_s[l], 16)
            mid = self.swiglu(g, u, qm.silu[l], qm.mid_m[l], qm.mid_s[l])
            self._t("gate", l, g)
            self._t("up", l, u)
            self._t("mid", l, mid)
            d = self.gemv(qm.w_down[l], mid, qm.w_down_m[l], qm.w_down_s[l], 16)
            x = self.residual(x, d)
            self._t("x", l, x)
        h = self.rmsnorm(x, qm.normf_m, qm.normf_s, qm.act_bits["norm_final"])
        self._t("h_final", -1, h)
        logits = self.gemv(qm.lm_head, h, qm.lm_head_m, qm.lm_head_s, 32)
        assert logits.dtype == np.int32
        self._t("logits", -1, logits)
        self.pos += 1
        return logits

    @staticmethod
    def argmax(logits: np.ndarray) -> int:
        return I.argmax_first(logits)


# ---- model cache and entry points ------------------------------------------------------------

_CACHE: dict[int, tuple] = {}


def quantized(model) -> QuantModel:
    """``model`` itself if already quantised, else its (cached) default quantisation."""
    if isinstance(model, QuantModel):
        return model
    if not isinstance(model, LlamaModel):
        raise TypeError(f"expected LlamaModel or QuantModel, got {type(model).__name__}")
    key = id(model)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is model:
        return hit[1]
    qm = quantize(model)
    _CACHE[key] = (weakref.ref(model, lambda _r, k=key: _CACHE.pop(k, None)), qm)
    return qm


def generate(model_or_qmodel, prompt_ids, n_tokens: int) -> list[int]:
    """Greedy integer decode: prompt token by token, then ``n_tokens`` generated tokens."""
    qm = quantized(model_or_qmodel)
    prompt_ids = [int(t) for t in prompt_ids]
    if not prompt_ids:
        raise ValueError("empty prompt")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    if len(prompt_ids) + n_tokens - 1 > qm.config.max_seq_len:
        raise ValueError(f"context overflow: prompt of {len(prompt_ids)} + {n_tokens} tokens "
                         f"exceeds max_seq_len {qm.config.max_seq_len}")
    dec = GoldenDecoder(qm)
    logits = None
    for t in prompt_ids:
        logits = dec.step(t)
    out = []
    for i in range(n_tokens):
        nxt = dec.argmax(logits)
        out.append(nxt)
        if i + 1 < n_tokens:
            logits = dec.step(nxt)
    return out


def forward_logits(model_or_qmodel, ids) -> np.ndarray:
    """Teacher-forced int32 logits, (T, vocab)."""
    qm = quantized(model_or_qmodel)
    dec = GoldenDecoder(qm)
    return np.stack([dec.step(t) for t in ids]).astype(np.int32)


def dequant_logits(qm: QuantModel, logits) -> np.ndarray:
    """Float view of integer logits (evaluation only; not part of the integer path)."""
    return np.asarray(logits, np.float64) * float(qm.scales["logit"])

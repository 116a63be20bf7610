"""Post-training integer quantisation: float :class:`LlamaModel` -> :class:`QuantModel`.

The scheme (DESIGN.md section 4) is chosen so that every step of the integer decode
(``sw/golden.py``) is one PCU/PMU pattern with the bit widths of ``sw/intops.py``:

=====================  ==========  ======================================================
tensor                 type        scale
=====================  ==========  ======================================================
weights (all GEMVs)    int8        symmetric per output row: ``max|W[r]| / 127`` (after
                                   smoothing, below)
residual stream x      int16       one static scale for the whole model (embeddings and
                                   every residual), ``max|x| * X_MARGIN / 32767``
embedding table        int16       residual scale (a gather produces x directly)
RMSNorm output         int8        static per norm; gain applied per channel in REQUANT
q, k before RoPE       int16       static per layer, max * 1.25
q after RoPE           int8        static per layer (scores: DP4)
k after RoPE, v        int8        static per layer: the KV cache (``KV_BYTES`` = 1)
attention output       int8        static per layer, per-channel smoothed
SwiGLU gate            int8        static per layer (SiLU is a 256-entry table over it)
SiLU(gate)             int16       from the table: ``max|silu| / 32767``
SwiGLU up              int16       static per layer, max * 1.25
silu*up (down input)   **int16**   static per layer, per-channel smoothed; the down GEMV
                                   runs as two DP4 passes (DP4 on the high byte, DP4U on
                                   the low byte), see ``intops.gemv``
logits                 int32       ``max|logit| / 2**20`` (no saturation in practice)
=====================  ==========  ======================================================

Why these widths (``python -m sw.accuracy``: greedy next-token agreement int vs float,
teacher-forced on held-out KJV chapters, shipped model ``kjv-280k``): with every GEMV input
int8 the agreement is 93.9 % (1024 positions), below the 95 % target; the down-projection
input ``silu * up`` is heavy-tailed (max/rms ~ 20-30) and making it int16 gives 96.1 % over
2048 positions (ppl +0.5 %). Making the RMSNorm outputs int16 as well would add about one
point (97.0 %) but doubles the DP4 work of every other GEMV, so they stay int8. Int8 weights
alone (float activations) give 99.0 %. Widths are per tensor kind, never per layer: every
layer must run the same kernel (kernel looping).

Smoothing (SmoothQuant): every int8/int16 activation that feeds a GEMV and is produced by a
per-lane REQUANT (RMSNorm output, attention output, silu*up) is divided per channel by
``f_c = max|a_c|**0.5 / max|W[:, c]|**0.5`` and the consuming weight columns are multiplied by
``f_c`` before the per-row int8 quantisation. The RMSNorm gain (and its sign, folded into the
columns) is part of the norm's per-channel (m, s). Zero hardware cost: only constants change.

Tables (built here, stored in the model): ``rsqrt`` (2**RSQRT_BITS entries of Q15), ``exp``
(EXP_SIZE entries, ``exp(-i * 2**-EXP_FRAC)`` in Q``exp_bits``), ``recip`` (2**RECIP_BITS
entries of Q15 mantissas), ``silu`` (256 int16 entries per layer, indexed by the raw byte
of the int8 gate), ``rope_cos``/``rope_sin`` (int16 Q14, one row per position, one column per
frequency). Rescaling is ``REQUANT(acc, m, s)`` with (m, s) from
:func:`sw.intops.quantize_multiplier` (15-bit multiplier, shift 0..63).

Calibration (:func:`calibrate`): the float reference runs over ``CALIB_TEXT`` (KJV passages
from the training split) through the model's tokenizer, or over seeded random token ids when
the model has no tokenizer; scales are maxima (``ACT_PERCENTILE`` = 100) per tensor, and per
channel for the smoothed tensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

from . import intops
from .model import LlamaConfig, LlamaModel
from .reference import FloatDecoder, rope_tables

__all__ = ["KV_BYTES", "KV_BITS", "QuantModel", "calibrate", "quantize", "default_calib_ids",
           "CALIB_TEXT", "save", "load"]

KV_BITS = 8
KV_BYTES = KV_BITS // 8          # bytes per KV-cache element (read by the compiler and CLI)

# Table sizes: 256 entries each. Measured on a KJV model (1024 positions): 256 vs
# 1024-entry exp / rsqrt / reciprocal tables change the greedy agreement by < 0.5 % (noise).
RSQRT_BITS = 8                   # rsqrt table: 256 entries (indices < 64 unused)
RECIP_BITS = 8                   # reciprocal table: 256 entries (indices < 128 unused)
EXP_FRAC = 4                     # exp table step 2**-4 nats
EXP_SIZE = 256                   # covers 0 .. 16 nats below the row maximum
ROPE_FRAC = 14                   # cos/sin in Q14 int16
X_MARGIN = 2.0                   # residual stream head-room over the calibrated maximum
WIDE_MARGIN = 1.25               # head-room for int16 activations
ACT_PERCENTILE = 100.0           # statistic for int8 activation scales (100 = max)
# Activation widths that are a choice (the rest are fixed by the hardware: GEMV weights and the
# KV cache int8, residual int16, SwiGLU gate int8 for the 256-entry SiLU table). Same for every
# layer (one looped kernel). 16 means the consuming GEMV runs two DP4 passes (DP4 + DP4U).
ACT_BITS = {"norm_attn": 8, "norm_ffn": 8, "norm_final": 8, "q_rot": 8, "attn_out": 8, "mid": 16}
NORM_FOLD = "auto"               # (only when SMOOTH is None)
# Per-channel smoothing (SmoothQuant, Xiao et al. 2023) of the int8 GEMV inputs: channel c of
# the activation is divided by f_c = max|a_c|**SMOOTH / max|W[:, c]|**(1 - SMOOTH) and the
# consuming weight column multiplied by it. Free in hardware: the producer's REQUANT already
# takes per-lane (m, s). None disables it.
SMOOTH = 0.5
_CHANNEL_STATS = ("h_attn_g", "h_ffn_g", "h_final_g", "attn_out", "mid")               # RMSNorm gain: True fold into weights, False per channel, auto
LOGIT_FRAC = 20                  # logit scale = max|logit| / 2**20

# Calibration text for models with a tokenizer: King James Bible, Genesis 1:1-19 and Psalm 23
# (both in the training split of models/prepare_corpus.py: chapters 0 and 500).
CALIB_TEXT = """In the beginning God created the heaven and the earth.
And the earth was without form, and void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters.
And God said, Let there be light: and there was light.
And God saw the light, that it was good: and God divided the light from the darkness.
And God called the light Day, and the darkness he called Night. And the evening and the morning were the first day.
And God said, Let there be a firmament in the midst of the waters, and let it divide the waters from the waters.
And God made the firmament, and divided the waters which were under the firmament from the waters which were above the firmament: and it was so.
And God called the firmament Heaven. And the evening and the morning were the second day.
And God said, Let the waters under the heaven be gathered together unto one place, and let the dry land appear: and it was so.
And God called the dry land Earth; and the gathering together of the waters called he Seas: and God saw that it was good.
And God said, Let the earth bring forth grass, the herb yielding seed, and the fruit tree yielding fruit after his kind, whose seed is in itself, upon the earth: and it was so.
And the earth brought forth grass, and herb yielding seed after his kind, and the tree yielding fruit, whose seed was in itself, after his kind: and God saw that it was good.
And the evening and the morning were the third day.
And God said, Let there be lights in the firmament of the heaven to divide the day from the night; and let them be for signs, and for seasons, and for days, and years:
And let them be for lights in the firmament of the heaven to give light upon the earth: and it was so.
And God made two great lights; the greater light to rule the day, and the lesser light to rule the night: he made the stars also.
And God set them in the firmament of the heaven to give light upon the earth,
And to rule over the day and over the night, and to divide the light from the darkness: and God saw that it was good.
And the evening and the morning were the fourth day.

The LORD is my shepherd; I shall not want.
He maketh me to lie down in green pastures: he leadeth me beside the still waters.
He restoreth my soul: he leadeth me in the paths of righteousness for his name's sake.
Yea, though I walk through the valley of the shadow of death, I will fear no evil: for thou art with me; thy rod and thy staff they comfort me.
Thou preparest a table before me in the presence of mine enemies: thou anointest my head with oil; my cup runneth over.
Surely goodness and mercy shall follow me all the days of my life: and I will dwell in the house of the LORD for ever.
"""

CALIB_RANDOM_TOKENS = 384        # calibration length for models without a tokenizer
CALIB_SEED = 1234

_WEIGHTS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


@dataclass
class QuantModel:
    """All integers of the quantised model. Per-layer tensors are stacked on axis 0.

    ``(m, s)`` pairs are REQUANT multipliers/shifts (int32 arrays holding 15-bit / 6-bit
    values). ``scales`` holds the float scales for reporting and dequantisation only; the
    integer decode never reads it.
    """
    config: LlamaConfig
    name: str
    emb: np.ndarray            # (vocab, dim) int16, residual scale
    # GEMV weights, int8 (L, out, in), and their per-row requant pairs (L, out)
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray
    wq_m: np.ndarray
    wq_s: np.ndarray
    wk_m: np.ndarray
    wk_s: np.ndarray
    wv_m: np.ndarray
    wv_s: np.ndarray
    wo_m: np.ndarray
    wo_s: np.ndarray
    w_gate_m: np.ndarray
    w_gate_s: np.ndarray
    w_up_m: np.ndarray
    w_up_s: np.ndarray
    w_down_m: np.ndarray
    w_down_s: np.ndarray
    # RMSNorm per-channel requant pairs (L, dim): x*rsqrt -> int8 (gain applied or folded)
    norm1_m: np.ndarray        # before attention
    norm1_s: np.ndarray
    norm2_m: np.ndarray        # before the MLP
    norm2_s: np.ndarray
    # per-layer scalar requant pairs (L,)
    rope_q_m: np.ndarray       # int16 q * Q14 cos/sin -> int8 q_rot
    rope_q_s: np.ndarray
    rope_k_m: np.ndarray
    rope_k_s: np.ndarray
    exp_m: np.ndarray          # (max - score) -> exp-table index
    exp_s: np.ndarray
    attn_m: np.ndarray         # (L, n_heads*hd) s_v / s_attn_out per channel, times 1/sum at run time
    attn_s: np.ndarray
    mid_m: np.ndarray          # (L, hidden) silu16 * up16 -> int8, per channel
    mid_s: np.ndarray
    silu: np.ndarray           # (L, 256) int16, indexed by the raw byte of the int8 gate
    # final norm and LM head
    normf_m: np.ndarray        # (dim,)
    normf_s: np.ndarray
    lm_head: np.ndarray        # (vocab, dim) int8 (final-norm gain folded in)
    lm_head_m: np.ndarray      # (vocab,)
    lm_head_s: np.ndarray
    # shared tables
    rsqrt: np.ndarray          # (2**RSQRT_BITS,) Q15
    recip: np.ndarray          # (2**RECIP_BITS,) Q15 mantissas
    exp: np.ndarray            # (EXP_SIZE,) Q exp_bits
    rope_cos: np.ndarray       # (max_seq_len, head_dim/2) int16 Q14
    rope_sin: np.ndarray
    # integer constants
    ss_shift: int              # x >> ss_shift before squaring (sum of squares fits int32)
    eps_int: int               # eps in the sum-of-squares domain (>= 1)
    exp_bits: int              # exp table is Q(exp_bits); exp(0) = 2**exp_bits
    rsqrt_bits: int = RSQRT_BITS
    recip_bits: int = RECIP_BITS
    exp_frac: int = EXP_FRAC
    kv_bits: int = KV_BITS
    act_bits: dict = field(default_factory=lambda: dict(ACT_BITS))
    scales: dict = field(default_factory=dict)

    def kv_bytes_per_token(self) -> int:
        c = self.config
        return 2 * c.n_layers * c.kv_dim * self.kv_bits // 8

    def weight_bytes(self) -> int:
        return int(sum(getattr(self, k).size for k in _WEIGHTS) + self.lm_head.size)


# ---------------------------------------------------------------------------------------------
# calibration


def default_calib_ids(model: LlamaModel) -> list[list[int]]:
    """Calibration sequences: ``CALIB_TEXT`` through the model's tokenizer (BOS first), or
    seeded random token ids for a model without one. Each sequence fits the context."""
    c = model.config
    tok = model.tokenizer
    if tok is not None:
        ids = list(tok.encode(CALIB_TEXT))
        bos = getattr(tok, "bos_id", None)
        head = [bos] if bos is not None else []
        seqs = []
        n = c.max_seq_len - len(head)
        for i in range(0, len(ids), n):
            seqs.append(head + ids[i:i + n])
        return [s for s in seqs if all(0 <= t < c.vocab_size for t in s)] or _random_ids(c)
    return _random_ids(c)


def _random_ids(c: LlamaConfig) -> list[list[int]]:
    rng = np.random.default_rng(CALIB_SEED)
    ids = rng.integers(0, c.vocab_size, size=CALIB_RANDOM_TOKENS).tolist()
    return [ids[i:i + c.max_seq_len] for i in range(0, len(ids), c.max_seq_len)]


def _as_sequences(calib_ids, c: LlamaConfig) -> list[list[int]]:
    if len(calib_ids) and np.ndim(calib_ids[0]) == 0:
        calib_ids = [calib_ids]
    seqs = []
    for s in calib_ids:
        s = [int(t) for t in s]
        for i in range(0, len(s), c.max_seq_len):
            if s[i:i + c.max_seq_len]:
                seqs.append(s[i:i + c.max_seq_len])
    if not seqs:
        raise ValueError("calibration needs at least one token")
    return seqs


def calibrate(model: LlamaModel, calib_ids=None, percentile: float = ACT_PERCENTILE) -> dict:
    """Run the float reference over the calibration tokens and return activation statistics.

    Returns ``{name: array}`` with, per layer (shape ``(n_layers,)``) or per model (shape
    ``()``), the ``percentile`` of |activation| (100 = max). ``x`` (residual stream) and the
    int16 activations always use the max. ``calib_ids``: a list of ids or a list of sequences;
    ``None`` uses :func:`default_calib_ids`.
    """
    c = model.config
    seqs = _as_sequences(default_calib_ids(model) if calib_ids is None else calib_ids, c)
    acc: dict[tuple, list] = {}

    def obs(name, layer, arr):
        acc.setdefault((name, layer), []).append(np.abs(np.asarray(arr, np.float32)).ravel())

    dec = FloatDecoder(model, observer=obs)
    for s in seqs:
        dec.reset()
        for t in s:
            dec.step(t)
    always_max = {"x", "q", "k", "up", "logits", "scores", "gate"}
    stats: dict[str, np.ndarray] = {}
    for n in _CHANNEL_STATS:                 # per-channel maxima, for smoothing
        layers = sorted(l for nn, l in acc if nn == n)
        ch = np.stack([np.max(np.stack(acc[(n, l)]), axis=0) for l in layers])
        stats[n + "_ch"] = ch[0] if layers == [-1] else ch
    names = sorted({n for n, _ in acc})
    for n in names:
        layers = sorted(l for nn, l in acc if nn == n)
        vals = []
        for l in layers:
            a = np.concatenate(acc[(n, l)])
            p = 100.0 if n in always_max else percentile
            vals.append(float(np.percentile(a, p)) if p < 100 else float(a.max()))
        if n == "x":
            stats[n] = np.array(max(vals))
        elif layers == [-1]:
            stats[n] = np.array(vals[0])
        else:
            stats[n] = np.array(vals)
    stats["n_tokens"] = np.array(sum(len(s) for s in seqs))
    return stats


# ---------------------------------------------------------------------------------------------
# quantisation


def _quant_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 symmetric per output row: (q, scale) with ``w ~= q * scale[:, None]``."""
    w = w.astype(np.float64)
    amax = np.max(np.abs(w), axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _qm(ratios) -> tuple[np.ndarray, np.ndarray]:
    pairs = [intops.quantize_multiplier(float(r)) for r in np.ravel(ratios)]
    m = np.array([p[0] for p in pairs], np.int32).reshape(np.shape(ratios))
    s = np.array([p[1] for p in pairs], np.int32).reshape(np.shape(ratios))
    return m, s


def _pos(v: float, floor: float = 1e-8) -> float:
    return max(float(v), floor)


def make_rsqrt_table(bits: int = RSQRT_BITS) -> np.ndarray:
    """T[i] = round(2**15 / sqrt((i + 0.5) / 2**(bits-2))) for i >= 2**(bits-2); 0 below."""
    i = np.arange(1 << bits, dtype=np.float64)
    t = np.where(i >= (1 << (bits - 2)), np.round(32768.0 / np.sqrt((i + 0.5) / (1 << (bits - 2)))), 0)
    assert t.max() <= 32767
    return t.astype(np.int32)


def make_recip_table(bits: int = RECIP_BITS) -> np.ndarray:
    """T[i] = round(2**(14+bits) / (i + 0.5)) for i >= 2**(bits-1); 0 below. Values < 2**15."""
    i = np.arange(1 << bits, dtype=np.float64)
    t = np.where(i >= (1 << (bits - 1)), np.round(2.0 ** (14 + bits) / (i + 0.5)), 0)
    assert t.max() <= 32767
    return t.astype(np.int32)


def make_exp_table(exp_bits: int, size: int = EXP_SIZE, frac: int = EXP_FRAC) -> np.ndarray:
    """T[i] = round(2**exp_bits * exp(-i / 2**frac)); T[0] = 2**exp_bits."""
    i = np.arange(size, dtype=np.float64)
    return np.round((1 << exp_bits) * np.exp(-i / (1 << frac))).astype(np.int32)


def exp_bits_for(max_seq_len: int, v_bits: int = KV_BITS) -> int:
    """Largest Q format (<= 15) such that sum_t exp_t * v_t stays within int32:
    ``max_seq_len * 2**exp_bits * 2**(v_bits-1) < 2**31``."""
    b = 30 - (v_bits - 1) - math.ceil(math.log2(max_seq_len))
    b = min(15, b)
    if b < 8:
        raise ValueError(f"max_seq_len {max_seq_len} too long for an int32 softmax accumulator")
    return b


def quantize(model: LlamaModel, calib_ids=None, *, percentile: float = ACT_PERCENTILE,
             stats: dict | None = None, act_bits: dict | None = None) -> QuantModel:
    """Quantise ``model`` (calibrating on ``calib_ids``, default :func:`default_calib_ids`)."""
    model.validate()
    c = model.config
    st = stats if stats is not None else calibrate(model, calib_ids, percentile)
    nl, hd = c.n_layers, c.head_dim
    ab = {**ACT_BITS, **(act_bits or {})}
    top = {k: float(intops.qmax(v)) for k, v in ab.items()}      # 127 or 32767
    f = lambda k: np.asarray(st[k], np.float64)

    # residual stream, shared by the embedding table and every residual add
    x_max = max(float(st["x"]), float(np.abs(model.tok_embeddings).max()))
    s_x = _pos(x_max * X_MARGIN / 32767)
    emb = np.clip(np.round(model.tok_embeddings.astype(np.float64) / s_x), -32767, 32767).astype(np.int16)

    # sum-of-squares pre-shift: dim * (2**15 >> sh)**2 must fit int32
    sh = 0
    while c.dim * (32768 >> sh) ** 2 > (1 << 31) - 1:
        sh += 1
    eps_int = max(1, int(round(c.norm_eps * c.dim / (s_x * (1 << sh)) ** 2)))

    def norm_setup(g, xhat_max, xg_max, consumers, key):
        """Per-channel (m, s) of an RMSNorm, its output scale and the column factor for the
        consuming weights. y_c = x_c * T * |g_c|' * sqrt(dim) / (2**sh * s_out) * 2**-15 *
        2**-half_k, where the gain is either folded into the consumers' columns (|g_c|' = 1,
        columns times g) or applied here per channel (|g_c|' = |g_c|, columns times sign(g)).
        'auto' picks the option with the smaller estimated output quantisation noise."""
        g = g.astype(np.float64)
        col2 = sum(np.sum(w.astype(np.float64) ** 2, axis=0) for w in consumers)
        noise_fold = xhat_max ** 2 * float(np.sum(g * g * col2))
        noise_apply = xg_max ** 2 * float(np.sum(col2))
        fold = NORM_FOLD if isinstance(NORM_FOLD, bool) else bool(noise_fold <= noise_apply)
        s_out = _pos((xhat_max if fold else xg_max) / top[key])
        gain = np.ones_like(g) if fold else np.abs(g)
        m, s_ = _qm(gain * math.sqrt(c.dim) / ((1 << sh) * s_out) / 32768.0)
        col = g if fold else np.where(g < 0, -1.0, 1.0)
        return fold, s_out, m, s_, col

    def smooth_factors(A, consumers):
        """f_c > 0 with max|a_c / f_c| == max|W'[:, c]| balanced (strength SMOOTH)."""
        if SMOOTH is None:
            return np.ones(len(A))
        B = np.max(np.concatenate([np.abs(w.astype(np.float64)) for w in consumers]), axis=0)
        A = np.maximum(np.asarray(A, np.float64), 1e-6)
        B = np.maximum(B, 1e-6)
        fct = A ** SMOOTH / B ** (1 - SMOOTH)
        return fct / np.exp(np.mean(np.log(fct)))          # geometric mean 1 (cosmetic)

    def norm_smooth(g, A, consumers, key):
        """RMSNorm with smoothing: output z_c = x_hat_c * g_c / (sign(g_c) f_c), consumers'
        columns times sign(g_c) f_c. A: per-channel max |x_hat * g|."""
        g = g.astype(np.float64)
        fct = smooth_factors(A, consumers)
        s_out = _pos(float(np.max(np.asarray(A) / fct)) / top[key])
        m, s_ = _qm(np.abs(g) / fct * math.sqrt(c.dim) / ((1 << sh) * s_out) / 32768.0)
        return "smooth", s_out, m, s_, np.where(g < 0, -1.0, 1.0) * fct

    if SMOOTH is None:
        norms1 = [norm_setup(L.attn_norm, f("h_attn")[l], f("h_attn_g")[l], (L.wq, L.wk, L.wv), "norm_attn")
                  for l, L in enumerate(model.layers)]
        norms2 = [norm_setup(L.ffn_norm, f("h_ffn")[l], f("h_ffn_g")[l], (L.w_gate, L.w_up), "norm_ffn")
                  for l, L in enumerate(model.layers)]
        normf = norm_setup(model.norm, float(st["h_final"]), float(st["h_final_g"]), (model.lm_head,),
                           "norm_final")
    else:
        norms1 = [norm_smooth(L.attn_norm, st["h_attn_g_ch"][l], (L.wq, L.wk, L.wv), "norm_attn")
                  for l, L in enumerate(model.layers)]
        norms2 = [norm_smooth(L.ffn_norm, st["h_ffn_g_ch"][l], (L.w_gate, L.w_up), "norm_ffn")
                  for l, L in enumerate(model.layers)]
        normf = norm_smooth(model.norm, st["h_final_g_ch"], (model.lm_head,), "norm_final")
    f_o = [smooth_factors(st["attn_out_ch"][l], (L.wo,)) for l, L in enumerate(model.layers)]
    f_mid = [smooth_factors(st["mid_ch"][l], (L.w_down,)) for l, L in enumerate(model.layers)]
    s_h1 = np.array([n[1] for n in norms1])
    s_h2 = np.array([n[1] for n in norms2])
    s_q = np.maximum(f("q") * WIDE_MARGIN / 32767, 1e-8)
    s_k = np.maximum(f("k") * WIDE_MARGIN / 32767, 1e-8)
    s_qr = np.maximum(f("q_rot") / top["q_rot"], 1e-8)
    s_kr = np.maximum(f("k_rot") / 127, 1e-8)
    s_v = np.maximum(f("v") / 127, 1e-8)
    s_o = np.array([_pos(np.max(st["attn_out_ch"][l] / f_o[l]) / top["attn_out"]) for l in range(nl)])
    s_g = np.maximum(f("gate") / 127, 1e-8)
    s_u = np.maximum(f("up") * WIDE_MARGIN / 32767, 1e-8)
    s_mid = np.array([_pos(np.max(st["mid_ch"][l] / f_mid[l]) / top["mid"]) for l in range(nl)])
    s_hf = normf[1]
    s_logit = _pos(float(st["logits"]) / (1 << LOGIT_FRAC))

    W = {k: [] for k in _WEIGHTS}
    MS = {k: ([], []) for k in _WEIGHTS}
    silu = []
    rq, rk, ex, at, md = ([] for _ in range(5))
    g_tab = np.arange(256)
    g_val = np.where(g_tab < 128, g_tab, g_tab - 256).astype(np.float64)   # raw byte -> int8
    for l, L in enumerate(model.layers):
        g1 = norms1[l][4][None, :]
        g2 = norms2[l][4][None, :]
        src = {"wq": (L.wq * g1, s_h1[l], s_q[l]), "wk": (L.wk * g1, s_h1[l], s_k[l]),
               "wv": (L.wv * g1, s_h1[l], s_v[l]), "wo": (L.wo * f_o[l][None, :], s_o[l], s_x),
               "w_gate": (L.w_gate * g2, s_h2[l], s_g[l]), "w_up": (L.w_up * g2, s_h2[l], s_u[l]),
               "w_down": (L.w_down * f_mid[l][None, :], s_mid[l], s_x)}
        for k, (w, s_in, s_out) in src.items():
            q, sc = _quant_rows(w)
            m, s = _qm(sc * s_in / s_out)
            W[k].append(q)
            MS[k][0].append(m)
            MS[k][1].append(s)
        rq.append(intops.quantize_multiplier(s_q[l] / (1 << ROPE_FRAC) / s_qr[l]))
        rk.append(intops.quantize_multiplier(s_k[l] / (1 << ROPE_FRAC) / s_kr[l]))
        ex.append(intops.quantize_multiplier(s_qr[l] * s_kr[l] / math.sqrt(hd) * (1 << EXP_FRAC)))
        at.append(_qm(s_v[l] / (s_o[l] * f_o[l])))
        gv = g_val * s_g[l]
        sv = gv / (1.0 + np.exp(-gv))
        s_silu = _pos(np.abs(sv).max() / 32767)
        silu.append(np.clip(np.round(sv / s_silu), -32767, 32767).astype(np.int16))
        md.append(_qm(s_silu * s_u[l] / (s_mid[l] * f_mid[l])))

    pair = lambda lst: (np.array([p[0] for p in lst], np.int32), np.array([p[1] for p in lst], np.int32))
    lm_q, lm_sc = _quant_rows(model.lm_head.astype(np.float64) * normf[4][None, :])
    s_logit = max(s_logit, float(lm_sc.max()) * s_hf / (1 << 14))   # keep the ratio < 2**15
    lm_m, lm_s = _qm(lm_sc * s_hf / s_logit)
    cos, sin = rope_tables(c.max_seq_len, hd, c.rope_theta)
    eb = exp_bits_for(c.max_seq_len)
    kw = {}
    for k in _WEIGHTS:
        kw[k] = np.stack(W[k])
        kw[k + "_m"] = np.stack(MS[k][0])
        kw[k + "_s"] = np.stack(MS[k][1])
    kw["norm1_m"] = np.stack([n[2] for n in norms1])
    kw["norm1_s"] = np.stack([n[3] for n in norms1])
    kw["norm2_m"] = np.stack([n[2] for n in norms2])
    kw["norm2_s"] = np.stack([n[3] for n in norms2])
    for name, lst in (("rope_q", rq), ("rope_k", rk), ("exp", ex)):
        kw[name + "_m"], kw[name + "_s"] = pair(lst)
    for name, lst in (("attn", at), ("mid", md)):           # per channel (smoothing)
        kw[name + "_m"] = np.stack([p[0] for p in lst])
        kw[name + "_s"] = np.stack([p[1] for p in lst])
    scales = {"x": s_x, "h_attn": s_h1.tolist(), "h_ffn": s_h2.tolist(), "q": s_q.tolist(),
              "k": s_k.tolist(), "q_rot": s_qr.tolist(), "k_rot": s_kr.tolist(), "v": s_v.tolist(),
              "attn_out": s_o.tolist(), "gate": s_g.tolist(), "up": s_u.tolist(),
              "mid": s_mid.tolist(), "h_final": s_hf, "logit": s_logit,
              "calib_tokens": int(st["n_tokens"]), "percentile": percentile,
              "norm_folded": {"attn": [n[0] for n in norms1], "ffn": [n[0] for n in norms2],
                              "final": normf[0]}}
    return QuantModel(
        config=c, name=model.name, emb=emb, **kw, silu=np.stack(silu),
        normf_m=normf[2], normf_s=normf[3], lm_head=lm_q, lm_head_m=lm_m, lm_head_s=lm_s,
        rsqrt=make_rsqrt_table(RSQRT_BITS), recip=make_recip_table(RECIP_BITS),
        exp=make_exp_table(eb, EXP_SIZE, EXP_FRAC), rsqrt_bits=RSQRT_BITS, recip_bits=RECIP_BITS,
        exp_frac=EXP_FRAC, kv_bits=KV_BITS,
        rope_cos=np.round(cos.astype(np.float64) * (1 << ROPE_FRAC)).astype(np.int16),
        rope_sin=np.round(sin.astype(np.float64) * (1 << ROPE_FRAC)).astype(np.int16),
        ss_shift=sh, eps_int=eps_int, exp_bits=eb, act_bits=ab, scales=scales)


# ---------------------------------------------------------------------------------------------
# serialisation


def save(qm: QuantModel, path) -> None:
    """Write ``qm`` to an ``.npz``: every array as itself, the rest as JSON in ``__meta__``."""
    arrays, meta = {}, {}
    for fld in dataclasses.fields(qm):
        v = getattr(qm, fld.name)
        if isinstance(v, np.ndarray):
            arrays[fld.name] = v
        elif isinstance(v, LlamaConfig):
            meta[fld.name] = dataclasses.asdict(v)
        else:
            meta[fld.name] = v
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load(path) -> QuantModel:
    with np.load(path) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
    meta["config"] = LlamaConfig(**meta["config"])
    return QuantModel(**meta, **arrays)


QuantModel.save = save
QuantModel.load = staticmethod(load)

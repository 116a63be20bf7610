"""What the attention weighted-sum-of-V tests share (``sw/kernels/attn_wsum.py``): the golden
output, softmax-like random e and REQUANT pairs, a real decode step's operands, and the HBM
map of a case (e, the sums beat, the output, the per-layer constants blobs at a stride, then
the per-layer KV blocks at a stride) with the kernel built on it. Used by the chip test
(``tb/test_attn_wsum.py``) and the register-level emulation
(``tests/test_attn_wsum_kernel.py``), which fill the map each with its own images."""

from __future__ import annotations

import dataclasses

import numpy as np

from sw.golden import GoldenDecoder
from sw.kernels.attn_wsum import build_attn_wsum
from sw.kernels.kernel import Ref
from sw.kernels.patterns import golden_step_trace

__all__ = ["golden_wsum", "random_e", "random_pairs", "v_cache", "step_operands", "WsumHbm",
           "wsum_hbm"]


def _up(v, a):
    return -(-v // a) * a


def golden_wsum(qm, e, V, m, s, n_rep, out_bits=8):
    """``GoldenDecoder.attn_wsum`` for e (T, n_heads), V (T, n_kv, hd), per-channel m, s;
    flattened to the channel order ``h * hd + d``."""
    q = dataclasses.replace(qm, act_bits={**qm.act_bits, "attn_out": out_bits})
    dec = GoldenDecoder(q)
    nh, hd = e.shape[1], V.shape[2]
    E = np.asarray(e, np.int64).T
    Vh = np.asarray(V)[:, np.arange(nh) // n_rep, :].transpose(1, 0, 2)
    return dec.attn_wsum(E, E.sum(1), Vh, np.reshape(m, (nh, hd)),
                         np.reshape(s, (nh, hd))).reshape(-1)


def random_e(qm, rng, T, nh):
    """Softmax numerators (T, nh) as the softmax makes them: EXP[i], each head's maximum
    (i = 0) at least once."""
    idx = rng.integers(0, qm.exp.size, (T, nh))
    idx[rng.integers(0, T, nh), np.arange(nh)] = 0
    return qm.exp[idx].astype(np.int64)


def random_pairs(rng, channels, layers):
    """Per layer random per-channel REQUANT pairs ``(m, s)``: o ~ (e-weighted mean of V) *
    m / 2**s, s 14..16 keeps most outputs in range."""
    return [(rng.integers(1 << 14, 1 << 15, channels), rng.integers(14, 17, channels))
            for _ in range(layers)]


def v_cache(rng, lay, context, T, real=None):
    """A layer's V cache (context, kv_row_bytes) int8: random junk, but rows < T from
    ``real`` (rows, kv_dim) when given."""
    rows = rng.integers(-128, 128, (context, lay.kv_row_bytes)).astype(np.int8)
    if real is not None:
        rows[:T, :lay.kv_dim] = real[:T]
    return rows


def step_operands(qm, ids):
    """At the last token of ``ids``, per layer ``l``: ``{"e": (T, n_heads), "sums",
    "attn_out"}``; and ``"rows"``: the V cache rows (layers, T, kv_dim). All the golden
    decoder's own values."""
    dec, seen, _ = golden_step_trace(qm, ids)
    c = qm.config
    T = dec.pos
    kv_of = np.arange(c.n_heads) // c.n_rep
    out = {"rows": dec.v_cache[:, :, :T].transpose(0, 2, 1, 3).reshape(c.n_layers, T, -1)}
    for l in range(c.n_layers):
        sc = dec.attn_scores(seen[("q_rot", l)][0], dec.k_cache[l, kv_of, :T])
        e, tot = dec.softmax_num(sc, qm.exp_m[l], qm.exp_s[l])
        out[l] = {"e": e.T, "sums": tot, "attn_out": seen[("attn_out", l)][0].reshape(-1)}
    return out


@dataclasses.dataclass(frozen=True)
class WsumHbm:
    """The HBM map of a case of ``T`` positions, ``layers`` layers (byte addresses): e at 0
    (T beats), the sums beat, the output (``out_beats``), the constants blobs (layer ``l`` at
    ``const + l * const_stride``, 3 beats of gap after each), the KV blocks (layer ``l`` at
    ``kv + l * kv_stride``: K cache, V cache from ``v_offset``). The kernel's Refs carry the
    strides only when there are several layers."""
    lay: object                    # the kernel's WsumLayout
    T: int
    context: int
    layers: int
    out_bits: int
    e: int
    sums: int
    out: int
    out_beats: int
    const: int
    const_stride: int
    kv: int
    kv_stride: int
    v_offset: int

    @property
    def size(self) -> int:
        return self.kv + self.layers * self.kv_stride

    def expected(self, p, g) -> bytes:
        """The golden output ``g`` as the kernel writes it: int``out_bits``, zero-padded to
        ``out_beats`` beats."""
        dt = {8: "<i1", 16: "<i2"}[self.out_bits]
        exp = np.zeros(self.out_beats * p.beat_bytes // (self.out_bits // 8), dt)
        exp[:len(g)] = g
        return exp.tobytes()

    def build(self, p):
        """``build_attn_wsum`` on this map (``pos = T - 1``, ``layers`` iterations)."""
        lay, many = self.lay, self.layers > 1
        return build_attn_wsum(p, n_heads=lay.n_heads, n_kv_heads=lay.n_kv_heads,
                               head_dim=lay.head_dim, context=self.context, pos=self.T - 1,
                               e=Ref(self.e), sums=Ref(self.sums),
                               kv=Ref(self.kv, self.kv_stride if many else 0),
                               const=Ref(self.const, self.const_stride if many else 0),
                               out=Ref(self.out), out_bits=self.out_bits,
                               iterations=self.layers)


def wsum_hbm(p, lay, *, T, context, layers, blob_bytes, out_bits) -> WsumHbm:
    """The map of a case (``lay``: ``wsum_layout`` of its shape; ``blob_bytes``: one
    constants blob)."""
    bb = p.beat_bytes
    sa = _up(T * bb, 1024)
    oa = sa + 1024
    out_beats = _up(lay.channels * out_bits // 8, bb) // bb
    ca = _up(oa + out_beats * bb, 1024)
    cstride = blob_bytes + 3 * bb
    voff = lay.v_offset(p, context)
    kva = _up(ca + layers * cstride, 4096)
    kvstride = _up(voff + context * lay.kv_row_bytes, 1024) + 2 * bb
    return WsumHbm(lay, T, context, layers, out_bits, 0, sa, oa, out_beats, ca, cstride, kva,
                   kvstride, voff)

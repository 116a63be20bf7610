"""Runnable cases around the attention-softmax decode kernel (``sw/kernels/attention.py``):
an HBM map with q, every layer's K cache (and junk V cache and rows past ``pos``), every
layer's constants blob at a layer stride (junk in the gaps), the output region (sums beat +
e beats) and the golden bytes from ``GoldenDecoder.attn_scores`` / ``softmax_num``. Used by
the chip test (``tb/test_attention.py``) and the register-level emulation
(``tests/test_attention_kernel.py``)."""

from __future__ import annotations

import dataclasses

import numpy as np

from hdl.params import RduParams
from sw.golden import GoldenDecoder
from sw.kernels.attention import (attn_softmax_constants, attn_softmax_layout,
                                  build_attn_softmax, kv_row_bytes)
from sw.kernels.kernel import Ref
from sw.kernels.patterns import HbmImage, HbmRegion, PatternKernel

__all__ = ["AttnCase", "attn_case", "golden_attn"]


def _up(v, a):
    return -(-v // a) * a


def _junk(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def golden_attn(qm, q8, kcache, pos, n_rep, exp, m, s):
    """``(scores, e, sums)`` of the golden decoder: ``q8`` (n_heads, hd), ``kcache``
    (context, n_kv, hd) of the layer; ``exp`` replaces ``qm.exp``."""
    nh = q8.shape[0]
    K = np.transpose(kcache[: pos + 1], (1, 0, 2))[np.arange(nh) // n_rep]   # (nh, T, hd)
    dec = GoldenDecoder(dataclasses.replace(qm, exp=np.asarray(exp)))
    sc = dec.attn_scores(np.asarray(q8), K)
    e, tot = dec.softmax_num(sc, int(m), int(s))
    return sc, e, tot


@dataclasses.dataclass
class AttnCase:
    pk: PatternKernel              # for ``write_case`` / ``run_cases``
    k: object                      # the DecodeKernel
    iteration: int
    scores: np.ndarray             # golden (n_heads, T)
    e: np.ndarray                  # golden (n_heads, T)
    sums: np.ndarray               # golden (n_heads,)
    hbm: dict                      # name -> Ref


def attn_case(p: RduParams, qm, *, q8, kcaches, pairs, pos, layer=0, exp=None,
              sums_before=True, e_stride=0) -> AttnCase:
    """One case: ``q8`` (n_heads, hd) int8; ``kcaches``: per layer (context, n_kv, hd) int8;
    ``pairs``: per layer the softmax ``(m, s)``; the kernel is launched at iteration
    ``layer``. ``sums_before``: sums at e - 64 (else after e's T beats). ``e_stride``: a
    per-iteration stride of e and sums (bytes)."""
    q8 = np.asarray(q8)
    kcaches = [np.asarray(kc) for kc in kcaches]
    nh, hd = q8.shape
    context, n_kv, _ = kcaches[0].shape
    n_layers = len(kcaches)
    assert len(pairs) == n_layers
    exp = qm.exp if exp is None else np.asarray(exp)
    bb = p.beat_bytes
    lay = attn_softmax_layout(p, n_heads=nh, n_kv_heads=n_kv, head_dim=hd, context=context,
                              pos=pos, exp_entries=len(exp))
    T = pos + 1
    # q at 0
    qa = 0
    qimg = np.zeros(lay.q_beats * bb, np.int8)
    qimg[: nh * hd] = q8.reshape(-1)
    # output region: sums + e (+ per-iteration copies), its own 1 KiB-aligned region
    oa = _up(qa + len(qimg), 1024)
    out_span = (T + 1) * bb
    o_stride = e_stride
    ea = oa + bb if sums_before else oa
    sa = oa if sums_before else oa + T * bb
    # blobs at a layer stride with junk between
    ca = _up(oa + out_span + max(n_layers - 1, 0) * abs(o_stride) + bb, 1024)
    blobs = [attn_softmax_constants(p, n_heads=nh, n_kv_heads=n_kv, head_dim=hd, exp=exp,
                                    m=m, s=s) for m, s in pairs]
    c_stride = _up(len(blobs[0]), bb) + 3 * bb if n_layers > 1 else 0
    # KV cache: per layer K (context rows) then V (junk), at the layer stride
    row = kv_row_bytes(p, n_kv * hd)
    kbytes = _up(context * row, bb)
    kv_stride = 2 * kbytes if n_layers > 1 else 0
    ka = _up(ca + n_layers * max(c_stride, len(blobs[0])) + bb, 4096)
    images = [HbmImage("q", qa, qimg.tobytes())]
    for l, b in enumerate(blobs):
        gap = _junk(c_stride - len(b), 100 + l) if c_stride else b""
        images.append(HbmImage(f"const{l}", ca + l * c_stride, b + gap))
    for l, kc in enumerate(kcaches):
        rows = np.frombuffer(_junk(context * row, 200 + l), np.int8).reshape(context, row).copy()
        # rows past pos hold junk (never gathered); rows 0..pos hold the cache
        rows[: T, : n_kv * hd] = kc[:T].reshape(T, -1)
        rows[: T, n_kv * hd:] = 0
        kimg = rows.tobytes() + bytes(kbytes - context * row)
        vimg = _junk(kbytes, 300 + l)
        images.append(HbmImage(f"kv{l}", ka + l * kv_stride, kimg + vimg))
    hbm = {"q": Ref(qa), "kv": Ref(ka, kv_stride), "const": Ref(ca, c_stride),
           "e": Ref(ea, o_stride), "sums": Ref(sa, o_stride)}
    k = build_attn_softmax(p, n_heads=nh, n_kv_heads=n_kv, head_dim=hd, context=context,
                           pos=pos, iterations=n_layers, exp_entries=len(exp), **hbm)
    m, s = pairs[layer]
    sc, e, tot = golden_attn(qm, q8, kcaches[layer], pos, nh // n_kv, exp, m, s)
    ebeats = np.zeros((T, p.lanes), "<i4")
    ebeats[:, :nh] = e.T
    sbeat = np.zeros(p.lanes, "<i4")
    sbeat[:nh] = tot
    expected = (sbeat.tobytes() + ebeats.tobytes() if sums_before
                else ebeats.tobytes() + sbeat.tobytes())
    region = HbmRegion("sums+e" if sums_before else "e+sums", oa + layer * o_stride, out_span)
    pk = PatternKernel("attn_softmax", p, k.builder, k.roles, images, region, expected, 32,
                       (e, tot), {"n_heads": nh, "n_kv_heads": n_kv, "head_dim": hd,
                                  "pos": pos, "layer": layer}, k.watchdog)
    return AttnCase(pk, k, layer, sc, e, tot, hbm)

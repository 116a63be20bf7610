"""RMSNorm decode kernel (``sw/kernels/rmsnorm.py``) on the default chip (Verilator), bit-exact
with ``GoldenDecoder.rmsnorm``.

``test_rmsnorm_decode_step``: the three norms of a real golden decode step of
``models/kjv-280k`` (the inputs and outputs of the decoder's own trace): norm1 of layer 0
launched at iteration 0, norm1 of layer 3 and norm2 of layer 2 launched at iterations 3 and 2
with every layer's constants blob in HBM at a layer stride (a wrong stride or iteration reads
another layer's words), and the final norm.

``test_rmsnorm_random``: dims 32, 64, 96, 128 (and an unaligned one with 16-bit output) with
x over the full int16 range, extreme (every |x| = 32767: v > 2**30, half_k 15), tiny
(|x| <= 2) and all zero (v = eps), per-channel pairs from the model or random (some outputs
saturate); one case with a corrupted golden image, which must be reported (and only it).

Every case checks the whole padded output region (filled with the complement of the expected
bytes before the run) and the HBM traffic (x and the constants read once, the output written
once).
"""

import dataclasses
import random

import numpy as np
import pytest

from hdl.params import DEFAULT_PARAMS
from sw import intops
from sw.golden import GoldenDecoder
from sw.kernels.kernel import Ref
from sw.kernels.patterns import HbmImage, HbmRegion, PatternKernel, golden_step_trace
from sw.kernels.rmsnorm import build_rmsnorm, rmsnorm_constants, rmsnorm_layout
from tb.kernel_checks import Launch, run_checked

pytestmark = pytest.mark.verilator

P = DEFAULT_PARAMS
PROMPT = "In the beginning God created"


@pytest.fixture(scope="module")
def trace(model, qm):
    """The golden decoder's trace at the last token of BOS + ``PROMPT``: (name, layer) ->
    list of arrays in step order."""
    tok = model.tokenizer
    return golden_step_trace(qm, [tok.bos_id] + tok.encode(PROMPT))[1]


def _up(v, a):
    return -(-v // a) * a


def rms_case(qm, x, pairs, *, layer=0, out_bits=8, extra_stride=3):
    """A runnable case around ``build_rmsnorm``: ``x`` at byte 0, the output after it, then
    one constants blob per entry of ``pairs`` (``(m, s)`` per layer) at a layer stride of the
    blob plus ``extra_stride`` beats; the kernel is launched at iteration ``layer``."""
    bb = P.beat_bytes
    dim = len(x)
    lay = rmsnorm_layout(P, dim, qm.rsqrt_bits, out_bits)
    xa = 0
    oa = _up(xa + lay.x_beats * bb, 1024)
    ca = _up(oa + lay.out_beats * bb, 1024)
    blobs = [rmsnorm_constants(P, qm, m, s) for m, s in pairs]
    stride = len(blobs[0]) + extra_stride * bb if len(pairs) > 1 else 0
    k = build_rmsnorm(P, dim=dim, x=Ref(xa), const=Ref(ca, stride), out=Ref(oa),
                      ss_shift=qm.ss_shift, eps_int=qm.eps_int, rsqrt_bits=qm.rsqrt_bits,
                      out_bits=out_bits, iterations=len(pairs))
    m, s = pairs[layer]
    golden = GoldenDecoder(qm).rmsnorm(np.asarray(x), m, s, out_bits)
    dt = {8: "<i1", 16: "<i2"}[out_bits]
    expected = np.zeros(lay.out_beats * bb // (out_bits // 8), dt)
    expected[:dim] = golden
    xi = np.zeros(lay.x_beats * bb // 2, "<i2")
    xi[:dim] = x
    images = [HbmImage("x", xa, xi.tobytes())]
    # every layer's blob, and junk in the gaps between them
    junk = bytes((7 * i + 3) & 0xFF for i in range(extra_stride * bb))
    images += [HbmImage(f"const{l}", ca + l * stride, b + (junk if stride else b""))
               for l, b in enumerate(blobs)]
    pk = PatternKernel("rmsnorm", P, k.builder, k.roles, images,
                       HbmRegion("out", oa, lay.out_beats * bb), expected.tobytes(), out_bits,
                       golden, {"dim": dim, "layer": layer}, k.watchdog)
    return Launch(pk, k, layer)


def test_rmsnorm_decode_step(tmp_path, qm, trace):
    n = qm.config.n_layers
    x_in = {0: trace[("x", -1)][0]}                   # the embedding row enters layer 0
    for l in range(n):
        x_in[l + 1] = trace[("x", l)][1]              # after the MLP residual of layer l
    norm1 = [(qm.norm1_m[l], qm.norm1_s[l]) for l in range(n)]
    norm2 = [(qm.norm2_m[l], qm.norm2_s[l]) for l in range(n)]
    cases = [
        ("norm1 layer 0, iteration 0", rms_case(qm, x_in[0], norm1, layer=0),
         trace[("h_attn", 0)][0]),
        ("norm1 layer 3, iteration 3", rms_case(qm, x_in[3], norm1, layer=3),
         trace[("h_attn", 3)][0]),
        ("norm2 layer 2, iteration 2", rms_case(qm, trace[("x", 2)][0], norm2, layer=2),
         trace[("h_ffn", 2)][0]),
        ("final norm", rms_case(qm, x_in[n], [(qm.normf_m, qm.normf_s)]),
         trace[("h_final", -1)][0]),
    ]
    for label, c, h in cases:                       # the decoder's own normalised vectors
        assert np.array_equal(c.pk.golden, h), label
    # the layers' words differ: a kernel reading another layer's blob would fail
    assert not np.array_equal(norm1[3][0], norm1[0][0])
    results = run_checked(P, tmp_path, [(label, c) for label, c, _ in cases])
    # dim 64: ~150 cycles of HBM latency, then a chain of PCUs and PMUs (sum of squares,
    # index, LUT, scaling): a few hundred cycles.
    cyc = results[0]["counters"]["run_busy_cycles"]
    print(f"rmsnorm dim 64: {cyc} cycles per launch")
    assert cyc < 600, cyc


def test_rmsnorm_random(tmp_path, qm):
    rng = np.random.default_rng(41)
    pyrng = random.Random(41)
    n = qm.config.n_layers

    def q(dim):
        """The model's constants with the sum-of-squares shift the quantiser would choose for
        ``dim`` (so a full-scale x cannot overflow the int32 sum)."""
        sh = 0
        while dim * (32768 >> sh) ** 2 > (1 << 31) - 1:
            sh += 1
        return dataclasses.replace(qm, ss_shift=sh)

    def model_pairs(dim, which):
        l = pyrng.randrange(n)
        m, s = {1: (qm.norm1_m, qm.norm1_s), 2: (qm.norm2_m, qm.norm2_s)}[which]
        return [(np.resize(m[l], dim), np.resize(s[l], dim))]

    def random_pairs(dim):
        return [(rng.integers(0, 1 << 15, dim), rng.integers(12, 40, dim))]

    full = lambda d: rng.integers(-(1 << 15), 1 << 15, d)
    extreme = lambda d: rng.choice([-32767, 32767], d)
    tiny = lambda d: rng.integers(-2, 3, d)
    cases = [
        ("dim 32 full range, model norm1", rms_case(q(32), full(32), model_pairs(32, 1))),
        ("dim 64 tiny, model norm2", rms_case(q(64), tiny(64), model_pairs(64, 2))),
        ("dim 96 zero (v = eps)", rms_case(q(96), np.zeros(96, np.int64), model_pairs(96, 1))),
        ("dim 96 extreme, random pairs", rms_case(q(96), extreme(96), random_pairs(96))),
        ("dim 128 full range, random pairs", rms_case(q(128), full(128), random_pairs(128))),
        ("dim 64 normal, corrupted golden",
         rms_case(q(64), np.clip(np.round(rng.normal(0, 3000, 64)), -32768, 32767).astype(int),
                  random_pairs(64))),
        ("dim 40 (a partial beat), 16-bit out",
         rms_case(q(40), full(40), random_pairs(40), out_bits=16)),
        # the largest dim a PMU holds the constants of: x (120 beats) waits in MX while the
        # sum of squares runs, far beyond what the FIFOs hold
        ("dim 3840 full range, random pairs", rms_case(q(3840), full(3840), random_pairs(3840))),
    ]
    # the cases span the scalar path: v from eps alone to above 2**30, half_k from 1 to 15
    hks = []
    for label, c in cases:
        x = np.frombuffer(c.pk.images[0].data, "<i2")[:c.pk.shape["dim"]]
        qq = q(c.pk.shape["dim"])
        v = int(np.sum(intops.rshift_round(x, qq.ss_shift) ** 2)) + qq.eps_int
        hks.append(int(intops.rsqrt_index(v, qq.rsqrt_bits)[1]))
    assert min(hks) == 1 and max(hks) == 15, hks
    # the random pairs saturate some outputs (REQUANT's clamp), not all of them
    top = [np.abs(c.pk.golden) >= 127 for _, c in cases[3:5]]
    print("saturated", [int(t.sum()) for t in top], "hk", hks)
    assert all(0 < t.sum() < t.size for t in top)
    results = run_checked(P, tmp_path, cases, corrupt={"dim 64 normal, corrupted golden": 2})
    # streaming: P1 and P3 each take one 16-lane beat per cycle (240 at dim 3840), one after
    # the other, behind the HBM latency and the 256-beat constants read
    cyc = results[-1]["counters"]["run_busy_cycles"]
    print(f"rmsnorm dim 3840: {cyc} cycles per launch")
    assert cyc < 300 + 2 * 240 + 256, cyc

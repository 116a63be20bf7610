"""Decode patterns as kernels on the Verilator chip (``sw/kernels/patterns.py``): residual add,
SwiGLU (SiLU from a PMU LUT) and argmax, on the reduced 2x3 chip (``REDUCED_PARAMS``).

Each test runs several sizes/seeds of one pattern in one simulation (one bring-up): the model's
own sizes (dim 64, hidden 192, vocab 512) with operands from a real golden decode step of
``models/kjv-280k``, random operands at those sizes, other sizes (unaligned ones included,
which the kernel pads to whole beats) and, for SwiGLU, the SiLU table and per-channel REQUANT
pairs of the quantised model. The testbench compares the output region, read back by DMA,
exactly with the golden model's step; here the HBM traffic is checked as well (every operand
read once, the output written once: nothing lost, nothing read twice).
"""

import random

import numpy as np
import pytest

from sw.golden import GoldenDecoder
from sw.kernels.gemv import REDUCED_PARAMS
from sw.kernels.patterns import (argmax_data, build_argmax, build_embed, build_residual,
                                 build_swiglu, decode_step_operands, residual_data,
                                 swiglu_constants, swiglu_data)
from tb.kernel_checks import image_traffic, run_checked

pytestmark = pytest.mark.verilator

P = REDUCED_PARAMS
PROMPT = "And God said, Let there be light"


@pytest.fixture(scope="module")
def step(model, qm):
    """Operands of layer 3 at the last token of a golden decode of BOS + ``PROMPT``."""
    tok = model.tokenizer
    return decode_step_operands(qm, [tok.bos_id] + tok.encode(PROMPT), layer=3)


def test_residual(tmp_path, step):
    rng = random.Random(31)
    ks = [("residual dim 64, decode step", build_residual(P, step["x"], step["y"]))]
    assert np.array_equal(ks[0][1].golden, step["x_next"])     # the decoder's own next x
    for dim in (64, 64, 96, rng.randint(1, 500), 2048):
        seed = rng.randrange(1 << 16)
        x, y = residual_data(dim, seed)
        ks.append((f"residual dim {dim} seed {seed}", build_residual(P, x, y)))
    results = run_checked(P, tmp_path, ks, traffic=image_traffic)
    # Streaming: after the fill (~180 cycles, HBM latency) the PCU takes one int16 beat of x
    # and of y every 2 cycles (each unpacks into two 16-lane beats). 2048: 312 cycles today.
    assert results[-1]["counters"]["run_busy_cycles"] < 250 + 2 * 2048 // 32


def test_swiglu(tmp_path, qm, step):
    rng = random.Random(32)
    silu, m, s = swiglu_constants(qm, 3)
    k = build_swiglu(P, qm, step["g8"], step["u16"], silu, m, s)
    assert np.array_equal(k.golden, step["mid"])                # the decoder's own mid
    ks = [("swiglu hidden 192, decode step", k)]
    n_layers = qm.config.n_layers
    for hidden in (192, 192, 64, 320, rng.randint(1, 400), 1024):
        seed, layer = rng.randrange(1 << 16), rng.randrange(n_layers)
        g8, u16 = swiglu_data(hidden, seed)
        silu, m, s = swiglu_constants(qm, layer, hidden)
        ks.append((f"swiglu hidden {hidden} layer {layer} seed {seed}",
                   build_swiglu(P, qm, g8, u16, silu, m, s)))
    results = run_checked(P, tmp_path, ks, traffic=image_traffic)
    # Gather-bound: a beat of 16 random indices takes as many cycles as the most-wanted PMU
    # bank has distinct rows (about 3.5 on average, 16 at worst). 1024: 482 cycles today.
    assert results[-1]["counters"]["run_busy_cycles"] < 250 + 5 * 1024 // 16


def test_argmax(tmp_path, step):
    rng = random.Random(33)
    ks = [("argmax vocab 512, decode step", build_argmax(P, step["logits"]))]
    # vocab 4096 first among the random ones: its cycles are checked below
    for vocab, spread in ((4096, 1 << 20), (512, 1 << 31), (512, 4), (16, 1 << 31),
                          (rng.randint(17, 1500), 1 << 31)):
        seed = rng.randrange(1 << 16)
        ks.append((f"argmax vocab {vocab} spread {spread} seed {seed}",
                   build_argmax(P, argmax_data(vocab, seed, spread))))
    # every value equal (the lowest index, 0, wins), and all at INT32_MIN (the padding value)
    ks.append(("argmax all equal", build_argmax(P, np.full(100, 7, np.int32))))
    ks.append(("argmax all int32 min", build_argmax(P, np.full(40, -(1 << 31), np.int32))))
    # the maximum in the last element of a partial beat
    v = argmax_data(75, 5, 1000)
    v[74] = 5000
    ks.append(("argmax max in the last, partial beat", build_argmax(P, v)))
    for label, k in ks:                         # the INT32_MIN padding never wins
        assert GoldenDecoder.argmax(np.frombuffer(k.images[0].data, "<i4")) == k.golden, label
    results = run_checked(P, tmp_path, ks, traffic=image_traffic)
    # One beat of 16 logits per cycle after the fill. 4096: 443 cycles today.
    assert results[1]["counters"]["run_busy_cycles"] < 250 + 4096 // 16


def test_embed(tmp_path, qm):
    """The embedding gather: the decode's own table (rows padded to beats), first, last and
    random tokens, and a table whose rows are not whole beats (dim 40)."""
    rng = np.random.default_rng(34)
    vocab = qm.emb.shape[0]
    ks = [(f"embed token {t}", build_embed(P, qm.emb, t)) for t in (0, vocab - 1, 97)]
    odd = rng.integers(-(1 << 15), 1 << 15, (50, 40)).astype(np.int16)
    ks.append(("embed dim 40 token 49", build_embed(P, odd, 49)))
    for label, k in ks:
        assert np.array_equal(k.golden, GoldenDecoder(qm).embed(k.shape["token"])) \
            or k.shape["dim"] != qm.emb.shape[1], label
    # one row read, one row written: nothing else
    run_checked(P, tmp_path, ks, traffic=lambda c: (c.pk.output.nbytes, c.pk.output.nbytes))


def test_wrong_golden_fails(tmp_path, qm):
    """The check really compares: one corrupted element of each pattern's golden output makes
    the run fail, naming each case and element."""
    x, y = residual_data(64, 1)
    g8, u16 = swiglu_data(192, 2)
    silu, m, s = swiglu_constants(qm, 0)
    kernels = [("residual", build_residual(P, x, y)),
               ("swiglu", build_swiglu(P, qm, g8, u16, silu, m, s)),
               ("argmax", build_argmax(P, argmax_data(512, 3)))]
    # the low byte of one element each: each case reported, with that element
    run_checked(P, tmp_path, kernels, corrupt={"residual": 5, "swiglu": 150, "argmax": 0})

"""GEMV kernels on the Verilator chip: most tests on a reduced 2x4 geometry (a fast build),
one on the full default chip (the build ``rdu kernel gemv`` and ``rdu sim`` share).

Each test runs several random shapes/seeds in one simulation (one bring-up) and compares y,
read back by DMA, exactly with ``intops.requant(intops.gemv(W, x))``: the testbench fails on
the first differing row.
"""

import random

import numpy as np
import pytest

from sw.kernels.cli import prepare_case, run_cases
from hdl.params import DEFAULT_PARAMS
from sw.kernels.gemv import REDUCED_PARAMS, build_gemv, choose_requant, make_data

pytestmark = pytest.mark.verilator

P = REDUCED_PARAMS


def _cases(tmp_path, shapes, P=P):
    cases, kernels = [], []
    for i, (rows, cols, pcus, seed) in enumerate(shapes):
        w, x = make_data(rows, cols, seed)
        m, s = choose_requant(w, x)
        k = build_gemv(P, rows, cols, pcus=pcus, m=m, s=s)
        cases.append(prepare_case(k, w, x, tmp_path / f"case{i}",
                                  name=f"gemv {rows}x{cols} pcus={pcus} seed={seed}"))
        kernels.append(k)
    return cases, kernels


def _chain_case(tmp_path, dim, layers, pcus, seed, mode, P=P):
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, size=(layers, dim, dim)).astype(np.int8)
    x = rng.integers(-128, 128, size=dim).astype(np.int8)
    m, s = choose_requant(w[0], x)
    k = build_gemv(P, dim, dim, pcus=pcus, m=m, s=s, layers=layers)
    return k, prepare_case(k, w, x, tmp_path / f"chain-{mode}",
                           name=f"chain {layers}x{dim} {mode}", mode=mode)


def _check(tmp_path, shapes, P=P):
    cases, kernels = _cases(tmp_path, shapes, P)
    results, _, _, err = run_cases(P, cases, tmp_path)
    if err is not None:
        raise err
    for (rows, cols, pcus, seed), k, res in zip(shapes, kernels, results):
        assert res["bit_exact"], (rows, cols, pcus, seed, res["first_mismatch"])
        c = res["counters"]
        rd = sum(c[f"ch{j}_rd_beats"] for j in range(P.hbm_channels))
        wr = sum(c[f"ch{j}_wr_beats"] for j in range(P.hbm_channels))
        # the kernel moved exactly W, x and y (nothing lost, nothing read twice)
        assert rd * P.beat_bytes == rows * cols + cols and wr * P.beat_bytes == rows, c
        assert c["run_busy_cycles"] >= rows * cols // P.beat_bytes // pcus
    return results


def test_gemv_one_pcu(tmp_path):
    rng = random.Random(11)
    _check(tmp_path, [(64, 64, 1, rng.randrange(1 << 16)), (128, 192, 1, rng.randrange(1 << 16)),
                      (192, 128, 1, rng.randrange(1 << 16))])


def test_gemv_split_k(tmp_path):
    rng = random.Random(12)
    _check(tmp_path, [(64, 128, 2, rng.randrange(1 << 16)), (128, 192, 2, rng.randrange(1 << 16)),
                      (192, 128, 2, rng.randrange(1 << 16)), (256, 256, 2, rng.randrange(1 << 16))])


def test_gemv_random_shapes(tmp_path):
    rng = random.Random(13)
    shapes = []
    for _ in range(3):
        rows, cols = 64 * rng.randint(1, 4), 64 * rng.randint(2, 5)
        shapes.append((rows, cols, rng.choice([1, 2]), rng.randrange(1 << 16)))
    _check(tmp_path, shapes)


def test_gemv_default_chip(tmp_path):
    """The full default chip (4x4 grid, 16 lanes, 6 stages), random shapes, 1 and 2 PCUs."""
    rng = random.Random(14)
    shapes = [(256, 256, 2, rng.randrange(1 << 16))]
    for _ in range(2):
        shapes.append((64 * rng.randint(1, 6), 64 * rng.randint(1, 8), rng.choice([1, 2]),
                       rng.randrange(1 << 16)))
    shapes = [(r, c, 1 if c < 128 else k, s) for r, c, k, s in shapes]   # split-K needs 2 beats
    results = _check(tmp_path, shapes, DEFAULT_PARAMS)
    cycles = results[0]["counters"]["run_busy_cycles"]
    assert cycles < 1200, cycles       # 256x256 on 2 PCUs: 982 cycles today


def test_gemv_wrong_result_fails(tmp_path):
    """The check really compares: a golden y from other data makes the run fail."""
    cases, _ = _cases(tmp_path, [(64, 128, 2, 5)])
    y = bytearray(open(cases[0]["y_expected"], "rb").read())
    y[17] ^= 0x01
    open(cases[0]["y_expected"], "wb").write(bytes(y))
    results, _, _, err = run_cases(P, cases, tmp_path)
    assert err is not None and "1/64 rows differ, first row 17" in str(err)
    assert not results[0]["bit_exact"]


def _run_chain(tmp_path, dim, layers, pcus):
    """Both modes of one chain; returns {mode: cycles from the first launch to done}."""
    res = {}
    for mode in ("layer", "looped"):
        k, case = _chain_case(tmp_path, dim, layers, pcus, 21, mode)
        results, _, _, err = run_cases(P, [case], tmp_path / mode)
        if err is not None:
            raise err
        r = results[0]
        assert r["bit_exact"], (mode, r["first_mismatch"])
        c = r["counters"]
        rd = sum(c[f"ch{j}_rd_beats"] for j in range(P.hbm_channels))
        assert rd * P.beat_bytes == layers * (dim * dim + dim), c   # each W once, each x once
        assert c["launches"] == (layers if mode == "layer" else 1), c
        assert (c["dep_stall_cycles"] > 0) == (mode == "looped"), c
        res[mode] = r["run_sim_cycles"]     # first launch to last done, host writes included
    return res


@pytest.mark.parametrize("pcus", [1, 2])
def test_gemv_chain_layer_vs_looped(tmp_path, pcus):
    """Four chained layers (x_{l+1} = requant(W_l x_l)) from one bitstream with per-iteration
    AGCU offsets, called once per layer or once as a looped kernel under the sequencer: both
    bit-exact, each W read once, one launch when looped, and looped is faster: the next layer's
    weights stream while the current layer drains, only the x load waits (for the y store it
    depends on, through HBM), and no per-layer launch, fill and drain. Measured (cycles from the
    first launch to done): 1 PCU 2,068 vs 2,012; split-K 2,172 vs 1,882."""
    res = _run_chain(tmp_path, 128, 4, pcus)
    assert res["looped"] < res["layer"], res

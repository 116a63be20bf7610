"""Exact integer semantics (sw/intops.py): the reference the RTL tests reuse."""

import numpy as np
import pytest

from sw import intops as I
from sw.quant import make_recip_table, make_rsqrt_table


def test_sat_bounds_and_dtypes():
    x = np.array([-1000, -129, -128, 0, 127, 128, 1000])
    assert I.sat(x, 8).tolist() == [-128, -128, -128, 0, 127, 127, 127]
    assert I.sat(x, 8).dtype == np.int8
    assert I.sat([40000, -40000], 16).tolist() == [32767, -32768]
    assert I.sat([2**40], 32).tolist() == [2**31 - 1]
    assert I.sat([2**40], 32).dtype == np.int32


def test_rshift_round_half_up_ties():
    # ties go towards +infinity
    assert I.rshift_round([5, -5, 6, -6, 7, -7], 1).tolist() == [3, -2, 3, -3, 4, -3]
    assert I.rshift_round([-6, 6, -2, 2], 2).tolist() == [-1, 2, 0, 1]     # -1.5->-1, 1.5->2, +-.5
    assert I.rshift_round([123, -123], 0).tolist() == [123, -123]
    # per-element shifts
    assert I.rshift_round([8, 8, 8], [0, 1, 3]).tolist() == [8, 4, 1]
    with pytest.raises(ValueError):
        I.rshift_round(1, 64)
    with pytest.raises(ValueError):
        I.rshift_round(1, -1)


def test_rshift_round_matches_floor_definition():
    rng = np.random.default_rng(0)
    x = rng.integers(-2**40, 2**40, 1000)
    s = rng.integers(0, 40, 1000)
    want = np.floor(x / 2.0**s + 0.5).astype(np.int64)
    assert np.array_equal(I.rshift_round(x, s), want)


def test_requant_semantics():
    assert I.requant(100, 1 << 14, 15, 8) == 50             # x * 0.5
    assert I.requant(-3, 1 << 14, 15, 8) == -1              # -1.5 -> -1 (half up)
    assert I.requant(3, 1 << 14, 15, 8) == 2                # 1.5 -> 2
    assert I.requant(10**6, 1 << 14, 15, 8) == 127          # saturation
    assert I.requant(-10**6, 1 << 14, 15, 8) == -128
    assert I.requant(2**31 - 1, 2**15 - 1, 0, 32) == 2**31 - 1
    assert I.requant(-2**31, 2**15 - 1, 0, 32) == -2**31
    # per-channel m and s broadcast
    r = I.requant(np.array([100, 100, 100]), np.array([1 << 14, 1 << 14, 3 << 13]), np.array([14, 15, 15]), 16)
    assert r.tolist() == [100, 50, 75] and r.dtype == np.int16
    with pytest.raises(OverflowError):
        I.requant(2**31, 1, 0, 32)
    with pytest.raises(ValueError):
        I.requant(1, 1 << 15, 0, 8)
    with pytest.raises(ValueError):
        I.requant(1, -1, 0, 8)
    with pytest.raises(TypeError):
        I.requant(np.array([1.0]), 1, 0, 8)


def test_quantize_multiplier():
    rng = np.random.default_rng(1)
    for r in np.exp(rng.uniform(np.log(1e-9), np.log(3e4), 500)):
        m, s = I.quantize_multiplier(r)
        assert 0 <= m < 2**15 and 0 <= s <= 63
        assert abs(m / 2.0**s - r) <= r * 2.0**-14
        if r < 2**14:
            assert m >= 2**14                                # full 15-bit precision
    assert I.quantize_multiplier(0.0) == (0, 0)
    assert I.quantize_multiplier(1.0) == (1 << 14, 14)
    m, s = I.quantize_multiplier(1e-30)                      # below 2**-63: m shrinks
    assert s == 63 and m == 0
    with pytest.raises(ValueError):
        I.quantize_multiplier(40000.0)
    with pytest.raises(ValueError):
        I.quantize_multiplier(-1.0)


def test_add_sat_and_mul():
    assert I.add_sat(32767, 1).tolist() == 32767
    assert I.add_sat(-32768, -1).tolist() == -32768
    assert I.add_sat(np.array([100, -100], np.int16), np.array([-50, 20], np.int16)).tolist() == [50, -80]
    with pytest.raises(OverflowError):
        I.add_sat(40000, 0)
    assert I.mul(-32768, 32767) == -32768 * 32767
    with pytest.raises(OverflowError):
        I.mul(65536, 65536)


def test_gemv_and_dot():
    rng = np.random.default_rng(2)
    w = rng.integers(-127, 128, (5, 64)).astype(np.int8)
    x = rng.integers(-128, 128, 64).astype(np.int8)
    y = I.gemv(w, x)
    assert y.dtype == np.int32
    assert np.array_equal(y, w.astype(np.int64) @ x.astype(np.int64))
    with pytest.raises(OverflowError):
        I.gemv(np.array([[200]]), np.array([1]))
    with pytest.raises(TypeError):
        I.gemv(w.astype(np.float32), x)
    with pytest.raises(OverflowError):                       # accumulator overflow is detected
        I.dot(np.full(3, 2**15), np.full(3, 2**15))


def test_ilog2_clz():
    v = np.array([1, 2, 3, 4, 255, 256, 2**30, 2**31 - 1])
    assert I.ilog2(v).tolist() == [0, 1, 1, 2, 7, 8, 30, 30]
    assert I.clz32(v).tolist() == [31, 30, 30, 29, 24, 23, 1, 1]
    with pytest.raises(ValueError):
        I.ilog2(0)


@pytest.mark.parametrize("bits,tol", [(8, 4e-3), (10, 1e-3)])
def test_rsqrt_index_and_table_accuracy(bits, tol):
    t = make_rsqrt_table(bits)
    v = np.unique(np.concatenate([np.arange(1, 5000), np.geomspace(1, 2**31 - 1, 5000).astype(np.int64)]))
    idx, hk = I.rsqrt_index(v, bits)
    assert idx.min() >= 2**(bits - 2) and idx.max() < 2**bits
    approx = I.lut(t, idx) * 2.0**-15 * 2.0**(-hk.astype(np.float64))
    rel = np.abs(approx * np.sqrt(v) - 1)
    assert rel.max() < 2 * tol
    assert rel[v >= 2**(bits - 2)].max() < tol       # exact region: table error only


@pytest.mark.parametrize("bits,tol", [(8, 4e-3), (10, 1e-3)])
def test_recip_index_and_table_accuracy(bits, tol):
    t = make_recip_table(bits)
    v = np.unique(np.concatenate([np.arange(1, 5000), np.geomspace(1, 2**31 - 1, 5000).astype(np.int64)]))
    idx, e = I.recip_index(v, bits)
    assert idx.min() >= 2**(bits - 1) and idx.max() < 2**bits
    approx = I.lut(t, idx) * 2.0**(-(e.astype(np.float64) + 15))
    assert np.abs(approx * v - 1).max() < 2 * tol


def test_lut_and_int8_index():
    t = np.arange(256) * 3
    assert I.int8_lut_index(np.array([0, 1, 127, -128, -1], np.int8)).tolist() == [0, 1, 127, 128, 255]
    assert I.lut(t, np.array([0, 255])).tolist() == [0, 765]
    with pytest.raises(IndexError):
        I.lut(t, 256)
    with pytest.raises(IndexError):
        I.lut(t, -1)


def test_argmax_lowest_index_wins():
    assert I.argmax_first(np.array([1, 5, 5, 2], np.int32)) == 1
    assert I.argmax_first(np.array([-3, -3], np.int32)) == 0
    assert I.argmax_first(np.array([0, 0, 7])) == 2


def test_gemv_int16_input_is_exact():
    rng = np.random.default_rng(4)
    w = rng.integers(-127, 128, (7, 192)).astype(np.int8)
    x = rng.integers(-32768, 32768, 192).astype(np.int16)
    y = I.gemv(w, x, 16)
    assert y.dtype == np.int32
    assert np.array_equal(y, w.astype(np.int64) @ x.astype(np.int64))
    x[:] = -32768                                             # extremes of the byte split
    w[:] = -127
    assert np.array_equal(I.gemv(w[:, :64], x[:64], 16), w[:, :64].astype(np.int64) @ x[:64].astype(np.int64))
    with pytest.raises(OverflowError):                       # high partial overflows int32
        I.gemv(np.full((1, 600), -127, np.int8), np.full(600, -32768, np.int16), 16)
    with pytest.raises(ValueError):
        I.gemv(w, x, 32)

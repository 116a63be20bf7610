"""Exact integer semantics of the PCU/PMU operations used by the golden model.

This module is the contract between the numerics (``sw/quant.py``, ``sw/golden.py``) and the
RTL: every function here is pure, integer-only and vectorised over numpy arrays (Python ints
are accepted too), and the RTL unit tests use these same functions as their reference. All
arithmetic is done in ``int64`` and each function checks that its operands fit the hardware
widths it documents, so an overflow is an error here, never a silent wrap.

Hardware assumptions (what the PCU designer must implement exactly)
-------------------------------------------------------------------
==================  ======================================================================
op                  semantics
==================  ======================================================================
``dp4``             4 x (int8 * int8) summed into an int32 accumulator (per lane, per cycle).
                    A GEMV row is a sum of DP4s plus a cross-lane SUM reduction; the result
                    must fit int32 (checked: ``gemv``). A GEMV with int16 activations also
                    needs ``dp4u`` (int8 weight x *unsigned* byte, as x86 VNNI's vpdpbusd):
                    ``W@x16 = ((W@(x16>>8)) << 8) + W@(x16 & 0xFF)``.
``mul``             int32 lane multiply, result must fit int32 (operands here are at most
                    16 x 16 bit).
``rshift_round``    arithmetic shift right by ``s`` (0..63) with **round half up**:
                    ``(x + (1 << (s-1))) >> s`` for ``s > 0``; ``x`` for ``s == 0``.
                    Ties go towards +infinity (-2.5 -> -2, 2.5 -> 3).
``requant``         ``sat(rshift_round(acc * m, s), bits)``: ``acc`` int32, ``m`` an unsigned
                    15-bit multiplier (0 <= m < 2**15, i.e. a non-negative int16), ``s`` in
                    0..63. The product needs 47 bits: a 32 x 16 multiplier with a 48-bit (or
                    64-bit) intermediate. ``bits`` is the output width (8, 16 or 32), the
                    result saturates to ``[-2**(bits-1), 2**(bits-1)-1]``. ``m`` and ``s`` may
                    be per lane (per output channel) or a scalar operand broadcast to all lanes,
                    and ``s`` may be data-dependent (RMSNorm, softmax normalisation).
``add_sat``         saturating add at ``bits`` (residual add: 16).
``clz``/``ilog2``   ``ilog2(v) = 31 - clz32(v)`` = index of the highest set bit of a positive
                    int32. Needs a CLZ (priority encoder) FU op; without one it is 5
                    compare/select/shift steps.
``lut``             data-dependent PMU read: ``table[idx]``, ``idx`` must lie in the table.
``argmax_first``    MAX reduction that keeps the lowest index on ties.
==================  ======================================================================

The normalise-and-look-up helpers (``rsqrt_index``, ``recip_index``) split a positive int32
into a table index (the top bits) and an exponent, exactly as the PCU does it with
``ilog2`` + a variable shift; the tables themselves are built at quantisation time
(``sw/quant.py``) and stored in the quantised model.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "INT8", "INT16", "INT32", "MULT_BITS", "SHIFT_MAX",
    "qmin", "qmax", "check_range", "sat", "rshift_round", "requant", "quantize_multiplier",
    "add_sat", "mul", "gemv", "dot", "ilog2", "clz32", "shift_left_or_right",
    "rsqrt_index", "recip_index", "lut", "int8_lut_index", "argmax_first", "as_int",
]

INT8, INT16, INT32 = 8, 16, 32
MULT_BITS = 15          # requant multiplier m: 0 <= m < 2**15 (a non-negative int16)
SHIFT_MAX = 63          # requant shift s: 0..63

_DTYPES = {8: np.int8, 16: np.int16, 32: np.int32}


def qmin(bits: int) -> int:
    return -(1 << (bits - 1))


def qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def as_int(x) -> np.ndarray:
    """View ``x`` as an int64 array; refuse anything that is not an integer (no floats)."""
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"integer operand expected, got dtype {a.dtype}")
    return a.astype(np.int64)


def check_range(x, bits: int, what: str = "value") -> np.ndarray:
    """Raise ``OverflowError`` unless every element of ``x`` fits a signed ``bits``-bit word."""
    a = as_int(x)
    if a.size and (a.min() < qmin(bits) or a.max() > qmax(bits)):
        raise OverflowError(f"{what} does not fit int{bits}: range [{a.min()}, {a.max()}]")
    return a


def _narrow(a: np.ndarray, bits: int) -> np.ndarray:
    return a.astype(_DTYPES[bits]) if bits in _DTYPES else a


def sat(x, bits: int) -> np.ndarray:
    """Saturate to a signed ``bits``-bit integer; returns the narrow dtype for 8/16/32."""
    return _narrow(np.clip(as_int(x), qmin(bits), qmax(bits)), bits)


def rshift_round(x, s) -> np.ndarray:
    """Arithmetic right shift by ``s`` (0..63) with round-half-up. Operates on int64."""
    a = as_int(x)
    s = as_int(s)
    if s.size and (s.min() < 0 or s.max() > SHIFT_MAX):
        raise ValueError(f"shift out of range 0..{SHIFT_MAX}: {s.min()}..{s.max()}")
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    # (a + half) cannot overflow int64: |a| < 2**47 in every use (checked by callers).
    return np.right_shift(a + half, s)


def requant(acc, m, s, bits: int) -> np.ndarray:
    """REQUANT: ``sat(rshift_round(acc * m, s), bits)``.

    ``acc`` must fit int32, ``0 <= m < 2**15``, ``0 <= s <= 63``; ``m`` and ``s`` broadcast
    against ``acc`` (per-channel arrays or scalars). Result dtype int8/int16/int32.
    """
    a = check_range(acc, 32, "requant input")
    m = as_int(m)
    if m.size and (m.min() < 0 or m.max() >= (1 << MULT_BITS)):
        raise ValueError(f"requant multiplier out of range 0..2**{MULT_BITS}-1")
    return sat(rshift_round(a * m, s), bits)


def quantize_multiplier(ratio: float) -> tuple[int, int]:
    """(m, s) with ``m * 2**-s ~= ratio``, ``2**14 <= m < 2**15`` where possible.

    Quantisation-time helper (the only function here that takes a float). Ratios too small
    for ``s <= 63`` get a smaller ``m`` (possibly 0); ratios ``>= 2**15`` are an error.
    """
    ratio = float(ratio)
    if not math.isfinite(ratio) or ratio < 0:
        raise ValueError(f"requant ratio must be finite and >= 0, got {ratio}")
    if ratio == 0.0:
        return 0, 0
    if ratio >= (1 << MULT_BITS) - 0.5:
        raise ValueError(f"requant ratio {ratio} too large for a {MULT_BITS}-bit multiplier")
    _, exp = math.frexp(ratio)               # ratio = f * 2**exp, 0.5 <= f < 1
    s = MULT_BITS - exp                      # m = ratio * 2**s in [2**14, 2**15)
    s = max(0, min(SHIFT_MAX, s))
    m = int(round(ratio * (1 << s))) if s >= 0 else int(round(ratio))
    if m >= (1 << MULT_BITS):                # rounding reached 2**15
        if s == 0:
            m = (1 << MULT_BITS) - 1
        else:
            m, s = (m + 1) >> 1, s - 1
    return m, s


def add_sat(a, b, bits: int = 16) -> np.ndarray:
    """Saturating add of two ``bits``-bit operands."""
    return sat(check_range(a, bits, "add_sat a") + check_range(b, bits, "add_sat b"), bits)


def mul(a, b) -> np.ndarray:
    """Lane multiply; the product must fit int32."""
    return check_range(as_int(a) * as_int(b), 32, "mul result").astype(np.int32)


def gemv(w, x, x_bits: int = 8) -> np.ndarray:
    """``w @ x`` with int8 ``w`` (rows, cols) and ``x`` (cols,) of ``x_bits`` (8 or 16) into int32.

    int8 ``x``: DP4s. int16 ``x``: the exact same integer result, computed by the PCU as two DP4
    passes over the same weight beat, ``(w @ (x >> 8)) << 8`` (signed x signed) plus
    ``w @ (x & 0xFF)`` (signed x unsigned byte); both partial sums, and the shifted high one,
    must fit int32 (checked here).
    """
    w8 = check_range(w, 8, "gemv weight")
    if x_bits == 8:
        x8 = check_range(x, 8, "gemv input")
        return check_range(w8 @ x8, 32, "gemv accumulator").astype(np.int32)
    if x_bits != 16:
        raise ValueError(f"gemv input must be 8 or 16 bit, not {x_bits}")
    x16 = check_range(x, 16, "gemv input")
    hi = check_range((w8 @ np.right_shift(x16, 8)) << 8, 32, "gemv high-byte partial")
    lo = w8 @ np.bitwise_and(x16, 0xFF)
    return check_range(hi + lo, 32, "gemv accumulator").astype(np.int32)


def dot(a, b, axis: int = -1) -> np.ndarray:
    """Sum of products along ``axis`` into int32 (DP4 for int8 operands, MAC otherwise)."""
    return check_range(np.sum(as_int(a) * as_int(b), axis=axis), 32, "dot accumulator").astype(np.int32)


def ilog2(v) -> np.ndarray:
    """Index of the highest set bit of a positive int32 (``31 - clz32(v)``)."""
    a = as_int(v)
    if a.size and (a.min() < 1 or a.max() > qmax(32)):
        raise ValueError("ilog2 needs 1 <= v < 2**31")
    out = np.zeros(a.shape, np.int64)
    t = a.copy()
    for step in (16, 8, 4, 2, 1):            # the 5 compare/select/shift steps
        big = t >= (np.int64(1) << step)
        out = np.where(big, out + step, out)
        t = np.where(big, t >> step, t)
    return out


def clz32(v) -> np.ndarray:
    """Count leading zeros of a 32-bit word (v > 0)."""
    return 31 - ilog2(v)


def shift_left_or_right(v, sh) -> np.ndarray:
    """``v >> sh`` (truncating) for ``sh >= 0``, ``v << -sh`` otherwise (barrel shifter)."""
    a, sh = as_int(v), as_int(sh)
    return np.where(sh >= 0, np.right_shift(a, np.maximum(sh, 0)), np.left_shift(a, np.maximum(-sh, 0)))


def rsqrt_index(v, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise ``v`` (1 <= v < 2**31) for the rsqrt table.

    Returns ``(idx, half_k)`` with ``k = ilog2(v)`` rounded down to even, ``half_k = k // 2``
    and ``idx = v >> (k - (index_bits - 2))`` (left shift if negative), so
    ``2**(index_bits-2) <= idx < 2**index_bits`` and ``v ~= idx * 2**(k - index_bits + 2)``.
    Then ``1/sqrt(v) ~= RSQRT[idx] * 2**-15 * 2**-half_k``.
    """
    e = ilog2(v)
    k = e - (e & 1)
    idx = shift_left_or_right(v, k - (index_bits - 2))
    return idx, k >> 1


def recip_index(v, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise ``v`` (1 <= v < 2**31) for the reciprocal table.

    Returns ``(idx, e)`` with ``e = ilog2(v)`` and ``idx = v >> (e - (index_bits - 1))`` (left
    shift if negative), so ``2**(index_bits-1) <= idx < 2**index_bits``. Then
    ``1/v ~= RECIP[idx] * 2**-(e + 15)``.
    """
    e = ilog2(v)
    idx = shift_left_or_right(v, e - (index_bits - 1))
    return idx, e


def lut(table, idx) -> np.ndarray:
    """PMU gather: ``table[idx]`` with bounds checking."""
    t = as_int(table)
    i = as_int(idx)
    if i.size and (i.min() < 0 or i.max() >= t.shape[0]):
        raise IndexError(f"LUT index out of range 0..{t.shape[0] - 1}: {i.min()}..{i.max()}")
    return t[i]


def int8_lut_index(x) -> np.ndarray:
    """Index of an int8 value in a 256-entry table: its raw two's-complement byte (x & 0xFF)."""
    return np.bitwise_and(check_range(x, 8, "int8 LUT operand"), 0xFF)


def argmax_first(x) -> int:
    """Index of the maximum; the lowest index wins ties (MAX reduction over (value, -index))."""
    a = as_int(x)
    return int(np.argmax(a))                 # numpy returns the first occurrence

"""The PCU's functional unit: one 32-bit integer lane operation, combinational.

One :class:`Fu` sits in every lane of every PCU stage (and one more in the PCU's post-reduction
scalar stage). It computes ``r = op(a, b, c)`` in the same cycle; the PCU registers the result.
The integer semantics are exactly those of :mod:`sw.intops` (the unit tests compare bit for bit).

Operands are 32-bit words, read as signed (two's complement) unless stated otherwise.
``bits`` selects the output width of the saturating ops: :class:`OutBits` (32, 8 or 16).

=========  ==  ===================================================================================
op         #   result
=========  ==  ===================================================================================
PASS       0   ``a``
ADD        1   ``a + b`` (wraps at 32 bits)
SUB        2   ``a - b`` (wraps)
MUL        3   ``a * b + c`` (low 32 bits; MAC when ``c`` is the accumulator or the previous value)
DP4        4   ``sum_j int8(a.byte j) * int8(b.byte j) + c`` (wraps at 32)
DP4U       5   ``sum_j int8(a.byte j) * uint8(b.byte j) + c`` (int8 weight x unsigned byte)
MAX        6   signed max
MIN        7   signed min
SHL        8   ``a << b[5:0]`` (low 32 bits; 0 for shifts >= 32)
SHR_ROUND  9   ``intops.rshift_round(a, b[5:0])``: arithmetic shift right, round half up
SHLR       10  ``intops.shift_left_or_right(a, b)``: ``b >= 0``: ``a >> b`` (arithmetic,
               truncating); ``b < 0``: ``a << -b`` (low 32 bits); amounts clamp at 63
REQUANT    11  ``intops.requant(a, m, s, bits)`` with ``m = b[14:0]`` (unsigned 15 bit),
               ``s = min(63, b[21:16] + c)`` (``c`` unsigned; a data-dependent extra shift, e.g.
               RMSNorm's half_k or the reciprocal's exponent; use source ZERO otherwise)
ADD_SAT    12  ``sat(a + b, bits)`` (``intops.add_sat``)
SELECT     13  ``c != 0 ? a : b``
CLZ        14  ``intops.clz32(a)`` (32 for ``a == 0``); ``ilog2 = 31 - clz`` with a SUB
AND        15  ``a & b`` (e.g. ``g8 & 0xFF``: the int8 LUT index)
=========  ==  ===================================================================================

Hardware sharing: MUL and REQUANT share one 32 x 32-bit signed multiplier per FU (REQUANT feeds
it the zero-extended 15-bit ``m``); DP4/DP4U use four 8 x 9-bit multipliers (the 9th bit makes
the unsigned-byte variant free). REQUANT's round-half-up shift uses ``((x >> (s-1)) + 1) >> 1``
(``s > 0``), which equals ``(x + 2**(s-1)) >> s`` without a 64-bit adder for the half.
"""

import enum

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["FuOp", "OutBits", "Fu", "fu_op_eval"]


class FuOp(enum.IntEnum):
    PASS = 0
    ADD = 1
    SUB = 2
    MUL = 3
    DP4 = 4
    DP4U = 5
    MAX = 6
    MIN = 7
    SHL = 8
    SHR_ROUND = 9
    SHLR = 10
    REQUANT = 11
    ADD_SAT = 12
    SELECT = 13
    CLZ = 14
    AND = 15


class OutBits(enum.IntEnum):
    """Output width code of REQUANT / ADD_SAT (and of the PCU's packer)."""
    B32 = 0
    B8 = 1
    B16 = 2

    @property
    def width(self) -> int:
        return {0: 32, 1: 8, 2: 16}[int(self)]

    @classmethod
    def of(cls, bits: int) -> "OutBits":
        try:
            return {32: cls.B32, 8: cls.B8, 16: cls.B16}[int(bits)]
        except KeyError:
            raise ValueError(f"output width must be 8, 16 or 32, not {bits}") from None


def _sat(m, value, bits_code, out):
    """``out = sat(value, 8/16/32)`` by ``bits_code`` (comb)."""
    with m.Switch(bits_code):
        for code, w in ((OutBits.B8, 8), (OutBits.B16, 16)):
            with m.Case(code):
                lo, hi = -(1 << (w - 1)), (1 << (w - 1)) - 1
                m.d.comb += out.eq(Mux(value > hi, hi, Mux(value < lo, lo, value)))
        with m.Default():
            lo, hi = -(1 << 31), (1 << 31) - 1
            m.d.comb += out.eq(Mux(value > hi, hi, Mux(value < lo, lo, value)))


def _rshift_round(m, x, s, width, name):
    """Round-half-up arithmetic right shift of signed ``x`` by unsigned 6-bit ``s`` (comb)."""
    t = Signal(signed(width), name=f"{name}_t")
    r = Signal(signed(width), name=f"{name}_r")
    sm1 = Signal(6, name=f"{name}_sm1")
    m.d.comb += sm1.eq(s - 1)
    m.d.comb += t.eq(x >> sm1)
    m.d.comb += r.eq(Mux(s == 0, x, (t + 1) >> 1))
    return r


def _shl32(a, s):
    """``(a << s)[:32]`` for a 6-bit ``s`` (0 for ``s >= 32``), built from a 5-bit shift so
    the intermediate stays within 64 bits (a 95-bit shift is a slow multi-word op in Verilator)."""
    return Mux(s[5], 0, (a << s[:5])[:32])


class Fu(wiring.Component):
    """One lane's FU: ``r = op(a, b, c)`` combinationally (see the module docstring)."""

    op: In(4)
    bits: In(2)
    a: In(32)
    b: In(32)
    c: In(32)
    r: Out(32)

    def elaborate(self, platform):
        m = Module()
        a = self.a.as_signed()
        b = self.b.as_signed()
        c = self.c.as_signed()
        op = self.op

        # Shared multiplier: MUL (a * b) and REQUANT (a * m, m unsigned 15 bit: it fits a signed
        # 32-bit operand). 32 x 32 -> 64 bits keeps the product in one machine word in Verilator.
        mb = Signal(signed(32))
        m.d.comb += mb.eq(Mux(op == FuOp.REQUANT, self.b[:15], b))
        prod = Signal(signed(64))
        m.d.comb += prod.eq(a * mb)

        # DP4 / DP4U: four int8 x (int8 | uint8) products.
        unsigned_b = op == FuOp.DP4U
        dp = 0
        for j in range(4):
            bj = Signal(signed(9), name=f"dp_b{j}")
            bb = self.b[8 * j:8 * j + 8]
            m.d.comb += bj.eq(Mux(unsigned_b, bb, bb.as_signed()))
            dp = dp + self.a[8 * j:8 * j + 8].as_signed() * bj
        dp4 = Signal(signed(32))
        m.d.comb += dp4.eq(dp + c)

        # REQUANT: sat(rshift_round(a * m, s), bits), s = min(63, b[21:16] + c).
        s_sum = Signal(33)
        m.d.comb += s_sum.eq(self.b[16:22] + self.c)
        s_rq = Signal(6)
        m.d.comb += s_rq.eq(Mux(s_sum > 63, 63, s_sum))
        rq_round = _rshift_round(m, prod[:48].as_signed(), s_rq, 48, "rq")
        rq = Signal(32)
        _sat(m, rq_round, self.bits, rq)

        # SHR_ROUND
        shr = _rshift_round(m, a, self.b[:6], 32, "shr")

        # SHLR: b >= 0: a >> min(b, 63); b < 0: a << min(-b, 63)
        neg_b = Signal(32)
        m.d.comb += neg_b.eq(-b)
        sh_r = Signal(6)
        sh_l = Signal(6)
        m.d.comb += [
            sh_r.eq(Mux(self.b[6:32] != 0, 63, self.b[:6])),
            sh_l.eq(Mux(neg_b[6:32] != 0, 63, neg_b[:6])),
        ]
        shlr = Signal(32)
        m.d.comb += shlr.eq(Mux(b[31], _shl32(self.a, sh_l), a >> sh_r))

        # ADD_SAT
        add_sat = Signal(32)
        _sat(m, a + b, self.bits, add_sat)

        # CLZ (priority encoder; highest set bit wins)
        clz = Const(32, 6)
        for i in range(32):
            clz = Mux(self.a[i], 31 - i, clz)

        with m.Switch(op):
            with m.Case(FuOp.PASS):
                m.d.comb += self.r.eq(self.a)
            with m.Case(FuOp.ADD):
                m.d.comb += self.r.eq(a + b)
            with m.Case(FuOp.SUB):
                m.d.comb += self.r.eq(a - b)
            with m.Case(FuOp.MUL):
                m.d.comb += self.r.eq(prod[:32] + self.c)
            with m.Case(FuOp.DP4, FuOp.DP4U):
                m.d.comb += self.r.eq(dp4)
            with m.Case(FuOp.MAX):
                m.d.comb += self.r.eq(Mux(a > b, a, b))
            with m.Case(FuOp.MIN):
                m.d.comb += self.r.eq(Mux(a < b, a, b))
            with m.Case(FuOp.SHL):
                m.d.comb += self.r.eq(_shl32(self.a, self.b[:6]))
            with m.Case(FuOp.SHR_ROUND):
                m.d.comb += self.r.eq(shr)
            with m.Case(FuOp.SHLR):
                m.d.comb += self.r.eq(shlr)
            with m.Case(FuOp.REQUANT):
                m.d.comb += self.r.eq(rq)
            with m.Case(FuOp.ADD_SAT):
                m.d.comb += self.r.eq(add_sat)
            with m.Case(FuOp.SELECT):
                m.d.comb += self.r.eq(Mux(self.c != 0, self.a, self.b))
            with m.Case(FuOp.CLZ):
                m.d.comb += self.r.eq(clz)
            with m.Case(FuOp.AND):
                m.d.comb += self.r.eq(self.a & self.b)
        return m


def fu_op_eval(op, a, b=0, c=0, bits=32) -> int:
    """Reference model of one FU op in terms of :mod:`sw.intops` (signed 32-bit result).

    Operands are Python ints (any sign; they are reduced to 32-bit words first). Used by the
    tests and by software that wants to predict a PCU's output.
    """
    from sw import intops as I

    def s32(v):
        v &= 0xFFFFFFFF
        return v - (1 << 32) if v & 0x80000000 else v

    def byte(v, j, signed=True):
        x = (v >> (8 * j)) & 0xFF
        return x - 256 if signed and x & 0x80 else x

    a, b, c = s32(a), s32(b), s32(c)
    op = FuOp(op)
    if op == FuOp.PASS:
        return a
    if op == FuOp.ADD:
        return s32(a + b)
    if op == FuOp.SUB:
        return s32(a - b)
    if op == FuOp.MUL:
        return s32(a * b + c)
    if op in (FuOp.DP4, FuOp.DP4U):
        u = op == FuOp.DP4U
        wa = [byte(a, j) for j in range(4)]
        xb = [byte(b, j, signed=not u) for j in range(4)]
        return s32(int(I.dot(wa, xb)) + c)
    if op == FuOp.MAX:
        return max(a, b)
    if op == FuOp.MIN:
        return min(a, b)
    if op == FuOp.SHL:
        return s32(a << (b & 63))
    if op == FuOp.SHR_ROUND:
        return int(I.rshift_round(a, b & 63))
    if op == FuOp.SHLR:
        return s32(int(I.shift_left_or_right(a, max(-63, min(63, b)))))
    if op == FuOp.REQUANT:
        s = min(63, ((b >> 16) & 63) + (c & 0xFFFFFFFF))
        return int(I.requant(a, b & 0x7FFF, s, bits))
    if op == FuOp.ADD_SAT:
        return int(I.sat(a + b, bits))
    if op == FuOp.SELECT:
        return a if c != 0 else b
    if op == FuOp.CLZ:
        return 32 if a == 0 else int(I.clz32(a & 0xFFFFFFFF)) if a > 0 else 0
    if op == FuOp.AND:
        return s32(a & b)
    raise ValueError(op)

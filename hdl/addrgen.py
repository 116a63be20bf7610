"""Affine address generator: a chain of nested counters with signed strides.

Shared by the units that walk programmable address patterns (PMU read/write sides; usable by
AGCUs and PCU counter chains too). It produces only the *offset*; the unit adds its own base,
per-iteration offset and bounds checks.

Counter ``0`` is the innermost. With counts ``c_k`` and strides ``s_k`` the generator walks, in
order, every index vector ``(i_0, ..., i_{n-1})`` with ``0 <= i_k < c_k`` (``i_0`` fastest) and
presents ``offset = sum_k i_k * s_k``. A count of 0 is treated as 1 (the level is unused).

Cycle-level contract
    - ``restart`` (one cycle): all indices and ``offset`` go to 0 in the next cycle. It wins
      over ``next`` in the same cycle.
    - ``next`` (one cycle): step to the following index vector; ``offset``, ``last`` and
      ``index`` show it in the next cycle. Stepping from the last vector wraps to the first
      (all zeros), so a chain repeats forever; the user counts repetitions with ``last``.
    - ``offset``/``last``/``wrap``/``index`` are combinational functions of the registered
      state (no dependence on ``next``), so the user may use them in the cycle it steps.
    - ``wrap[k]``: counter ``k`` and all inner counters are at their final value, i.e. ``next``
      now would complete an iteration of level ``k``. ``last == wrap[n-1]``.

The offset is computed incrementally (one adder per level, no multipliers): ``part_k``
holds ``i_k * s_k`` and ``offset`` is the sum of the parts. ``offset_bits`` must be wide enough
for ``sum_k (c_k - 1) * |s_k|``; with 16-bit counts and strides 32 bits always suffice.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.data import ArrayLayout
from amaranth.lib.wiring import In, Out

__all__ = ["AffineAddrGen"]


class AffineAddrGen(wiring.Component):
    def __init__(self, n_counters: int = 3, count_bits: int = 16, stride_bits: int = 16,
                 offset_bits: int = 32):
        if n_counters < 1:
            raise ValueError("AffineAddrGen needs at least one counter")
        self.n_counters = n = n_counters
        self.count_bits = count_bits
        super().__init__({
            "counts": In(ArrayLayout(unsigned(count_bits), n)),
            "strides": In(ArrayLayout(signed(stride_bits), n)),
            "restart": In(1),
            "next": In(1),
            "offset": Out(signed(offset_bits)),
            "last": Out(1),
            "wrap": Out(n),
            "index": Out(ArrayLayout(unsigned(count_bits), n)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n_counters
        ob = len(self.offset)
        idx = [Signal(self.count_bits, name=f"i{k}") for k in range(n)]
        part = [Signal(signed(ob), name=f"part{k}") for k in range(n)]

        at_max = []
        for k in range(n):
            c = self.counts[k]
            at_max.append((idx[k] + 1 >= c))          # count 0 or 1: always at max
        wrap = []
        acc = C(1, 1)
        for k in range(n):
            acc = acc & at_max[k]
            wrap.append(acc)
        m.d.comb += [
            self.wrap.eq(Cat(*wrap)),
            self.last.eq(wrap[-1]),
            self.offset.eq(sum(part[1:], part[0])),
        ]
        for k in range(n):
            m.d.comb += self.index[k].eq(idx[k])

        with m.If(self.restart):
            m.d.sync += [s.eq(0) for s in idx + part]
        with m.Elif(self.next):
            for k in range(n):
                inner = wrap[k - 1] if k else C(1, 1)   # all inner levels wrap: level k steps
                with m.If(inner):
                    with m.If(at_max[k]):
                        m.d.sync += [idx[k].eq(0), part[k].eq(0)]
                    with m.Else():
                        m.d.sync += [idx[k].eq(idx[k] + 1), part[k].eq(part[k] + self.strides[k])]
        return m

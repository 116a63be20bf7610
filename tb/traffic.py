"""Traffic sinks and sources that stand in for the fabric on AGCU streams (test hardware).

:class:`TrafficSink` takes beats from a stream. ``ready`` is high except when a 16-bit LFSR draw
falls below ``stall`` (so ``stall/65536`` is the probability of back-pressure in a cycle). It
counts beats and XOR-folds them into ``xor`` (order-insensitive) and a position-weighted
``sum_lo`` (order-sensitive: sum of (beat index + 1) * low 32 bits of the beat, mod 2**32), so a
testbench can check the data it received without watching every cycle.

:class:`TrafficSource` offers beats on a stream. Beat ``k`` of source ``tag`` is the 16-lane
vector whose lane ``j`` holds ``(tag << 24) | ((k * 16 + j) & 0xFFFFFF)`` — see
:func:`source_beat` — so written memory can be checked from Python. ``valid`` is offered only
when an LFSR draw is at or above ``gap`` (``gap/65536`` = probability of an idle cycle);
it never drops ``valid`` once raised until the beat is taken (stream rules).
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TrafficSink", "TrafficSource", "source_beat"]


def source_beat(tag: int, k: int, lanes: int = 16) -> int:
    v = 0
    for j in range(lanes):
        v |= (((tag & 0xFF) << 24) | ((k * lanes + j) & 0xFFFFFF)) << (32 * j)
    return v


def _lfsr16(m, seed: int, name: str) -> Signal:
    """Galois LFSR x^16 + x^14 + x^13 + x^11 + 1, one step per cycle."""
    s = Signal(16, init=seed or 1, name=name)
    m.d.sync += s.eq(Mux(s[0], (s >> 1) ^ 0xB400, s >> 1))
    return s


class TrafficSink(wiring.Component):
    def __init__(self, width: int, seed: int = 1):
        self.width, self.seed = width, seed
        super().__init__({
            "data": In(stream.Signature(width)),
            "stall": In(16),
            "beats": Out(32),
            "xor": Out(width),
            "sum_lo": Out(32),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        rnd = _lfsr16(m, self.seed, "sink_lfsr")
        m.d.comb += self.data.ready.eq(rnd >= self.stall)
        with m.If(self.clear):
            m.d.sync += [self.beats.eq(0), self.xor.eq(0), self.sum_lo.eq(0)]
        with m.Elif(self.data.valid & self.data.ready):
            m.d.sync += [
                self.beats.eq(self.beats + 1),
                self.xor.eq(self.xor ^ self.data.payload),
                self.sum_lo.eq(self.sum_lo + (self.beats + 1) * self.data.payload[:32]),
            ]
        return m


class TrafficSource(wiring.Component):
    def __init__(self, lanes: int, tag: int, seed: int = 7):
        self.lanes, self.tag, self.seed = lanes, tag, seed
        super().__init__({
            "data": Out(stream.Signature(32 * lanes)),
            "gap": In(16),
            "beats": Out(32),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        rnd = _lfsr16(m, self.seed, "source_lfsr")
        m.d.comb += self.data.payload.eq(Cat(
            Cat((self.beats * self.lanes + j)[:24], C(self.tag & 0xFF, 8)) for j in range(self.lanes)))
        with m.If(~self.data.valid | self.data.ready):
            m.d.sync += self.data.valid.eq(rnd >= self.gap)
        with m.If(self.clear):
            m.d.sync += [self.beats.eq(0), self.data.valid.eq(0)]
        with m.Elif(self.data.valid & self.data.ready):
            m.d.sync += self.beats.eq(self.beats + 1)
        return m

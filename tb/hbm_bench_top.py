"""Benchmark toplevel: the real chip with traffic sinks/sources on its AGCU streams.

Every AGCU's ``rd`` stream ends in a :class:`~tb.traffic.TrafficSink` and its ``wr`` stream
starts at a :class:`~tb.traffic.TrafficSource`, standing in for the compute fabric. Everything
else — CSRs, DMA, AGCU configuration (over the config bus, through CSR ``CFG_*``), counters,
latency monitors — is the chip's own and is driven through the host ports by the normal driver.

Extra toplevel ports (set once / read once by the testbench, never per cycle):
``stall`` / ``gap`` (16 bit, all sinks/sources), ``sink{i}_beats``, ``sink{i}_xor``,
``sink{i}_sum``, ``source{i}_beats``, and ``run_done`` (the chip's own: every unit started by the
last ``RUN_START`` has finished). Sinks and sources clear their counts when a run starts.
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.chip import Chip
from hdl.host import csr_bus_signature
from hdl.params import RduParams

from .traffic import TrafficSink, TrafficSource

__all__ = ["HbmBenchTop"]


class HbmBenchTop(wiring.Component):
    def __init__(self, params: RduParams):
        self.params = p = params
        members = {
            "csr": In(csr_bus_signature(p)),
            "h2c": In(stream.Signature(p.beat_bits)),
            "c2h": Out(stream.Signature(p.beat_bits)),
            "stall": In(16),
            "gap": In(16),
            "run_done": Out(1),
        }
        for i in range(p.n_agcus):
            members[f"sink{i}_beats"] = Out(32)
            members[f"sink{i}_xor"] = Out(p.beat_bits)
            members[f"sink{i}_sum"] = Out(32)
            members[f"source{i}_beats"] = Out(32)
        super().__init__(members)

    def elaborate(self, platform):
        p = self.params
        m = Module()
        m.submodules.chip = chip = Chip(p, fabric=False)
        wiring.connect(m, wiring.flipped(self.csr), chip.csr)
        wiring.connect(m, wiring.flipped(self.h2c), chip.h2c)
        wiring.connect(m, chip.c2h, wiring.flipped(self.c2h))

        start = chip.host.unit_start
        m.d.comb += self.run_done.eq(chip.run_done)
        for i in range(p.n_agcus):
            ag = chip.memsys.agcu[i]
            sink = TrafficSink(p.beat_bits, seed=0x1234 + 77 * i)
            src = TrafficSource(p.lanes, tag=i, seed=0x4321 + 31 * i)
            m.submodules[f"sink{i}"] = sink
            m.submodules[f"source{i}"] = src
            wiring.connect(m, ag.rd, sink.data)
            wiring.connect(m, src.data, ag.wr)
            m.d.comb += [
                sink.stall.eq(self.stall), src.gap.eq(self.gap),
                sink.clear.eq(start.any()), src.clear.eq(start.any()),
                getattr(self, f"sink{i}_beats").eq(sink.beats),
                getattr(self, f"sink{i}_xor").eq(sink.xor),
                getattr(self, f"sink{i}_sum").eq(sink.sum_lo),
                getattr(self, f"source{i}_beats").eq(src.beats),
            ]
        return m

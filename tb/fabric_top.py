"""Verilator toplevel: the whole :class:`~hdl.fabric.Fabric` with traffic hardware on its AGCU
edge ports, so bulk data never needs a Python call per clock.

Each ``agcu_rd[i]`` is driven by a :class:`~tb.traffic.TrafficSource` (tag ``i``: beat ``k``
is :func:`tb.traffic.source_beat` ``(i, k)``) gated to stop after ``src{i}_limit`` beats;
each ``agcu_wr[i]`` ends in a :class:`~tb.traffic.TrafficSink` (LFSR back-pressure, beat
count, XOR and position-weighted sum). The testbench sets the knobs, writes the config bus,
pulses unit starts and reads counters — all a few times per round, never per cycle.

Ports (besides ``clk``/``rst``):

- ``cfg_we``, ``cfg_unit``, ``cfg_addr``, ``cfg_data``: the fabric's config bus;
- ``unit_start`` (``n_pcus + n_pmus`` bits, unit-id order from the first PCU): one-cycle
  start pulses; ``unit_busy``; ``unit_done`` (sticky: the unit pulsed ``done`` since its last
  start); ``unit_status`` (4 bits per unit);
- ``src_hold``: holds every source idle (``clear``: counters to 0, ``valid`` low);
  ``sink_clear``: clears every sink's counters;
- ``src{i}_gap`` / ``src{i}_limit`` / ``src{i}_beats``; ``sink{i}_stall`` /
  ``sink{i}_beats`` / ``sink{i}_xor`` / ``sink{i}_sum``;
- ``held`` (one bit per switch, row-major), ``busy``, ``cycles`` (free-running counter).
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.bus import CONFIG_ADDR_BITS, CONFIG_UNIT_BITS
from hdl.fabric import Fabric
from hdl.links import STATUS_BITS
from hdl.params import RduParams

from .traffic import TrafficSink, TrafficSource

__all__ = ["FabricTop"]


class FabricTop(wiring.Component):
    def __init__(self, params: RduParams):
        self.params = p = params
        n = p.n_pcus + p.n_pmus
        members = {
            "cfg_we": In(1), "cfg_unit": In(CONFIG_UNIT_BITS), "cfg_addr": In(CONFIG_ADDR_BITS),
            "cfg_data": In(32),
            "unit_start": In(n), "unit_busy": Out(n), "unit_done": Out(n),
            "unit_status": Out(STATUS_BITS * n),
            "src_hold": In(1), "sink_clear": In(1),
            "held": Out(p.n_tiles), "busy": Out(1), "cycles": Out(32),
        }
        for i in range(p.n_agcus):
            members[f"src{i}_gap"] = In(16)
            members[f"src{i}_limit"] = In(32)
            members[f"src{i}_beats"] = Out(32)
            members[f"sink{i}_stall"] = In(16)
            members[f"sink{i}_beats"] = Out(32)
            members[f"sink{i}_xor"] = Out(p.beat_bits)
            members[f"sink{i}_sum"] = Out(32)
        super().__init__(members)

    def elaborate(self, platform):
        p = self.params
        m = Module()
        m.submodules.fabric = fab = Fabric(p)
        m.d.comb += [fab.cfg.we.eq(self.cfg_we), fab.cfg.unit.eq(self.cfg_unit),
                     fab.cfg.addr.eq(self.cfg_addr), fab.cfg.data.eq(self.cfg_data),
                     self.held.eq(fab.held), self.busy.eq(fab.busy)]
        m.d.sync += self.cycles.eq(self.cycles + 1)
        for k in range(fab.n_units):
            c = fab.units[k]
            m.d.comb += [c.start.eq(self.unit_start[k]), c.iteration.eq(0),
                         self.unit_busy[k].eq(c.busy),
                         self.unit_status[STATUS_BITS * k:STATUS_BITS * (k + 1)].eq(c.status)]
            with m.If(self.unit_start[k]):
                m.d.sync += self.unit_done[k].eq(0)
            with m.Elif(c.done):
                m.d.sync += self.unit_done[k].eq(1)
        for i in range(p.n_agcus):
            src = TrafficSource(p.lanes, tag=i, seed=0x2345 + 97 * i)
            sink = TrafficSink(p.beat_bits, seed=0x6789 + 53 * i)
            m.submodules[f"src{i}"] = src
            m.submodules[f"sink{i}"] = sink
            rd, wr = fab.agcu_rd[i], fab.agcu_wr[i]
            more = Signal(name=f"src{i}_more")
            m.d.comb += [
                more.eq(src.beats < getattr(self, f"src{i}_limit")),
                src.gap.eq(getattr(self, f"src{i}_gap")), src.clear.eq(self.src_hold),
                rd.valid.eq(src.data.valid & more), rd.payload.eq(src.data.payload),
                src.data.ready.eq(rd.ready & more),
                getattr(self, f"src{i}_beats").eq(src.beats),
                sink.stall.eq(getattr(self, f"sink{i}_stall")), sink.clear.eq(self.sink_clear),
                sink.data.valid.eq(wr.valid), sink.data.payload.eq(wr.payload),
                wr.ready.eq(sink.data.ready),
                getattr(self, f"sink{i}_beats").eq(sink.beats),
                getattr(self, f"sink{i}_xor").eq(sink.xor),
                getattr(self, f"sink{i}_sum").eq(sink.sum_lo),
            ]
        return m

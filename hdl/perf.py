"""Performance counters: event counters and a request-latency monitor.

:class:`EventCounters`
    ``n`` free-running counters of ``width`` bits. Every cycle, counter ``i`` adds ``inc[i]``
    (a one-bit strobe). ``clear`` (a pulse) zeroes all of them in the same cycle (the increment
    of that cycle is dropped). No wrap detection: 48 bits hold 2.8e14 cycles.

:class:`LatencyMonitor`
    A passive probe on one HBM port (it only reads handshake signals). For every *read* request
    accepted on ``req``, it remembers the cycle; when the first beat of that request's data is
    accepted on ``rdata`` it records ``latency = now - issue`` (cycles from request handshake to
    first-beat handshake, so consumer back-pressure counts, as the consumer sees it). It keeps the
    count, sum and maximum, and a histogram of ``bins`` bins of ``bin_cycles`` cycles each; the
    last bin collects everything beyond. The histogram is a ``lib.memory.Memory`` (one
    read-modify-write per recorded request), read combinationally through
    ``hist_index``/``hist_count``. ``clear`` zeroes count, sum, maximum and ``overflow`` at once
    and then sweeps the histogram memory one bin per cycle (``bins`` cycles, ``clearing`` high);
    requests completing during the sweep are not recorded anywhere, so the statistics stay
    consistent with each other (a read's first beat comes at least ``hbm_read_latency`` cycles
    after the clear that precedes a run, so in practice nothing is lost). Up to ``depth`` read
    requests may be in flight; more set ``overflow`` (the monitor then stops recording instead
    of recording wrong latencies).

    A memory rather than ``bins`` registers: registers cost a 32-bit adder and a mux per bin
    every cycle in the simulator; the memory costs one.
"""

from amaranth import *
from amaranth.lib import data, fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .params import RduParams

__all__ = ["EventCounters", "LatencyMonitor"]


class EventCounters(wiring.Component):
    def __init__(self, n: int, width: int = 48):
        self.n, self.width = n, width
        super().__init__({
            "inc": In(n),
            "clear": In(1),
            "counts": Out(unsigned(width)).array(n),
        })

    def elaborate(self, platform):
        m = Module()
        for i in range(self.n):
            with m.If(self.clear):
                m.d.sync += self.counts[i].eq(0)
            with m.Elif(self.inc[i]):
                m.d.sync += self.counts[i].eq(self.counts[i] + 1)
        return m


class LatencyMonitor(wiring.Component):
    def __init__(self, params: RduParams, *, bins: int = 128, bin_cycles: int = 4, depth: int = 64):
        self.params = p = params
        self.bins, self.bin_cycles, self.depth = bins, bin_cycles, depth
        super().__init__({
            # Taps (all inputs): handshakes of the port being watched.
            "req_fire": In(1),            # req.valid & req.ready
            "req_write": In(1),           # req.payload.write
            "req_beats_m1": In(8),        # req.payload.beats_m1
            "rdata_fire": In(1),          # rdata.valid & rdata.ready
            "clear": In(1),
            "count": Out(32),
            "total": Out(48),
            "max": Out(32),
            "overflow": Out(1),
            "hist_index": In(range(bins)),
            "hist_count": Out(32),
            "clearing": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        now = Signal(32)
        m.d.sync += now.eq(now + 1)

        entry = data.StructLayout({"issued": 32, "beats_m1": 8})
        m.submodules.inflight = q = fifo.SyncFIFOBuffered(width=entry.size, depth=self.depth)
        head = data.View(entry, q.r_data)

        m.d.comb += [
            q.w_en.eq(self.req_fire & ~self.req_write),
            q.w_data.eq(Cat(now, self.req_beats_m1)),
        ]
        with m.If(q.w_en & ~q.w_rdy):
            m.d.sync += self.overflow.eq(1)

        beat_in_burst = Signal(8)
        m.submodules.hist = hist = Memory(shape=32, depth=self.bins, init=[])
        host_rd = hist.read_port(domain="comb")
        rec_rd = hist.read_port(domain="comb")
        wr = hist.write_port()
        m.d.comb += [host_rd.addr.eq(self.hist_index), self.hist_count.eq(host_rd.data)]
        sweep = Signal(range(self.bins + 1), init=self.bins)   # == bins: not clearing
        m.d.comb += self.clearing.eq(sweep != self.bins)

        # Pop the in-flight record on every rdata beat, clear or not, so the FIFO never desyncs.
        with m.If(self.rdata_fire & q.r_rdy):
            with m.If(beat_in_burst == head.beats_m1):
                m.d.sync += beat_in_burst.eq(0)
                m.d.comb += q.r_en.eq(1)
            with m.Else():
                m.d.sync += beat_in_burst.eq(beat_in_burst + 1)

        lat = Signal(32)
        b = Signal(range(self.bins))
        shift = (self.bin_cycles - 1).bit_length()
        m.d.comb += [
            lat.eq(now - head.issued),
            b.eq(Mux(lat >= self.bins * self.bin_cycles, self.bins - 1, lat >> shift)),
        ]
        m.d.comb += rec_rd.addr.eq(b)
        with m.If(self.clear):
            m.d.sync += [self.count.eq(0), self.total.eq(0), self.max.eq(0), self.overflow.eq(0),
                         sweep.eq(0)]
        with m.Elif(self.clearing):
            m.d.comb += [wr.addr.eq(sweep), wr.data.eq(0), wr.en.eq(1)]
            m.d.sync += sweep.eq(sweep + 1)
        with m.Elif(self.rdata_fire & q.r_rdy & (beat_in_burst == 0) & ~self.overflow):
            m.d.sync += [
                self.count.eq(self.count + 1),
                self.total.eq(self.total + lat),
            ]
            m.d.comb += [wr.addr.eq(b), wr.data.eq(rec_rd.data + 1), wr.en.eq(1)]
            with m.If(lat > self.max):
                m.d.sync += self.max.eq(lat)
        assert self.bin_cycles & (self.bin_cycles - 1) == 0, "bin_cycles must be a power of two"
        return m

"""Host DMA engine: bulk transfers between the host's wide data port and HBM.

One transfer at a time, described by ``cmd`` (start pulse, direction, beat address, beat count).

Host -> chip (``to_hbm=1``): beats arriving on ``h2c`` are written to HBM from ``addr`` upwards.
Chip -> host (``to_hbm=0``): beats read from HBM are delivered on ``c2h`` in address order.

Cycle-level contract
    - Transfers are split into requests that never cross a burst block
      (``params.hbm_burst_beats`` beats, aligned), so a long aligned transfer becomes full bursts.
    - Throughput: one beat per cycle in either direction when the memory and the host keep up
      (requests are issued without waiting for data; the HBM port contract keeps order).
    - Back-pressure: ``h2c`` is stalled while HBM is not accepting write data; a stalled ``c2h``
      stalls the port's read data, which the HBM model buffers per port (no data is lost).
    - ``busy`` rises the cycle after ``start`` and falls with ``done`` (one-cycle pulse), which
      fires once every request has been accepted by HBM and every data beat has moved. A request
      accepted by HBM is ordered before any later request to the same address (per-channel FIFO
      order in the HBM model), so data written by a finished DMA is visible to every later reader.
    - A transfer that would run past the end of HBM, or has zero length, is refused at ``start``:
      nothing moves, ``error`` is set to :data:`DmaError.OUT_OF_RANGE` / ``ZERO_LENGTH`` and
      ``done`` pulses. ``error`` holds until the next ``start``.
"""

import enum

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .bus import hbm_port_signature
from .params import RduParams

__all__ = ["DmaEngine", "DmaError"]


class DmaError(enum.IntEnum):
    OK = 0
    OUT_OF_RANGE = 1
    ZERO_LENGTH = 2


class DmaEngine(wiring.Component):
    def __init__(self, params: RduParams):
        self.params = p = params
        count_bits = p.hbm_addr_bits + 1
        super().__init__({
            "start": In(1),
            "to_hbm": In(1),
            "addr": In(p.hbm_addr_bits + 1),     # one spare bit so an out-of-range addr is visible
            "beats": In(count_bits),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(2),
            "h2c": In(stream.Signature(p.beat_bits)),
            "c2h": Out(stream.Signature(p.beat_bits)),
            "mem": Out(hbm_port_signature(p)),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        burst = p.hbm_burst_beats
        count_bits = p.hbm_addr_bits + 1

        req_addr = Signal(p.hbm_addr_bits + 1)      # next request's beat address
        req_left = Signal(count_bits)               # beats not yet covered by a request
        data_left = Signal(count_bits)              # beats not yet moved on the data path
        to_hbm = Signal()

        # Size of the next request: up to the end of the current burst block.
        to_block_end = Signal(range(burst + 1))
        m.d.comb += to_block_end.eq(burst - req_addr[:max(1, (burst - 1).bit_length())]
                                    if burst > 1 else 1)
        chunk = Signal(range(burst + 1))
        m.d.comb += chunk.eq(Mux(req_left < to_block_end, req_left, to_block_end))

        # Request channel.
        m.d.comb += [
            self.mem.req.valid.eq(self.busy & (req_left != 0)),
            self.mem.req.payload.addr.eq(req_addr),
            self.mem.req.payload.beats_m1.eq(chunk - 1),
            self.mem.req.payload.write.eq(to_hbm),
        ]
        with m.If(self.mem.req.valid & self.mem.req.ready):
            m.d.sync += [req_addr.eq(req_addr + chunk), req_left.eq(req_left - chunk)]

        # Data path: straight through, counted.
        moving = Signal()
        with m.If(to_hbm):
            m.d.comb += [
                self.mem.wdata.valid.eq(self.h2c.valid & self.busy & (data_left != 0)),
                self.mem.wdata.payload.eq(self.h2c.payload),
                self.h2c.ready.eq(self.mem.wdata.ready & self.busy & (data_left != 0)),
                moving.eq(self.mem.wdata.valid & self.mem.wdata.ready),
            ]
        with m.Else():
            m.d.comb += [
                self.c2h.valid.eq(self.mem.rdata.valid & self.busy & (data_left != 0)),
                self.c2h.payload.eq(self.mem.rdata.payload),
                self.mem.rdata.ready.eq(self.c2h.ready & self.busy & (data_left != 0)),
                moving.eq(self.c2h.valid & self.c2h.ready),
            ]
        with m.If(moving):
            m.d.sync += data_left.eq(data_left - 1)

        m.d.sync += self.done.eq(0)
        with m.If(self.busy):
            last_req = (req_left == 0) | ((req_left == chunk) & self.mem.req.ready)
            last_data = (data_left == 0) | ((data_left == 1) & moving)
            with m.If(last_req & last_data):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.Elif(self.start):
            end = self.addr + self.beats
            with m.If(self.beats == 0):
                m.d.sync += [self.error.eq(DmaError.ZERO_LENGTH), self.done.eq(1)]
            with m.Elif(end > p.hbm_beats):
                m.d.sync += [self.error.eq(DmaError.OUT_OF_RANGE), self.done.eq(1)]
            with m.Else():
                m.d.sync += [
                    self.error.eq(DmaError.OK), self.busy.eq(1), to_hbm.eq(self.to_hbm),
                    req_addr.eq(self.addr), req_left.eq(self.beats), data_left.eq(self.beats),
                ]
        return m

"""Host interface: the CSR bus, the DMA engine, and the chip's global performance counters.

The host (the Python runtime driving the simulated chip) sees two ports:

``csr`` — a 32-bit register bus, word addressed (``params.csr_addr_bits``):
    - write: ``w_en`` high for one cycle with ``addr``/``w_data``; takes effect at that edge.
    - read: ``r_en`` high for one cycle with ``addr``; ``r_data`` holds the value from the next
      cycle on until the next read (registered read, latency 1). Reading a counter's LO word
      latches its HI word, so a LO-then-HI pair is one consistent 48-bit value.
    Addresses at or above :data:`EXT_BASE` are forwarded on ``ext`` (same timing) so that units
    outside this block (latency monitors, sequencer counters) add registers without touching it.

``h2c`` / ``c2h`` — the wide (one beat = ``params.beat_bits``) DMA data streams, driven by
:class:`~hdl.dma.DmaEngine` as programmed through the DMA registers.

Register map (word addresses; see :class:`Csr`):

====================  ===  ============================================================
register              R/W  meaning
====================  ===  ============================================================
ID                    R    ``0x52445531`` ("RDU1")
PARAMS_HASH           R    first 4 bytes (big endian) of ``RduParams.digest()``
STATUS                R    bit 0 DMA busy, bit 1 any AGCU busy, bit 2 error latched
ERROR                 R/W  first error code latched (:class:`ErrorCode`); write any value to clear
CONTROL               W    bit 0: clear all counters and latency monitors
DMA_ADDR              R/W  HBM beat address of the next transfer
DMA_BEATS             R/W  length in beats
DMA_CTRL              W    bit 0 start, bit 1 direction (1 = host->HBM, 0 = HBM->host)
DMA_STATUS            R    bit 0 busy, bits 2:1 last transfer's :class:`~hdl.dma.DmaError`
CFG_UNIT / CFG_ADDR   R/W  target of the debug configuration write
CFG_DATA              W    writing issues one config-bus write of this value (debug path; the
                           bitstream config controller is the normal path)
AGCU_ITER             R/W  iteration index handed to AGCUs started through AGCU_START
AGCU_START            W    bit i: start AGCU i (one-cycle pulse)
AGCU_BUSY             R    bit i: AGCU i busy
AGCU_STATUS           R    4 bits per AGCU: its status code
COUNTER_BASE + 2k     R    counter k, bits 31:0 (see :data:`COUNTERS`)
COUNTER_BASE + 2k+1   R    counter k, bits 47:32 (as latched by the LO read)
====================  ===  ============================================================

Errors: an AGCU status that becomes non-zero or a refused DMA latches ``ERROR`` (first error
wins) and sets STATUS bit 2; the runtime turns it into an exception.
"""

import enum

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .bus import config_bus_signature, hbm_port_signature, hbm_stats_signature
from .dma import DmaEngine
from .params import RduParams
from .perf import EventCounters

__all__ = ["HostInterface", "Csr", "ErrorCode", "COUNTERS", "csr_bus_signature", "EXT_BASE",
           "CHIP_ID"]

CHIP_ID = 0x52445531
EXT_BASE = 0x400


class Csr(enum.IntEnum):
    ID = 0x000
    PARAMS_HASH = 0x001
    STATUS = 0x002
    ERROR = 0x003
    CONTROL = 0x004
    DMA_ADDR = 0x010
    DMA_BEATS = 0x011
    DMA_CTRL = 0x012
    DMA_STATUS = 0x013
    CFG_UNIT = 0x020
    CFG_ADDR = 0x021
    CFG_DATA = 0x022
    AGCU_ITER = 0x030
    AGCU_START = 0x031
    AGCU_BUSY = 0x032
    AGCU_STATUS = 0x033
    COUNTER_BASE = 0x100


class ErrorCode(enum.IntEnum):
    """Latched in CSR ERROR. Bits 7:4 name the unit class, bits 3:0 the unit's own code."""
    NONE = 0x00
    DMA = 0x10          # | DmaError
    AGCU = 0x20         # | agcu index << 8 ... see error_code_agcu()


def error_code_agcu(index: int, status: int) -> int:
    return 0x20 | (index << 8) | status


def counter_names(p: RduParams) -> list[str]:
    names = ["cycles", "hbm_busy_cycles", "dma_busy_cycles", "agcu_busy_cycles"]
    for c in range(p.hbm_channels):
        names += [f"ch{c}_rd_beats", f"ch{c}_wr_beats", f"ch{c}_refresh_cycles",
                  f"ch{c}_row_misses"]
    return names


COUNTERS = counter_names  # call with params: the list is geometry dependent


def csr_bus_signature(p: RduParams) -> wiring.Signature:
    """Seen from the host (initiator)."""
    return wiring.Signature({
        "addr": Out(p.csr_addr_bits),
        "w_en": Out(1),
        "w_data": Out(p.csr_data_bits),
        "r_en": Out(1),
        "r_data": In(p.csr_data_bits),
    })


class HostInterface(wiring.Component):
    def __init__(self, params: RduParams):
        self.params = p = params
        n = p.n_agcus
        super().__init__({
            "csr": In(csr_bus_signature(p)),
            "h2c": In(stream.Signature(p.beat_bits)),
            "c2h": Out(stream.Signature(p.beat_bits)),
            "mem": Out(hbm_port_signature(p)),           # the DMA engine's HBM port
            "cfg": Out(config_bus_signature()),
            "hbm_stats": In(hbm_stats_signature(p)),
            "agcu_start": Out(n),
            "agcu_iteration": Out(16),
            "agcu_busy": In(n),
            "agcu_status": In(4).array(n),
            # Extension window: reads at EXT_BASE and above are answered by ext_r_data.
            "ext_addr": Out(p.csr_addr_bits),
            "ext_r_en": Out(1),
            "ext_r_data": In(32),
            "counters_clear": Out(1),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        m.submodules.dma = dma = DmaEngine(p)
        wiring.connect(m, wiring.flipped(self.h2c), dma.h2c)
        wiring.connect(m, dma.c2h, wiring.flipped(self.c2h))
        wiring.connect(m, dma.mem, wiring.flipped(self.mem))

        names = counter_names(p)
        m.submodules.counters = ctr = EventCounters(len(names))
        stats = self.hbm_stats
        events = {
            "cycles": C(1, 1),
            "hbm_busy_cycles": (stats.rd_beat | stats.wr_beat).any(),
            "dma_busy_cycles": dma.busy,
            "agcu_busy_cycles": self.agcu_busy.any(),
        }
        for c in range(p.hbm_channels):
            events[f"ch{c}_rd_beats"] = stats.rd_beat[c]
            events[f"ch{c}_wr_beats"] = stats.wr_beat[c]
            events[f"ch{c}_refresh_cycles"] = stats.refresh[c]
            events[f"ch{c}_row_misses"] = stats.row_miss[c]
        m.d.comb += ctr.inc.eq(Cat(events[n] for n in names))

        # ---- registers ------------------------------------------------------------------------
        dma_addr = Signal(p.hbm_addr_bits + 1)
        dma_beats = Signal(p.hbm_addr_bits + 1)
        cfg_unit = Signal(8)
        cfg_addr = Signal(8)
        agcu_iter = Signal(16)
        error = Signal(16)
        hi_latch = Signal(16)

        m.d.comb += [
            dma.addr.eq(dma_addr), dma.beats.eq(dma_beats),
            self.agcu_iteration.eq(agcu_iter),
            self.ext_addr.eq(self.csr.addr),
        ]

        # Error latch: the first error wins until cleared.
        agcu_err = Signal(16)
        for i in reversed(range(p.n_agcus)):
            with m.If(self.agcu_status[i] != 0):
                m.d.comb += agcu_err.eq(error_code_agcu(i, 0) | self.agcu_status[i])
        clear_error = Signal()
        with m.If(clear_error):
            m.d.sync += error.eq(0)
        with m.Elif(error == 0):
            with m.If(dma.done & (dma.error != 0)):
                m.d.sync += error.eq(ErrorCode.DMA | dma.error)
            with m.Elif(agcu_err != 0):
                m.d.sync += error.eq(agcu_err)

        # ---- writes ---------------------------------------------------------------------------
        csr = self.csr
        m.d.sync += [self.cfg.we.eq(0)]
        m.d.comb += [self.agcu_start.eq(0), self.counters_clear.eq(0), ctr.clear.eq(0)]
        with m.If(csr.w_en):
            with m.Switch(csr.addr):
                with m.Case(Csr.ERROR):
                    m.d.comb += clear_error.eq(1)
                with m.Case(Csr.CONTROL):
                    m.d.comb += [ctr.clear.eq(csr.w_data[0]), self.counters_clear.eq(csr.w_data[0])]
                with m.Case(Csr.DMA_ADDR):
                    m.d.sync += dma_addr.eq(csr.w_data)
                with m.Case(Csr.DMA_BEATS):
                    m.d.sync += dma_beats.eq(csr.w_data)
                with m.Case(Csr.DMA_CTRL):
                    m.d.comb += [dma.start.eq(csr.w_data[0]), dma.to_hbm.eq(csr.w_data[1])]
                with m.Case(Csr.CFG_UNIT):
                    m.d.sync += cfg_unit.eq(csr.w_data)
                with m.Case(Csr.CFG_ADDR):
                    m.d.sync += cfg_addr.eq(csr.w_data)
                with m.Case(Csr.CFG_DATA):
                    m.d.sync += [self.cfg.we.eq(1), self.cfg.unit.eq(cfg_unit),
                                 self.cfg.addr.eq(cfg_addr), self.cfg.data.eq(csr.w_data)]
                with m.Case(Csr.AGCU_ITER):
                    m.d.sync += agcu_iter.eq(csr.w_data)
                with m.Case(Csr.AGCU_START):
                    m.d.comb += self.agcu_start.eq(csr.w_data)

        # ---- reads (registered) ---------------------------------------------------------------
        digest = int.from_bytes(p.digest()[:4], "big")
        status_word = Cat(dma.busy, self.agcu_busy.any(), error != 0)
        agcu_status_word = Cat(s for s in self.agcu_status)
        ext = Signal()
        r_reg = Signal(32)
        m.d.comb += self.ext_r_en.eq(csr.r_en & (csr.addr >= EXT_BASE))
        with m.If(csr.r_en):
            m.d.sync += ext.eq(csr.addr >= EXT_BASE)
            with m.Switch(csr.addr):
                with m.Case(Csr.ID):
                    m.d.sync += r_reg.eq(CHIP_ID)
                with m.Case(Csr.PARAMS_HASH):
                    m.d.sync += r_reg.eq(digest)
                with m.Case(Csr.STATUS):
                    m.d.sync += r_reg.eq(status_word)
                with m.Case(Csr.ERROR):
                    m.d.sync += r_reg.eq(error)
                with m.Case(Csr.DMA_ADDR):
                    m.d.sync += r_reg.eq(dma_addr)
                with m.Case(Csr.DMA_BEATS):
                    m.d.sync += r_reg.eq(dma_beats)
                with m.Case(Csr.DMA_STATUS):
                    m.d.sync += r_reg.eq(Cat(dma.busy, dma.error))
                with m.Case(Csr.CFG_UNIT):
                    m.d.sync += r_reg.eq(cfg_unit)
                with m.Case(Csr.CFG_ADDR):
                    m.d.sync += r_reg.eq(cfg_addr)
                with m.Case(Csr.AGCU_ITER):
                    m.d.sync += r_reg.eq(agcu_iter)
                with m.Case(Csr.AGCU_BUSY):
                    m.d.sync += r_reg.eq(self.agcu_busy)
                with m.Case(Csr.AGCU_STATUS):
                    m.d.sync += r_reg.eq(agcu_status_word)
                for k in range(len(names)):
                    with m.Case(Csr.COUNTER_BASE + 2 * k):
                        m.d.sync += [r_reg.eq(ctr.counts[k][:32]),
                                     hi_latch.eq(ctr.counts[k][32:])]
                    with m.Case(Csr.COUNTER_BASE + 2 * k + 1):
                        m.d.sync += r_reg.eq(hi_latch)
                with m.Default():
                    m.d.sync += r_reg.eq(0)
        # Extension reads are answered by the chip top, registered there like ours are here:
        # ext_r_data must hold the value the cycle after ext_r_en.
        m.d.comb += csr.r_data.eq(Mux(ext, self.ext_r_data, r_reg))
        return m

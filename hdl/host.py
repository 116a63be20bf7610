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
                           bitstream config controller is the normal path; a controller write
                           in the same cycle wins)
CONFIG_LENGTH         R/W  length in bytes of the bitstream to load
CONFIG_CTRL           R/W  bit 0 (W): start the config controller; bit 1 (R/W, sticky): route
                           ``h2c`` to the config controller instead of the DMA engine
CONFIG_STATUS         R    bit 0 busy, bits 7:4 :class:`~sw.bitstream.ConfigStatus` of the last
                           load, bits 31:16 number of register writes it made
RUN_ITER              R/W  first iteration index of the kernel call started by RUN_START
RUN_START             W    launch a kernel call: every unit whose bit is set in RUN_MASK runs
                           iterations RUN_ITER .. RUN_ITER + RUN_COUNT - 1 under the looping
                           sequencer (:mod:`hdl.sequencer`: each unit runs ahead as far as its
                           UNIT_DEP allows)
RUN_STATUS            R    bit 0 some masked unit busy; bit 1 the call has finished: every
                           masked unit completed RUN_COUNT iterations and the memory system has
                           performed every write (also the ``run_done`` pin)
RUN_COUNT             R/W  iterations per call (reset 1; 0 counts as 1)
UNIT_SEL              R/W  unit id whose status UNIT_STATUS shows and UNIT_DEP addresses
UNIT_STATUS           R    status code of unit UNIT_SEL (bits 3:0), busy (bit 4)
UNIT_DEP              R/W  dependence register of unit UNIT_SEL (:func:`hdl.sequencer.dep_word`)
PROG_ENTRY            R/W  section-table entry that the next PROG_ENTRY_LEN write fills
PROG_ENTRY_ADDR       R/W  HBM beat address of that entry's bitstream
PROG_ENTRY_LEN        W    its length in bytes; the write stores (PROG_ENTRY_ADDR, length) into
                           entry PROG_ENTRY and increments PROG_ENTRY (tables are written as
                           ADDR, LEN, ADDR, LEN, ...)
PROG_FIRST            R/W  first entry of the program PROG_START runs
PROG_SECTIONS         R/W  entries (sections) per iteration
PROG_START            W    run a program (:mod:`hdl.sections`): for every iteration RUN_ITER ..
                           RUN_ITER + RUN_COUNT - 1, load each section's bitstream from HBM into
                           the config controller and run its kernel; no host action in between
PROG_STATUS           R    bit 0 busy, bits 3:1 :class:`~hdl.sections.Phase`, bits 6:4 the last
                           call's :class:`~hdl.sections.SectionError`, bits 15:8 the entry and
                           bits 31:16 the iteration in progress (held after the call)
RUN_MASK0 + k         R/W  bit i: unit id ``32k + i`` takes part in RUN_START
RUN_BUSY0 + k         R    bit i: unit id ``32k + i`` busy
COUNTER_BASE + 2k     R    counter k, bits 31:0 (see :data:`COUNTERS`)
COUNTER_BASE + 2k+1   R    counter k, bits 47:32 (as latched by the LO read)
====================  ===  ============================================================

Errors: a unit that finishes (``done``) with a non-zero status, a refused DMA or a refused bitstream latches
``ERROR`` (first error wins, :func:`error_code_unit` / :class:`ErrorCode`) and sets STATUS bit 2;
the runtime turns it into an exception. A program (PROG_START) stops at the first section
boundary after an error is latched, and latches its own refusals (a bad table range or entry, a
section without a kernel) as ``PROGRAM``. STATUS bit 3: config controller busy; bit 4: program
running. While a program runs, the DMA engine and the config controller are its: the host must
not start transfers or loads until ``run_done``.

Unit control: units are addressed by their config-bus unit id (``hdl/unitmap.py``). Each unit
that runs programs has a unit-control interface (``hdl/links.py``); the chip ties ``busy``,
``done`` and ``status`` of ids without one (switches) to zero. Kernel calls go through the
looping sequencer (:class:`hdl.sequencer.LoopSequencer`), which this interface contains.
"""

import enum

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .bus import config_bus_signature, hbm_port_signature, hbm_stats_signature
from .dma import DmaEngine
from .params import RduParams
from .perf import EventCounters
from .sections import SectionError, SectionSequencer
from .sequencer import LoopSequencer

__all__ = ["HostInterface", "Csr", "ErrorCode", "error_code_unit", "counter_names",
           "csr_bus_signature", "EXT_BASE", "CHIP_ID"]

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
    CONFIG_LENGTH = 0x024
    CONFIG_CTRL = 0x025
    CONFIG_STATUS = 0x026
    RUN_ITER = 0x030
    RUN_START = 0x031
    RUN_STATUS = 0x032
    UNIT_SEL = 0x033
    UNIT_STATUS = 0x034
    RUN_COUNT = 0x035
    UNIT_DEP = 0x036
    RUN_MASK0 = 0x040
    PROG_ENTRY = 0x060
    PROG_ENTRY_ADDR = 0x061
    PROG_ENTRY_LEN = 0x062
    PROG_FIRST = 0x063
    PROG_SECTIONS = 0x064
    PROG_START = 0x065
    PROG_STATUS = 0x066
    RUN_BUSY0 = 0x050
    COUNTER_BASE = 0x100


class ErrorCode(enum.IntEnum):
    """Latched in CSR ERROR. Bits 7:4 name the source, bits 3:0 its own code; for units, bits
    15:8 hold the unit id (:func:`error_code_unit`)."""
    NONE = 0x00
    DMA = 0x10          # | DmaError
    UNIT = 0x20         # | unit id << 8 | unit status
    CONFIG = 0x30       # | ConfigStatus
    PROGRAM = 0x40      # | SectionError (a program refused, hdl/sections.py)


def error_code_unit(unit: int, status: int) -> int:
    return ErrorCode.UNIT | (unit << 8) | status


def counter_names(p: RduParams) -> list[str]:
    names = ["cycles", "hbm_busy_cycles", "dma_busy_cycles", "run_busy_cycles",
             "dep_stall_cycles", "launches", "config_busy_cycles", "sections", "fill_cycles",
             "run_hbm_idle_cycles"]
    for c in range(p.hbm_channels):
        names += [f"ch{c}_rd_beats", f"ch{c}_wr_beats", f"ch{c}_refresh_cycles",
                  f"ch{c}_row_misses"]
    return names


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
    def __init__(self, params: RduParams, n_units: int):
        self.params = p = params
        self.n_units = n = n_units
        super().__init__({
            "csr": In(csr_bus_signature(p)),
            "h2c": In(stream.Signature(p.beat_bits)),
            "c2h": Out(stream.Signature(p.beat_bits)),
            "mem": Out(hbm_port_signature(p)),           # the DMA engine's HBM port
            "cfg": Out(config_bus_signature()),
            "hbm_stats": In(hbm_stats_signature(p)),
            "unit_start": Out(n),
            "unit_iteration": Out(16),
            "unit_busy": In(n),
            "unit_done": In(n),
            "unit_status": In(4).array(n),
            "run_done": Out(1),
            # Config controller (hdl/config.py) control and data.
            "cc_start": Out(1),
            "cc_length": Out(32),
            "cc_busy": In(1),
            "cc_done": In(1),
            "cc_status": In(4),
            "cc_writes": In(16),
            "cc_data": Out(stream.Signature(p.beat_bits)),
            "cc_cfg": In(config_bus_signature()),
            "cc_kt_count": In(16),
            "cc_hold": Out(1),
            "cc_release": Out(1),
            "cc_held": In(1),
            "cc_kt_units": In(n),
            # Extension window: reads at EXT_BASE and above are answered by ext_r_data.
            "ext_addr": Out(p.csr_addr_bits),
            "ext_r_en": Out(1),
            "ext_r_data": In(32),
            "counters_clear": Out(1),
            # a kernel's own HBM traffic this cycle (any AGCU port moving a beat), for the
            # fill counter: the section sequencer's bitstream prefetch must not end a fill
            "kernel_beat": In(1),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        m.submodules.dma = dma = DmaEngine(p)
        # h2c goes to the DMA engine, or to the config controller when CONFIG_CTRL bit 1 is set.
        h2c_to_config = Signal()
        with m.If(h2c_to_config):
            m.d.comb += [self.cc_data.valid.eq(self.h2c.valid),
                         self.cc_data.payload.eq(self.h2c.payload),
                         self.h2c.ready.eq(self.cc_data.ready)]
        with m.Else():
            m.d.comb += [dma.h2c.valid.eq(self.h2c.valid), dma.h2c.payload.eq(self.h2c.payload),
                         self.h2c.ready.eq(dma.h2c.ready)]
        m.submodules.sections = prog = SectionSequencer(p, self.n_units)
        # c2h goes to the host, or to the config controller while a program loads a section.
        with m.If(prog.to_config):
            m.d.comb += [self.cc_data.valid.eq(dma.c2h.valid),
                         self.cc_data.payload.eq(dma.c2h.payload),
                         dma.c2h.ready.eq(self.cc_data.ready)]
        with m.Else():
            wiring.connect(m, dma.c2h, wiring.flipped(self.c2h))
        wiring.connect(m, dma.mem, wiring.flipped(self.mem))

        names = counter_names(p)
        m.submodules.counters = ctr = EventCounters(len(names))
        m.submodules.sequencer = seq = LoopSequencer(self.n_units)
        run_start = Signal()                # a RUN_START write: launch a kernel call
        prog_start = Signal()               # a PROG_START write: run a program of sections
        stats = self.hbm_stats
        # Cycle classes for the attribution (exclusive, in this order): HBM moving a beat;
        # else configuration not hidden under compute; else units running before the first
        # beat of their call came (fill: HBM latency exposed); else units running with HBM idle
        # after it (compute, drain, bubbles); the rest is host and sequencing overhead.
        beat = Signal()
        units_busy = Signal()
        seen_beat = Signal()                # a kernel beat since the sequencer's last launch
        m.d.comb += [
            beat.eq((stats.rd_beat | stats.wr_beat).any()),
            units_busy.eq(self.unit_busy.any()),
        ]
        with m.If(seq.launch):
            m.d.sync += seen_beat.eq(0)
        with m.Elif(self.kernel_beat):
            m.d.sync += seen_beat.eq(1)
        idle_run = units_busy & ~beat
        events = {
            "cycles": C(1, 1),
            "hbm_busy_cycles": beat,
            "dma_busy_cycles": dma.busy,
            "run_busy_cycles": units_busy,
            "dep_stall_cycles": seq.dep_stall,
            "launches": run_start | prog_start,
            # configuration time not hidden under compute: the controller loading or
            # replaying (not holding a prefetched section) while no unit runs or HBM moves
            "config_busy_cycles": self.cc_busy & ~self.cc_held & ~units_busy & ~beat,
            "sections": prog.launch,
            "fill_cycles": idle_run & ~seen_beat,
            "run_hbm_idle_cycles": idle_run & seen_beat,
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
        run_iter = Signal(16)
        run_count = Signal(16, init=1)
        n_mask_words = (self.n_units + 31) // 32
        run_mask = Signal(32 * n_mask_words)
        unit_sel = Signal(8)
        cc_length = Signal(32)
        cc_status = Signal(4)
        error = Signal(16)
        hi_latch = Signal(16)
        mask = run_mask[:self.n_units]
        prog_entry = Signal(8)
        prog_addr = Signal(p.hbm_addr_bits)
        prog_first = Signal(8)
        prog_sections = Signal(9)
        csr_dma_start = Signal()
        csr_dma_to_hbm = Signal()
        csr_cc_start = Signal()

        m.d.comb += [
            self.unit_iteration.eq(seq.unit_iteration),
            self.unit_start.eq(seq.unit_start),
            seq.unit_done.eq(self.unit_done),
            seq.dep_rd_unit.eq(unit_sel),
            self.ext_addr.eq(self.csr.addr),
            # While a program runs, it owns the DMA engine, the config controller and the
            # sequencer's launch inputs; otherwise the CSRs drive them.
            dma.start.eq(csr_dma_start | prog.dma_start),
            dma.to_hbm.eq(csr_dma_to_hbm & ~prog.busy),
            dma.addr.eq(Mux(prog.busy, prog.dma_addr, dma_addr)),
            dma.beats.eq(Mux(prog.busy, prog.dma_beats, dma_beats)),
            self.cc_start.eq(csr_cc_start | prog.cc_start),
            self.cc_length.eq(Mux(prog.busy, prog.cc_length, cc_length)),
            seq.launch.eq(run_start | prog.launch),
            seq.mask.eq(Mux(prog.busy, prog.mask, mask)),
            seq.base.eq(Mux(prog.busy, prog.iteration, run_iter)),
            seq.count.eq(Mux(prog.busy, 1, run_count)),
            prog.start.eq(prog_start), prog.first.eq(prog_first),
            prog.sections.eq(prog_sections), prog.iter_base.eq(run_iter),
            prog.iter_count.eq(run_count),
            prog.cc_held.eq(self.cc_held),
            self.cc_hold.eq(prog.cc_hold), self.cc_release.eq(prog.cc_release),
            prog.cc_done.eq(self.cc_done), prog.cc_status.eq(self.cc_status),
            prog.kt_count.eq(self.cc_kt_count), prog.kt_units.eq(self.cc_kt_units),
            prog.run_done.eq(seq.done & ~self.hbm_stats.busy.any()),
            prog.abort.eq(error != 0),
            # A call is finished when its units are done *and* the writes they posted have
            # been performed: a writing AGCU is done once HBM has accepted its last beat
            # (ordered before any later access), but the host reading counters, or a host-side
            # launch decision, should see the memory quiet. A program is finished once its
            # sequencer is idle and past its done pulse (the cycle a refusal gets latched).
            self.run_done.eq(seq.done & ~self.hbm_stats.busy.any() & ~prog.busy & ~prog.done),
        ]
        with m.If(self.cc_done):
            m.d.sync += cc_status.eq(self.cc_status)


        # Error latch: the first error wins until cleared.
        # A unit's status is final at its done pulse and held until its next start, so the latch
        # samples it at done: clearing ERROR does not re-arm from a stale status.
        unit_err = Signal(16)
        for i in reversed(range(self.n_units)):
            with m.If(self.unit_done[i] & (self.unit_status[i] != 0)):
                m.d.comb += unit_err.eq(error_code_unit(i, 0) | self.unit_status[i])
        clear_error = Signal()
        with m.If(clear_error):
            m.d.sync += error.eq(0)
        with m.Elif(error == 0):
            with m.If(dma.done & (dma.error != 0)):
                m.d.sync += error.eq(ErrorCode.DMA | dma.error)
            with m.Elif(self.cc_done & (self.cc_status != 0)):
                m.d.sync += error.eq(ErrorCode.CONFIG | self.cc_status)
            with m.Elif(prog.done & (prog.error != SectionError.OK)
                        & (prog.error != SectionError.ABORTED)):
                m.d.sync += error.eq(ErrorCode.PROGRAM | prog.error)
            with m.Elif(unit_err != 0):
                m.d.sync += error.eq(unit_err)

        # ---- writes ---------------------------------------------------------------------------
        csr = self.csr
        # Config bus: the config controller's writes win over the debug path.
        dbg_we = Signal()
        dbg_data = Signal(32)
        m.d.sync += dbg_we.eq(0)
        with m.If(self.cc_cfg.we):
            m.d.comb += [self.cfg.we.eq(1), self.cfg.unit.eq(self.cc_cfg.unit),
                         self.cfg.addr.eq(self.cc_cfg.addr), self.cfg.data.eq(self.cc_cfg.data)]
        with m.Else():
            m.d.comb += [self.cfg.we.eq(dbg_we), self.cfg.unit.eq(cfg_unit),
                         self.cfg.addr.eq(cfg_addr), self.cfg.data.eq(dbg_data)]
        m.d.comb += [self.counters_clear.eq(0),
                     ctr.clear.eq(0)]
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
                    m.d.comb += [csr_dma_start.eq(csr.w_data[0]),
                                 csr_dma_to_hbm.eq(csr.w_data[1])]
                with m.Case(Csr.CFG_UNIT):
                    m.d.sync += cfg_unit.eq(csr.w_data)
                with m.Case(Csr.CFG_ADDR):
                    m.d.sync += cfg_addr.eq(csr.w_data)
                with m.Case(Csr.CFG_DATA):
                    m.d.sync += [dbg_we.eq(1), dbg_data.eq(csr.w_data)]
                with m.Case(Csr.CONFIG_LENGTH):
                    m.d.sync += cc_length.eq(csr.w_data)
                with m.Case(Csr.CONFIG_CTRL):
                    m.d.comb += csr_cc_start.eq(csr.w_data[0])
                    m.d.sync += h2c_to_config.eq(csr.w_data[1])
                with m.Case(Csr.RUN_ITER):
                    m.d.sync += run_iter.eq(csr.w_data)
                with m.Case(Csr.RUN_START):
                    m.d.comb += run_start.eq(1)
                with m.Case(Csr.UNIT_SEL):
                    m.d.sync += unit_sel.eq(csr.w_data)
                with m.Case(Csr.RUN_COUNT):
                    m.d.sync += run_count.eq(csr.w_data)
                with m.Case(Csr.UNIT_DEP):
                    m.d.comb += [seq.dep_we.eq(1), seq.dep_unit.eq(unit_sel),
                                 seq.dep_data.eq(csr.w_data)]
                with m.Case(Csr.PROG_ENTRY):
                    m.d.sync += prog_entry.eq(csr.w_data)
                with m.Case(Csr.PROG_ENTRY_ADDR):
                    m.d.sync += prog_addr.eq(csr.w_data)
                with m.Case(Csr.PROG_ENTRY_LEN):
                    m.d.comb += [prog.tbl_we.eq(1), prog.tbl_index.eq(prog_entry),
                                 prog.tbl_addr.eq(prog_addr), prog.tbl_length.eq(csr.w_data)]
                    m.d.sync += prog_entry.eq(prog_entry + 1)
                with m.Case(Csr.PROG_FIRST):
                    m.d.sync += prog_first.eq(csr.w_data)
                with m.Case(Csr.PROG_SECTIONS):
                    m.d.sync += prog_sections.eq(csr.w_data)
                with m.Case(Csr.PROG_START):
                    m.d.comb += prog_start.eq(1)
                for k in range(n_mask_words):
                    with m.Case(Csr.RUN_MASK0 + k):
                        m.d.sync += run_mask[32 * k:32 * k + 32].eq(csr.w_data)

        # ---- reads (registered) ---------------------------------------------------------------
        digest = int.from_bytes(p.digest()[:4], "big")
        status_word = Cat(dma.busy, self.unit_busy.any(), error != 0, self.cc_busy, prog.busy)
        unit_status_a = Array(self.unit_status)
        busy_words = Cat(self.unit_busy, C(0, 32 * n_mask_words - self.n_units))
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
                with m.Case(Csr.CONFIG_LENGTH):
                    m.d.sync += r_reg.eq(cc_length)
                with m.Case(Csr.CONFIG_CTRL):
                    m.d.sync += r_reg.eq(Cat(C(0, 1), h2c_to_config))
                with m.Case(Csr.CONFIG_STATUS):
                    m.d.sync += r_reg.eq(Cat(self.cc_busy, C(0, 3), cc_status, C(0, 8),
                                             self.cc_writes))
                with m.Case(Csr.RUN_ITER):
                    m.d.sync += r_reg.eq(run_iter)
                with m.Case(Csr.RUN_COUNT):
                    m.d.sync += r_reg.eq(run_count)
                with m.Case(Csr.UNIT_DEP):
                    m.d.sync += r_reg.eq(seq.dep_rd_data)
                with m.Case(Csr.RUN_STATUS):
                    m.d.sync += r_reg.eq(Cat((self.unit_busy & mask).any(), self.run_done))
                with m.Case(Csr.UNIT_SEL):
                    m.d.sync += r_reg.eq(unit_sel)
                with m.Case(Csr.PROG_ENTRY):
                    m.d.sync += r_reg.eq(prog_entry)
                with m.Case(Csr.PROG_ENTRY_ADDR):
                    m.d.sync += r_reg.eq(prog_addr)
                with m.Case(Csr.PROG_FIRST):
                    m.d.sync += r_reg.eq(prog_first)
                with m.Case(Csr.PROG_SECTIONS):
                    m.d.sync += r_reg.eq(prog_sections)
                with m.Case(Csr.PROG_STATUS):
                    m.d.sync += r_reg.eq(Cat(prog.busy, prog.phase, prog.error, C(0, 1),
                                             prog.entry, prog.iteration))
                with m.Case(Csr.UNIT_STATUS):
                    with m.If(unit_sel < self.n_units):
                        m.d.sync += r_reg.eq(Cat(unit_status_a[unit_sel],
                                                 self.unit_busy.bit_select(unit_sel, 1)))
                    with m.Else():
                        m.d.sync += r_reg.eq(0)
                for k in range(n_mask_words):
                    with m.Case(Csr.RUN_MASK0 + k):
                        m.d.sync += r_reg.eq(run_mask[32 * k:32 * k + 32])
                    with m.Case(Csr.RUN_BUSY0 + k):
                        m.d.sync += r_reg.eq(busy_words[32 * k:32 * k + 32])
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

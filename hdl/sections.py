"""Section sequencer: runs a *program* of sections (configurations) that sit in HBM, loading and
launching each one by itself, with no host round trip between sections or between iterations.

Why it exists
    A decoder layer does not fit the default 4x4 fabric as one configuration, so the compiler
    splits the layer kernel into sections, one fabric configuration each (as SN40L's compiler
    splits a graph that exceeds the chip into sections with on-chip program load). The host
    launches the *program* once; this unit walks its sections in order, for every iteration of
    the call (iteration = layer: every AGCU adds its per-iteration offsets), and only reports
    done at the end. ``layer`` mode launches the layer program once per layer (count 1);
    ``looped`` mode launches it once for all layers (count = layers).

Section table (``params.program_entries`` entries, written by the host through ``tbl_*``)
    Entry ``e`` = (``addr``: HBM beat address of a bitstream, ``length``: its bytes). A program
    call is (``first``, ``sections``, ``iter_base``, ``iter_count``): iterations ``iter_base ..
    iter_base + iter_count - 1`` (``iter_count`` 0 counts as 1), each running entries
    ``first .. first + sections - 1`` in order.

Per section
    1. ``LOOKUP`` (2 cycles): read the table entry.
    2. ``LOAD``: start the DMA engine (HBM -> config controller, ``ceil(length / 64)`` beats from
       ``addr``) and the config controller (``length``) in the same cycle; wait for ``cc_done``.
       The controller checks the whole bitstream (magic, CRC, geometry, records) before it
       writes a single register, so a corrupt section configures nothing.
    3. ``KERNEL`` (2 cycles): read the bitstream's kernel table entry 0 (``kt_units``: the unit
       mask) from the controller's buffer.
    4. ``LAUNCH`` (1 cycle): ``launch`` with ``mask`` = those units, ``base`` = the current
       iteration, ``count`` = 1 to the looping sequencer (:mod:`hdl.sequencer`).
    5. ``RUN``: wait for ``run_done`` (every unit done and the memory system quiet: the next
       section may read what this one wrote).

Prefetch (the pipelined part)
    In the ``LAUNCH`` cycle of a section, if the call has a next section (the next entry, or the
    first entry of the next iteration), the sequencer starts loading it at once with the config
    controller's ``hold``: the bitstream streams from HBM and is checked *while the current
    section runs* (sharing HBM with it), and the controller stops before its first register
    write. At ``run_done`` the sequencer raises ``release`` and only the replay remains (one
    config write per record), then ``KERNEL`` and ``LAUNCH``. So inside a call a section
    boundary costs about ``R + 8`` cycles (``R`` records; :mod:`hdl.config`), while the first
    section of every call pays the whole load, about ``150 (HBM latency) + B + R + 30`` cycles
    (``B`` beats): one call per layer (``layer`` mode) pays it at every layer, a looped call once.

Errors (``error`` holds the code from ``done`` until the next ``start``; the host latches it)
    - ``BAD_RANGE``: ``first + sections`` exceeds the table, or ``sections`` is 0 (refused at
      ``start``: nothing runs);
    - ``BAD_ENTRY``: a section's entry has length 0 or runs past the end of HBM (found before
      anything moves: the config controller would otherwise wait for beats that never come);
    - ``NO_KERNEL``: a section's bitstream loaded but holds no kernel table entry;
    - ``ABORTED``: the host latched an error (``abort``: a refused bitstream, a DMA error, a
      unit error). The program stops at the next section boundary; ``entry``/``iteration`` name
      the section that failed (for a refused prefetch: the prefetched one, once the running
      section has finished).
    ``done`` pulses once per call, also for a refused or aborted call.

Status for the host and the watchdog: ``busy``, ``phase`` (:class:`Phase`), ``entry`` and
``iteration`` of the section in progress (held after ``done``). ``to_config`` is high while a
call is in progress: the DMA engine's read data then feeds the config controller.
"""

import enum

from amaranth import *
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .links import ITERATION_BITS
from .params import RduParams

__all__ = ["SectionSequencer", "Phase", "SectionError", "LENGTH_BITS"]

LENGTH_BITS = 24


class Phase(enum.IntEnum):
    IDLE = 0
    LOOKUP = 1
    LOAD = 2
    KERNEL = 3
    RUN = 4


class SectionError(enum.IntEnum):
    OK = 0
    BAD_RANGE = 1
    NO_KERNEL = 2
    ABORTED = 3
    BAD_ENTRY = 4


class SectionSequencer(wiring.Component):
    """See the module docstring."""

    def __init__(self, params: RduParams, n_units: int):
        self.params = p = params
        self.n_units = n_units
        self.entry_layout = data.StructLayout({"addr": p.hbm_addr_bits, "length": LENGTH_BITS})
        IB = ITERATION_BITS
        super().__init__({
            "start": In(1),
            "first": In(8),
            "sections": In(9),
            "iter_base": In(IB),
            "iter_count": In(IB),
            "abort": In(1),
            # table write port
            "tbl_we": In(1),
            "tbl_index": In(8),
            "tbl_addr": In(p.hbm_addr_bits),
            "tbl_length": In(LENGTH_BITS),
            # DMA engine, HBM -> config controller
            "dma_start": Out(1),
            "dma_addr": Out(p.hbm_addr_bits + 1),
            "dma_beats": Out(p.hbm_addr_bits + 1),
            "to_config": Out(1),
            # config controller
            "cc_start": Out(1),
            "cc_hold": Out(1),
            "cc_release": Out(1),
            "cc_held": In(1),
            "cc_length": Out(32),
            "cc_done": In(1),
            "cc_status": In(4),
            "kt_count": In(16),
            "kt_units": In(n_units),
            # looping sequencer
            "launch": Out(1),
            "mask": Out(n_units),
            "iteration": Out(IB),
            "run_done": In(1),
            # status
            "busy": Out(1),
            "done": Out(1),
            "error": Out(3),
            "phase": Out(3),
            "entry": Out(8),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        IB = ITERATION_BITS
        m.submodules.table = table = memory.Memory(shape=self.entry_layout,
                                                   depth=p.program_entries, init=[])
        wr = table.write_port()
        rd = table.read_port()
        m.d.comb += [wr.en.eq(self.tbl_we & (self.tbl_index < p.program_entries)),
                     wr.addr.eq(self.tbl_index),
                     wr.data.addr.eq(self.tbl_addr), wr.data.length.eq(self.tbl_length)]

        first = Signal(8)
        last = Signal(8)                    # last entry of an iteration
        it_end = Signal(IB + 1)             # one past the last iteration
        entry = Signal(8)                   # section being loaded or run
        iteration = Signal(IB)
        nxt_entry = Signal(8)               # the section after it, if ``has_next``
        nxt_iter = Signal(IB)
        has_next = Signal()
        error = Signal(3)
        mask = Signal(self.n_units)
        beats = Signal(p.hbm_addr_bits + 1)
        bad_entry = Signal()
        # prefetch state
        pf_active = Signal()                # the next section is being (or has been) fetched
        pf_lookup = Signal()                # its table read is in flight
        pf_bad = Signal()                   # its entry was refused (nothing fetched)
        pf_refused = Signal()               # the controller refused it (done with a status)

        m.d.comb += [
            rd.addr.eq(Mux(pf_active, nxt_entry, entry)),
            self.entry.eq(entry), self.iteration.eq(iteration), self.error.eq(error),
            self.mask.eq(mask),
            self.dma_addr.eq(rd.data.addr), self.cc_length.eq(rd.data.length),
            beats.eq((rd.data.length + p.beat_bytes - 1) >> (p.beat_bytes.bit_length() - 1)),
            self.dma_beats.eq(beats),
            bad_entry.eq((rd.data.length == 0) | (rd.data.addr + beats > p.hbm_beats)),
        ]
        m.d.sync += self.done.eq(0)

        def finish(code=None):
            if code is not None:
                m.d.sync += error.eq(code)
            m.d.sync += [self.done.eq(1), pf_active.eq(0), pf_lookup.eq(0)]
            m.next = "IDLE"

        def issue(hold):
            """Start the DMA and the config controller on the entry ``rd.data`` shows."""
            m.d.comb += [self.dma_start.eq(1), self.cc_start.eq(1), self.cc_hold.eq(hold)]

        with m.FSM(name="phase") as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    count = Mux(self.iter_count == 0, 1, self.iter_count)
                    m.d.sync += [error.eq(SectionError.OK), entry.eq(self.first),
                                 first.eq(self.first), last.eq(self.first + self.sections - 1),
                                 iteration.eq(self.iter_base),
                                 it_end.eq(self.iter_base + count),
                                 pf_active.eq(0), pf_lookup.eq(0)]
                    with m.If((self.sections == 0)
                              | (self.first + self.sections > p.program_entries)):
                        finish(SectionError.BAD_RANGE)
                    with m.Else():
                        m.next = "LOOKUP"
            with m.State("LOOKUP"):
                # rd.addr = entry since this cycle: the entry is on rd.data next cycle.
                m.next = "ISSUE"
            with m.State("ISSUE"):
                with m.If(bad_entry):
                    finish(SectionError.BAD_ENTRY)
                with m.Else():
                    issue(hold=0)
                    m.next = "LOAD"
            with m.State("LOAD"):
                # cold load, or the replay of a released prefetch
                with m.If(self.cc_done):
                    m.next = "CHECK"
            with m.State("CHECK"):
                # The host latches a refused bitstream (or a DMA error) in the cycle after the
                # controller reports it, so ``abort`` is already high here.
                with m.If(self.abort | (self.cc_status != 0)):
                    finish(SectionError.ABORTED)
                with m.Elif(self.kt_count == 0):
                    finish(SectionError.NO_KERNEL)
                with m.Else():
                    m.next = "KERNEL"
            with m.State("KERNEL"):
                # The controller's kernel-table read port shows entry 0 from here on.
                m.d.sync += mask.eq(self.kt_units)
                with m.If(entry != last):
                    m.d.sync += [nxt_entry.eq(entry + 1), nxt_iter.eq(iteration),
                                 has_next.eq(1)]
                with m.Else():
                    m.d.sync += [nxt_entry.eq(first), nxt_iter.eq(iteration + 1),
                                 has_next.eq(iteration + 1 != it_end)]
                m.next = "LAUNCH"
            with m.State("LAUNCH"):
                m.d.comb += self.launch.eq(1)
                with m.If(has_next):
                    m.d.sync += [pf_active.eq(1), pf_lookup.eq(1), pf_bad.eq(0),
                                 pf_refused.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                # prefetch: table read (1 cycle), then issue with hold
                with m.If(pf_lookup):
                    m.d.sync += pf_lookup.eq(0)
                    m.next = "PF_ISSUE"
                with m.Elif(self.run_done):
                    m.next = "BOUNDARY"
            with m.State("PF_ISSUE"):
                with m.If(bad_entry):
                    m.d.sync += pf_bad.eq(1)
                with m.Else():
                    issue(hold=1)
                m.next = "RUN"
            with m.State("BOUNDARY"):
                # the running section has finished (run_done was high last cycle)
                with m.If(self.abort & ~pf_refused):
                    finish(SectionError.ABORTED)
                with m.Elif(~has_next):
                    finish()
                with m.Else():
                    m.d.sync += [entry.eq(nxt_entry), iteration.eq(nxt_iter)]
                    with m.If(pf_bad):
                        finish(SectionError.BAD_ENTRY)
                    with m.Elif(pf_refused):
                        finish(SectionError.ABORTED)
                    with m.Else():
                        m.next = "RELEASE"
            with m.State("RELEASE"):
                with m.If(pf_refused | self.cc_done):
                    finish(SectionError.ABORTED)
                with m.Elif(self.cc_held):
                    m.d.comb += self.cc_release.eq(1)
                    m.d.sync += pf_active.eq(0)
                    m.next = "LOAD"

        # A done from the controller while a prefetch waits is a refusal (a good one holds).
        with m.If(pf_active & ~fsm.ongoing("LOAD") & self.cc_done):
            m.d.sync += pf_refused.eq(1)

        for name, ph in (("LOOKUP", Phase.LOOKUP), ("ISSUE", Phase.LOAD), ("LOAD", Phase.LOAD),
                         ("RELEASE", Phase.LOAD), ("CHECK", Phase.KERNEL),
                         ("KERNEL", Phase.KERNEL), ("LAUNCH", Phase.RUN), ("RUN", Phase.RUN),
                         ("PF_ISSUE", Phase.RUN), ("BOUNDARY", Phase.RUN)):
            with m.If(fsm.ongoing(name)):
                m.d.comb += self.phase.eq(ph)
        m.d.comb += [self.busy.eq(~fsm.ongoing("IDLE")), self.to_config.eq(self.busy)]
        return m

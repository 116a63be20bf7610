"""Pattern Memory Unit (PMU): banked scratchpad with affine address generators, N-buffering
with token hand-off, and data-dependent reads (gather / LUT).

Organisation
    ``params.pmu_bytes`` of SRAM in ``params.pmu_banks`` banks (``pmu_banks == lanes``), each a
    ``lib.memory.Memory`` of 32-bit words with one read and one write port (simple dual port).
    ``depth = pmu_bytes / (banks * 4)`` rows (256 by default).

    - *beat address* ``b`` (vector access): row ``b`` of every bank; lane ``i`` <-> bank ``i``.
    - *word address* ``w`` (scalar and gather access): bank ``w % banks``, row ``w / banks``;
      so word ``w`` is lane ``w % 16`` of beat ``w / 16`` (a table written as beats is read
      back word by word with the natural order).

Buffers
    The *region* ``[BUF_BASE, BUF_BASE + N_BUF * BUF_SIZE)`` (beats) holds ``N_BUF`` buffers of
    ``BUF_SIZE`` beats; buffer ``k`` starts at beat ``BUF_BASE + k * BUF_SIZE``. Every generated
    address is an *offset inside the current buffer* (beats for vector modes, words for scalar
    and gather modes); an offset outside ``[0, BUF_SIZE)`` beats (``BUF_SIZE * 16`` words) is an
    error (see *Status*), never wrapped. Reset values make the whole scratchpad one buffer.

Write side (one write per cycle)
    ``WR_PASSES`` passes per ``start``; one pass fills one buffer. A pass runs the write counter
    chain (``WR_COUNTk``/``WR_STRIDEk``, counter 0 innermost) once; each step consumes one item:
    ``win`` (a beat, ``WR_MODE.SCALAR = 0``) or ``swin`` (a word, ``WR_MODE.SCALAR = 1``), and,
    with ``WR_MODE.ADDR_STREAM = 1``, one word from ``waddr`` (signed, added to the address; e.g.
    KV-cache append at position ``pos``). Address offset::

        WR_BASE + WR_ITER_STRIDE * iteration + chain_offset [+ waddr]

    A write accepted in cycle ``t`` is visible to a read issued in cycle ``t + 1``.

Read side (one request per cycle), ``RD_MODE.MODE``:
    - ``VECTOR`` (0): the read chain gives beat offsets; beats go out on ``rout``.
    - ``GATHER`` (1): each ``gidx`` beat carries 16 per-lane word indices ``idx_i``; lane ``i``
      of the ``rout`` beat is ``word[RD_BASE + iter_off + chain_offset + idx_i]``. Bank
      conflicts are *serialised*: each cycle every bank serves the row of its lowest-numbered
      pending lane, and every pending lane that wants that same word is served too
      (broadcast). A beat takes ``max over banks of (distinct rows wanted in that bank)`` cycles
      (1 for conflict-free or all-equal indices, 16 worst case); the next ``gidx`` beat is
      accepted in the cycle the previous one issues its last reads, so conflict-free gathers
      run at 1 beat/cycle.
    - ``SCALAR`` (2): the read chain gives word offsets; words go out on ``sout``.
    - ``SGATHER`` (3): each ``sidx`` word ``idx`` -> ``sout`` = ``word[RD_BASE + iter_off +
      chain_offset + idx]``, 1 word/cycle.
    In the gather modes ``idx`` is unsigned and must be ``< TBL_SIZE`` (words).
    A pass = ``RD_REPEAT`` runs of the read chain over one buffer (one chain step per request;
    e.g. x re-read once per GEMV row: counts ``{beats, rows}``, strides ``{1, 0}``, or
    ``RD_REPEAT = rows``); ``RD_PASSES`` passes per ``start``.
    ``RD_MODE.SERVICE = 1`` (LUT service): the read side answers requests whenever they arrive,
    also while the unit is not busy; it ignores ``RD_PASSES``/``RD_REPEAT``, never releases a
    buffer and is excluded from ``done``. With ``SYNC = 1`` it waits until the write side has
    filled buffer 0 (the table) since the last ``start``, so indices may arrive before the table
    is loaded; with ``SYNC = 0`` reads are not ordered against writes at all.

Read latency and throughput (fixed)
    A request issued in cycle ``t`` (a chain step in ``VECTOR``/``SCALAR``, an ``sidx`` transfer
    in ``SGATHER``) reads the banks at the end of ``t``; the data enters an output FIFO in
    ``t + 1`` and is valid on ``rout``/``sout`` in ``t + 2`` (latency 2). A ``gidx`` beat
    accepted in ``t`` issues its reads in ``t + 1 .. t + k`` (``k`` conflict groups) and is
    valid on ``rout`` in ``t + k + 2``. The first vector/scalar read after ``start`` in cycle
    ``s`` is issued in ``s + 1`` (``rout`` valid in ``s + 3``) when its buffer is full.
    Sustained rate: 1 beat (or word) per cycle in every mode without conflicts, across chain
    wraps, repeats and buffer changes (the first read of a buffer can issue the cycle after its
    last write). Writes: 1 beat or word per cycle, a write accepted in ``t`` lands at the end of
    ``t``. Control: ``start`` in ``s`` -> ``busy`` from ``s + 1``; a program with nothing to
    do (or ``BAD_CONFIG``) pulses ``done`` in ``s + 2``; otherwise ``done`` pulses 2 cycles
    after the last event it waits for (last output transfer, last token taken, last write).

Back-pressure
    Each output has a ``FIFO_DEPTH``-entry FIFO (4); a request is issued only if the FIFO
    entries plus reads in flight are fewer than the depth (credit), so a stalled ``rout``/``sout``
    stops the read side without losing or duplicating data. Input streams are accepted only
    when the unit can act on them in the same cycle.

N-buffer protocol (``CTRL.SYNC = 1``)
    Buffers are used in ring order by both sides, write pointer and read pointer starting at
    buffer 0 at ``start``. A buffer goes FREE -> (written) -> FULL -> (read) -> FREE:

    - *Producer* (write side) writes into buffer ``w`` only while it is FREE; the buffer is FREE
      iff fewer than ``N_BUF`` buffers are occupied (written/full/being released/awaiting an
      external free). When the write chain of a pass finishes, the buffer is *written*; it is
      FULL at once (``CTRL.FULL_EXT = 0``) or when a token arrives on ``ctl_in[0]``
      (``FULL_EXT = 1``; tokens are accepted only while a written-not-full buffer exists, one
      per buffer, in order). The producer moves to ``w + 1`` immediately and writes there as
      soon as that buffer is FREE.
    - *Consumer* (read side) issues reads of buffer ``r`` only while it is FULL. When the last
      request of its last repeat has been issued (gather: its last bank reads), the buffer is
      *released*; it is FREE at once (``CTRL.FREE_EXT = 0``) or when a token arrives on
      ``ctl_in[1]`` (``FREE_EXT = 1``: a downstream unit says it is done with the data).
    - Tokens: with ``CTRL.FULL_TOKENS`` a token is emitted on ``ctl_out[0]`` each time a buffer
      becomes FULL; with ``CTRL.EMPTY_TOKENS`` on ``ctl_out[1]`` each time one becomes FREE
      (credits for an upstream producer). Tokens are counted (16 bit) and never dropped.
    - Reset/start state: all buffers FREE, both pointers at buffer 0, no tokens pending.
      ``start`` refuses (``BAD_CONFIG``) programs that would deadlock by construction:
      ``RD_PASSES > WR_PASSES`` without ``FULL_EXT``, or ``WR_PASSES > RD_PASSES + N_BUF``
      without ``FREE_EXT``.
    With ``SYNC = 0`` neither side waits, no tokens are emitted, both sides still advance their
    buffer pointer after each of their passes (ordering between them is the user's business).

Unit control (``ctrl``, see ``hdl/links.py``)
    ``start`` while not busy: status cleared, ``iteration`` sampled (``*_ITER_STRIDE``
    offsets), program state reset; ``busy`` rises in the next cycle. ``start`` while busy is
    ignored. ``done`` pulses (and ``busy`` falls) once all write passes and read passes are
    finished, every read has left the output FIFOs, every token has been delivered and (with
    ``SYNC``) no external full/free token is still owed. A config error ends the program at once.

Status (``ctrl.status``, :class:`PmuStatus`; the first error since ``start`` is kept)
    ``WR_OOB`` (1): write address outside its buffer or the scratchpad; the item is consumed and
    *not* written. ``RD_OOB`` (2): read address outside its buffer/scratchpad; the output word(s)
    are 0. ``IDX_OOB`` (3): gather index ``>= TBL_SIZE``; that lane/word reads 0. ``BAD_CONFIG``
    (4): ``N_BUF`` not in ``1..max_buffers``, ``BUF_SIZE = 0``, region past the end of the
    scratchpad, or a deadlocking SYNC program (above); nothing runs.

Register map (``cfg`` bus, 32-bit writes to ``unit == unit_id``; :class:`PmuReg`)

    =====  ================  ======  =============================================================
    addr   register          bits    meaning
    =====  ================  ======  =============================================================
    0x00   CTRL              [4:0]   b0 SYNC, b1 FULL_EXT, b2 FREE_EXT, b3 FULL_TOKENS,
                                     b4 EMPTY_TOKENS (see N-buffer protocol)
    0x01   BUF_BASE          [15:0]  first beat of the buffer region (reset 0)
    0x02   BUF_SIZE          [15:0]  beats per buffer (reset: depth)
    0x03   N_BUF             [7:0]   number of buffers, 1..max_buffers (reset 1)
    0x04   WR_MODE           [1:0]   b0 SCALAR (swin, word addresses), b1 ADDR_STREAM (+waddr)
    0x05   WR_PASSES         [15:0]  buffer fills per start (0: write side idle)
    0x06   WR_BASE           [15:0]  signed base offset (beats or words)
    0x07   WR_ITER_STRIDE    [15:0]  signed; ``* ctrl.iteration`` added to every address
    0x08+2k WR_COUNTk        [15:0]  iterations of write counter k (0 counts as 1), k < 4
    0x09+2k WR_STRIDEk       [15:0]  signed stride of write counter k
    0x10   RD_MODE           [2:0]   [1:0] VECTOR/GATHER/SCALAR/SGATHER, b2 SERVICE
    0x11   RD_PASSES         [15:0]  buffers consumed per start (0: read side idle)
    0x12   RD_REPEAT         [15:0]  chain runs per buffer (0 counts as 1; reset 1)
    0x13   RD_BASE           [15:0]  signed base offset (beats or words)
    0x14   RD_ITER_STRIDE    [15:0]  signed; ``* ctrl.iteration``
    0x15   TBL_SIZE          [15:0]  gather table size in words (indices must be below)
    0x18+2k RD_COUNTk        [15:0]  iterations of read counter k (0 counts as 1)
    0x19+2k RD_STRIDEk       [15:0]  signed stride of read counter k
    =====  ================  ======  =============================================================

    Counter registers beyond the unit's ``n_counters`` (``params.pmu_counters`` if present,
    else 3) are ignored. Registers are plain flops, writable at any time; change them only
    while the unit is idle (SERVICE mode reads them continuously).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .addrgen import AffineAddrGen
from . import shared
from .bus import config_bus_signature
from .links import control_link, scalar_link, unit_control_signature, vector_link
from .params import RduParams

__all__ = ["Pmu", "PmuReg", "PmuStatus", "RdMode", "PmuConfig", "PMU_N_REGS",
           "PMU_MAX_COUNTERS", "pmu_depth", "wr_count_reg", "wr_stride_reg", "rd_count_reg",
           "rd_stride_reg"]

PMU_MAX_COUNTERS = 4      # counter slots in the register map
FIFO_DEPTH = 4


class PmuReg(enum.IntEnum):
    CTRL = 0x00
    BUF_BASE = 0x01
    BUF_SIZE = 0x02
    N_BUF = 0x03
    WR_MODE = 0x04
    WR_PASSES = 0x05
    WR_BASE = 0x06
    WR_ITER_STRIDE = 0x07
    WR_COUNT0 = 0x08
    WR_STRIDE0 = 0x09
    WR_COUNT1 = 0x0A
    WR_STRIDE1 = 0x0B
    WR_COUNT2 = 0x0C
    WR_STRIDE2 = 0x0D
    WR_COUNT3 = 0x0E
    WR_STRIDE3 = 0x0F
    RD_MODE = 0x10
    RD_PASSES = 0x11
    RD_REPEAT = 0x12
    RD_BASE = 0x13
    RD_ITER_STRIDE = 0x14
    TBL_SIZE = 0x15
    RD_COUNT0 = 0x18
    RD_STRIDE0 = 0x19
    RD_COUNT1 = 0x1A
    RD_STRIDE1 = 0x1B
    RD_COUNT2 = 0x1C
    RD_STRIDE2 = 0x1D
    RD_COUNT3 = 0x1E
    RD_STRIDE3 = 0x1F


PMU_N_REGS = 0x20


def wr_count_reg(k): return PmuReg.WR_COUNT0 + 2 * k
def wr_stride_reg(k): return PmuReg.WR_STRIDE0 + 2 * k
def rd_count_reg(k): return PmuReg.RD_COUNT0 + 2 * k
def rd_stride_reg(k): return PmuReg.RD_STRIDE0 + 2 * k


class Ctrl(enum.IntFlag):
    SYNC = 1
    FULL_EXT = 2
    FREE_EXT = 4
    FULL_TOKENS = 8
    EMPTY_TOKENS = 16


class WrMode(enum.IntFlag):
    SCALAR = 1
    ADDR_STREAM = 2


class RdMode(enum.IntEnum):
    VECTOR = 0
    GATHER = 1
    SCALAR = 2
    SGATHER = 3


RD_SERVICE = 4


class PmuStatus(enum.IntEnum):
    OK = 0
    WR_OOB = 1
    RD_OOB = 2
    IDX_OOB = 3
    BAD_CONFIG = 4


def pmu_depth(p: RduParams) -> int:
    """Rows per bank = beats in the scratchpad."""
    return p.pmu_bytes // (p.pmu_banks * p.word_bits // 8)


def _log2(x):
    return (x - 1).bit_length()


class Pmu(wiring.Component):
    """See the module docstring for the cycle-level contract and the register map."""

    def __init__(self, params: RduParams, unit_id: int | None, *, n_counters: int | None = None,
                 max_buffers: int | None = None):
        """``unit_id=None``: the id is an input port ``unit_id`` (see :mod:`hdl.shared`)."""
        p = self.params = params
        if p.pmu_banks != p.lanes:
            raise ValueError("Pmu needs pmu_banks == lanes (lane i of a beat lives in bank i)")
        members = shared.unit_id_member(self, unit_id)
        self.n_counters = n_counters or getattr(p, "pmu_counters", 3)
        self.max_buffers = max_buffers or getattr(p, "pmu_max_buffers", 4)
        if not 1 <= self.n_counters <= PMU_MAX_COUNTERS:
            raise ValueError(f"Pmu supports 1..{PMU_MAX_COUNTERS} counters")
        self.depth = pmu_depth(p)
        super().__init__({
            **members,
            "cfg": In(config_bus_signature()),
            "ctrl": In(unit_control_signature()),
            "win": In(vector_link(p)),
            "swin": In(scalar_link(p)),
            "waddr": In(scalar_link(p)),
            "rout": Out(vector_link(p)),
            "gidx": In(vector_link(p)),
            "sidx": In(scalar_link(p)),
            "sout": Out(scalar_link(p)),
            "ctl_in": In(control_link()).array(2),
            "ctl_out": Out(control_link()).array(2),
        })

    def elaborate(self, platform):
        if shared.active() and isinstance(self.unit_id, int):
            return shared.instance(
                self, f"{self.n_counters},{self.max_buffers}",
                lambda: Pmu(self.params, None, n_counters=self.n_counters,
                            max_buffers=self.max_buffers))
        p = self.params
        m = Module()
        L, D, NC, NB = p.lanes, self.depth, self.n_counters, self.max_buffers
        LB = _log2(L)
        RB = max(1, _log2(D))             # row bits
        WA = LB + RB                      # word address bits
        NW = D * L                        # words in the scratchpad
        wb = p.word_bits

        # ---- configuration registers -----------------------------------------------------
        def reg(name, shape, init=0):
            return Signal(shape, name=name.lower(), init=init)
        R = {
            PmuReg.CTRL: reg("CTRL", 5),
            PmuReg.BUF_BASE: reg("BUF_BASE", 16),
            PmuReg.BUF_SIZE: reg("BUF_SIZE", 16, D),
            PmuReg.N_BUF: reg("N_BUF", 8, 1),
            PmuReg.WR_MODE: reg("WR_MODE", 2),
            PmuReg.WR_PASSES: reg("WR_PASSES", 16),
            PmuReg.WR_BASE: reg("WR_BASE", signed(16)),
            PmuReg.WR_ITER_STRIDE: reg("WR_ITER_STRIDE", signed(16)),
            PmuReg.RD_MODE: reg("RD_MODE", 3),
            PmuReg.RD_PASSES: reg("RD_PASSES", 16),
            PmuReg.RD_REPEAT: reg("RD_REPEAT", 16, 1),
            PmuReg.RD_BASE: reg("RD_BASE", signed(16)),
            PmuReg.RD_ITER_STRIDE: reg("RD_ITER_STRIDE", signed(16)),
            PmuReg.TBL_SIZE: reg("TBL_SIZE", 16),
        }
        for k in range(NC):
            R[wr_count_reg(k)] = reg(f"WR_COUNT{k}", 16, 1)
            R[wr_stride_reg(k)] = reg(f"WR_STRIDE{k}", signed(16))
            R[rd_count_reg(k)] = reg(f"RD_COUNT{k}", 16, 1)
            R[rd_stride_reg(k)] = reg(f"RD_STRIDE{k}", signed(16))
        cfg = self.cfg
        with m.If(cfg.we & (cfg.unit == self.unit_id)):
            with m.Switch(cfg.addr):
                for a, sig in R.items():
                    with m.Case(int(a)):
                        m.d.sync += sig.eq(cfg.data[:len(sig)])

        ctrl_r = R[PmuReg.CTRL]
        sync_on, full_ext, free_ext = ctrl_r[0], ctrl_r[1], ctrl_r[2]
        full_tok_en, empty_tok_en = ctrl_r[3], ctrl_r[4]
        buf_base, buf_size, n_buf = R[PmuReg.BUF_BASE], R[PmuReg.BUF_SIZE], R[PmuReg.N_BUF]
        w_scalar, w_astream = R[PmuReg.WR_MODE][0], R[PmuReg.WR_MODE][1]
        wr_passes, rd_passes = R[PmuReg.WR_PASSES], R[PmuReg.RD_PASSES]
        rd_mode, service = R[PmuReg.RD_MODE][:2], R[PmuReg.RD_MODE][2]
        rd_repeat, tbl_size = R[PmuReg.RD_REPEAT], R[PmuReg.TBL_SIZE]
        buf_words = buf_size << LB

        # ---- memories ----------------------------------------------------------------------
        wports, rports = [], []
        for b in range(L):
            mem = Memory(shape=unsigned(wb), depth=D, init=[])
            m.submodules[f"bank{b}"] = mem
            wports.append(mem.write_port())
            rports.append(mem.read_port())
        rdata = Array(rp.data for rp in rports)

        # ---- address generators -----------------------------------------------------------
        m.submodules.wgen = wgen = AffineAddrGen(NC)
        m.submodules.rgen = rgen = AffineAddrGen(NC)
        for k in range(NC):
            m.d.comb += [
                wgen.counts[k].eq(R[wr_count_reg(k)]), wgen.strides[k].eq(R[wr_stride_reg(k)]),
                rgen.counts[k].eq(R[rd_count_reg(k)]), rgen.strides[k].eq(R[rd_stride_reg(k)]),
            ]

        # ---- program state -------------------------------------------------------------------
        busy = self.ctrl.busy
        status = self.ctrl.status
        start = self.ctrl.start & ~busy
        cfg_bad = Signal()
        wr_iter_off = Signal(signed(33))
        rd_iter_off = Signal(signed(33))
        wr_pass = Signal(16)
        rd_pass = Signal(16)
        rd_rep = Signal(16)
        wptr = Signal(range(NB))
        rptr = Signal(range(NB))
        wbase = Signal(17)                 # first beat of the current write buffer
        rbase = Signal(17)
        cnt = lambda name: Signal(range(NB + 1), name=name)
        n_wp, n_full, n_rel, n_rp = cnt("n_wp"), cnt("n_full"), cnt("n_rel"), cnt("n_rp")
        tok = [Signal(16, name=f"tok{i}") for i in range(2)]
        v_out = Signal(range(FIFO_DEPTH + 1))   # rout FIFO entries + reads in flight
        s_out = Signal(range(FIFO_DEPTH + 1))
        occupied = Signal(range(4 * NB + 1))
        m.d.comb += occupied.eq(n_wp + n_full + n_rel + n_rp)

        err_wr = Signal()
        err_rd = Signal()
        err_idx = Signal()

        def advance(ptr, base):
            with m.If(ptr + 1 >= n_buf):
                m.d.sync += [ptr.eq(0), base.eq(buf_base)]
            with m.Else():
                m.d.sync += [ptr.eq(ptr + 1), base.eq(base + buf_size)]

        # ---- write side ------------------------------------------------------------------------
        wr_run = Signal()
        wr_can = Signal()
        w_fire = Signal()
        ev_wfin = Signal()
        m.d.comb += [
            wr_run.eq(busy & ~cfg_bad & (wr_pass != wr_passes)),
            wr_can.eq(wr_run & (~sync_on | (occupied < n_buf))),
        ]
        a_ok = ~w_astream | self.waddr.valid
        d_ok = Mux(w_scalar, self.swin.valid, self.win.valid)
        m.d.comb += [
            w_fire.eq(wr_can & a_ok & d_ok),
            self.win.ready.eq(wr_can & ~w_scalar & a_ok),
            self.swin.ready.eq(wr_can & w_scalar & a_ok),
            self.waddr.ready.eq(wr_can & w_astream & d_ok),
            wgen.next.eq(w_fire),
            ev_wfin.eq(w_fire & wgen.last),
        ]
        woff = Signal(signed(36))
        m.d.comb += woff.eq(R[PmuReg.WR_BASE] + wr_iter_off + wgen.offset
                            + Mux(w_astream, self.waddr.payload.as_signed(), 0))
        w_phys = Signal(signed(40))
        m.d.comb += w_phys.eq(Mux(w_scalar, (wbase << LB) + woff, (wbase + woff) << LB))
        w_ok = Signal()
        m.d.comb += w_ok.eq((woff >= 0) & (woff < Mux(w_scalar, buf_words, buf_size))
                            & (w_phys < NW))
        w_bank = w_phys[:LB]
        w_row = w_phys[LB:WA]
        for b, wp in enumerate(wports):
            m.d.comb += [
                wp.addr.eq(w_row),
                wp.data.eq(Mux(w_scalar, self.swin.payload, self.win.payload[b * wb:(b + 1) * wb])),
                wp.en.eq(w_fire & w_ok & (~w_scalar | (w_bank == b))),
            ]
        m.d.comb += err_wr.eq(w_fire & ~w_ok)
        with m.If(ev_wfin):
            m.d.sync += wr_pass.eq(wr_pass + 1)
            advance(wptr, wbase)

        # ---- read side: request generation ---------------------------------------------------
        rd_run = Signal()
        rd_go = Signal()
        m.d.comb += [
            rd_run.eq(service | (busy & ~cfg_bad & (rd_pass != rd_passes))),
            rd_go.eq(rd_run & (~sync_on | (n_full != 0))),
        ]
        vcredit = v_out < FIFO_DEPTH
        scredit = s_out < FIFO_DEPTH
        is_vec = rd_mode == RdMode.VECTOR
        is_gat = rd_mode == RdMode.GATHER
        is_sca = rd_mode == RdMode.SCALAR
        is_sg = rd_mode == RdMode.SGATHER
        roff = Signal(signed(36))
        m.d.comb += roff.eq(R[PmuReg.RD_BASE] + rd_iter_off + rgen.offset)
        rbase_w = rbase << LB

        # vector read
        v_issue = Signal()
        v_ok = Signal()
        v_phys = Signal(signed(40))
        m.d.comb += [
            v_issue.eq(rd_go & vcredit & is_vec),
            v_phys.eq((rbase + roff) << LB),
            v_ok.eq((roff >= 0) & (roff < buf_size) & (v_phys < NW)),
        ]
        # scalar read / scalar gather
        s_issue = Signal()
        s_ok = Signal()
        s_idx_ok = Signal()
        s_off = Signal(signed(40))
        s_phys = Signal(signed(41))
        sidx = self.sidx.payload
        m.d.comb += [
            s_issue.eq(rd_go & scredit & (is_sca | (is_sg & self.sidx.valid))),
            self.sidx.ready.eq(rd_go & scredit & is_sg),
            s_off.eq(roff + Mux(is_sg, sidx, 0)),
            s_phys.eq(rbase_w + s_off),
            s_idx_ok.eq(~is_sg | (sidx < tbl_size)),
            s_ok.eq(s_idx_ok & (s_off >= 0) & (s_off < buf_words) & (s_phys < NW)),
        ]
        s_bank = s_phys[:LB]
        s_row = s_phys[LB:WA]

        # vector gather: stage register holding one beat of lane word addresses
        g_valid = Signal()
        g_pend = Signal(L)
        g_last = Signal()
        g_addr = [Signal(WA, name=f"g_addr{i}") for i in range(L)]
        g_bank = [a[:LB] for a in g_addr]
        g_row = [a[LB:] for a in g_addr]
        sel_row = [Signal(RB, name=f"sel_row{b}") for b in range(L)]
        bank_en = Signal(L)
        for b in range(L):
            for i in reversed(range(L)):          # lowest pending lane wins
                with m.If(g_pend[i] & (g_bank[i] == b)):
                    m.d.comb += [sel_row[b].eq(g_row[i]), bank_en[b].eq(1)]
        sel_row_a = Array(sel_row)
        served = Signal(L)
        for i in range(L):
            m.d.comb += served[i].eq(g_pend[i] & (sel_row_a[g_bank[i]] == g_row[i]))
        g_issue = Signal()
        g_finish = Signal()
        g_accept = Signal()
        m.d.comb += [
            g_issue.eq(g_valid & vcredit),
            g_finish.eq(g_issue & ((g_pend & ~served) == 0)),
            self.gidx.ready.eq(rd_go & is_gat & (~g_valid | g_finish)),
            g_accept.eq(self.gidx.ready & self.gidx.valid),
        ]
        g_ok = Signal(L)
        g_iok = Signal(L)
        for i in range(L):
            idx = self.gidx.payload[i * wb:(i + 1) * wb]
            off = Signal(signed(40), name=f"g_off{i}")
            phys = Signal(signed(41), name=f"g_phys{i}")
            m.d.comb += [
                off.eq(roff + idx),
                phys.eq(rbase_w + off),
                g_iok[i].eq(idx < tbl_size),
                g_ok[i].eq(g_iok[i] & (off >= 0) & (off < buf_words) & (phys < NW)),
            ]
            with m.If(g_accept):
                m.d.sync += g_addr[i].eq(phys[:WA])

        # request accounting: one chain step per request; passes and repeats
        rstep = Signal()
        ev_claim = Signal()
        ev_release = Signal()
        m.d.comb += [
            rstep.eq(v_issue | s_issue | g_accept),
            rgen.next.eq(rstep),
        ]
        with m.If(rstep & rgen.last & ~service):
            with m.If(rd_rep + 1 >= rd_repeat):
                m.d.comb += ev_claim.eq(1)
                m.d.sync += [rd_rep.eq(0), rd_pass.eq(rd_pass + 1)]
                advance(rptr, rbase)
            with m.Else():
                m.d.sync += rd_rep.eq(rd_rep + 1)
        m.d.comb += ev_release.eq(Mux(is_gat, g_finish & g_last, ev_claim))

        with m.If(g_accept):
            m.d.sync += [g_valid.eq(1), g_pend.eq(g_ok), g_last.eq(ev_claim)]
        with m.Elif(g_finish):
            m.d.sync += g_valid.eq(0)
        with m.Elif(g_issue):
            m.d.sync += g_pend.eq(g_pend & ~served)

        # bank read ports
        for b, rp in enumerate(rports):
            with m.Switch(rd_mode):
                with m.Case(RdMode.VECTOR):
                    m.d.comb += [rp.en.eq(v_issue & v_ok), rp.addr.eq(v_phys[LB:WA])]
                with m.Case(RdMode.GATHER):
                    m.d.comb += [rp.en.eq(g_issue & bank_en[b]), rp.addr.eq(sel_row[b])]
                with m.Default():
                    m.d.comb += [rp.en.eq(s_issue & s_ok & (s_bank == b)), rp.addr.eq(s_row)]

        m.d.comb += [
            err_rd.eq((v_issue & ~v_ok) | (s_issue & s_idx_ok & ~s_ok)
                      | (g_accept & ((g_iok & ~g_ok) != 0))),
            err_idx.eq((s_issue & ~s_idx_ok) | (g_accept & (g_iok != (1 << L) - 1))),
        ]

        # ---- read side: data return -------------------------------------------------------------
        v_push_d1, v_zero_d1 = Signal(), Signal()
        s_push_d1, s_zero_d1, s_bank_d1 = Signal(), Signal(), Signal(LB)
        g_served_d1, g_fin_d1 = Signal(L), Signal()
        g_bank_d1 = [Signal(LB, name=f"g_bank_d1_{i}") for i in range(L)]
        m.d.sync += [
            v_push_d1.eq(v_issue), v_zero_d1.eq(~v_ok),
            s_push_d1.eq(s_issue), s_zero_d1.eq(~s_ok), s_bank_d1.eq(s_bank),
            g_served_d1.eq(Mux(g_issue, served, 0)), g_fin_d1.eq(g_finish),
        ]
        m.d.sync += [g_bank_d1[i].eq(g_bank[i]) for i in range(L)]
        acc = [Signal(wb, name=f"g_acc{i}") for i in range(L)]
        merged = [Signal(wb, name=f"g_merged{i}") for i in range(L)]
        for i in range(L):
            m.d.comb += merged[i].eq(Mux(g_served_d1[i], rdata[g_bank_d1[i]], acc[i]))
            m.d.sync += acc[i].eq(Mux(g_fin_d1, 0, merged[i]))

        m.submodules.vfifo = vf = SyncFIFO(width=p.beat_bits, depth=FIFO_DEPTH)
        m.submodules.sfifo = sf = SyncFIFO(width=wb, depth=FIFO_DEPTH)
        m.d.comb += [
            vf.w_en.eq(v_push_d1 | g_fin_d1),
            vf.w_data.eq(Mux(v_push_d1, Mux(v_zero_d1, 0, Cat(rp.data for rp in rports)),
                             Cat(merged))),
            self.rout.valid.eq(vf.r_rdy),
            self.rout.payload.eq(vf.r_data),
            vf.r_en.eq(self.rout.ready),
            sf.w_en.eq(s_push_d1),
            sf.w_data.eq(Mux(s_zero_d1, 0, rdata[s_bank_d1])),
            self.sout.valid.eq(sf.r_rdy),
            self.sout.payload.eq(sf.r_data),
            sf.r_en.eq(self.sout.ready),
        ]
        m.d.sync += [
            v_out.eq(v_out + (v_issue | g_finish) - (self.rout.valid & self.rout.ready)),
            s_out.eq(s_out + s_issue - (self.sout.valid & self.sout.ready)),
        ]

        # ---- N-buffer ring and tokens -------------------------------------------------------------
        ev_xfull, ev_xfree, ev_full, ev_free = Signal(), Signal(), Signal(), Signal()
        ci0, ci1 = self.ctl_in[0], self.ctl_in[1]
        m.d.comb += [
            ci0.ready.eq(busy & sync_on & full_ext & (n_wp != 0)),
            ci1.ready.eq(busy & sync_on & free_ext & (n_rp != 0)),
            ev_xfull.eq(ci0.valid & ci0.ready),
            ev_xfree.eq(ci1.valid & ci1.ready),
            ev_full.eq(sync_on & Mux(full_ext, ev_xfull, ev_wfin)),
            ev_free.eq(sync_on & Mux(free_ext, ev_xfree, ev_release)),
        ]
        with m.If(sync_on):
            m.d.sync += [
                n_wp.eq(n_wp + (full_ext & ev_wfin) - ev_xfull),
                n_full.eq(n_full + ev_full - ev_claim),
                n_rel.eq(n_rel + ev_claim - ev_release),
                n_rp.eq(n_rp + (free_ext & ev_release) - ev_xfree),
            ]
        for i, (ev, en) in enumerate(((ev_full, full_tok_en), (ev_free, empty_tok_en))):
            co = self.ctl_out[i]
            m.d.comb += co.valid.eq(tok[i] != 0)
            m.d.sync += tok[i].eq(tok[i] + (ev & en) - (co.valid & co.ready))

        # ---- status, done, start ------------------------------------------------------------------
        with m.If(status == 0):
            with m.If(err_wr):
                m.d.sync += status.eq(PmuStatus.WR_OOB)
            with m.Elif(err_idx):
                m.d.sync += status.eq(PmuStatus.IDX_OOB)
            with m.Elif(err_rd):
                m.d.sync += status.eq(PmuStatus.RD_OOB)

        rd_fin = service | ((rd_pass == rd_passes) & ~g_valid & (v_out == 0) & (s_out == 0))
        ring_fin = ~sync_on | ((n_wp == 0) & (n_rp == 0))
        finished = Signal()
        m.d.comb += finished.eq(cfg_bad | ((wr_pass == wr_passes) & rd_fin & ring_fin
                                           & (tok[0] == 0) & (tok[1] == 0)))
        m.d.sync += self.ctrl.done.eq(0)
        with m.If(busy & finished):
            m.d.sync += [busy.eq(0), self.ctrl.done.eq(1)]

        bad = Signal()
        m.d.comb += bad.eq((n_buf == 0) | (n_buf > NB) | (buf_size == 0)
                           | (buf_base + n_buf * buf_size > D)
                           | (sync_on & ~full_ext & (rd_passes > wr_passes))
                           | (sync_on & ~free_ext & (wr_passes > rd_passes + n_buf)))
        m.d.comb += [wgen.restart.eq(start), rgen.restart.eq(start)]
        with m.If(start):
            m.d.sync += [
                busy.eq(1), cfg_bad.eq(bad),
                status.eq(Mux(bad, PmuStatus.BAD_CONFIG, PmuStatus.OK)),
                wr_iter_off.eq(R[PmuReg.WR_ITER_STRIDE] * self.ctrl.iteration),
                rd_iter_off.eq(R[PmuReg.RD_ITER_STRIDE] * self.ctrl.iteration),
                wr_pass.eq(0), rd_pass.eq(0), rd_rep.eq(0),
                wptr.eq(0), rptr.eq(0), wbase.eq(buf_base), rbase.eq(buf_base),
                n_wp.eq(0), n_full.eq(0), n_rel.eq(0), n_rp.eq(0),
                tok[0].eq(0), tok[1].eq(0),
            ]
        return m


# ---- configuration helper ---------------------------------------------------------------------

def _u32(v: int) -> int:
    return v & 0xFFFFFFFF


@dataclass
class PmuConfig:
    """High-level PMU configuration -> register writes (:meth:`writes`).

    Counts/strides are listed innermost first; missing levels get count 1, stride 0.
    ``buf_size=None`` means the whole scratchpad (set by :meth:`writes` from ``params``).
    """
    sync: bool = False
    full_ext: bool = False
    free_ext: bool = False
    full_tokens: bool = False
    empty_tokens: bool = False
    buf_base: int = 0
    buf_size: int | None = None
    n_buf: int = 1
    wr_scalar: bool = False
    wr_addr_stream: bool = False
    wr_passes: int = 0
    wr_base: int = 0
    wr_iter_stride: int = 0
    wr_counts: tuple = (1,)
    wr_strides: tuple = (0,)
    rd_mode: RdMode = RdMode.VECTOR
    rd_service: bool = False
    rd_passes: int = 0
    rd_repeat: int = 1
    rd_base: int = 0
    rd_iter_stride: int = 0
    tbl_size: int = 0
    rd_counts: tuple = (1,)
    rd_strides: tuple = (0,)

    def writes(self, params: RduParams | None = None, n_counters: int | None = None):
        """List of ``(register address, 32-bit value)`` covering every register."""
        p = params or RduParams()
        nc = n_counters or getattr(p, "pmu_counters", 3)
        for name in ("wr", "rd"):
            counts, strides = getattr(self, f"{name}_counts"), getattr(self, f"{name}_strides")
            if len(counts) != len(strides):
                raise ValueError(f"{name}: counts and strides differ in length")
            if len(counts) > nc:
                raise ValueError(f"{name}: {len(counts)} counters, the PMU has {nc}")
            for c in counts:
                if not 0 <= c < 1 << 16:
                    raise ValueError(f"{name}: count {c} out of range")
            for s in strides:
                if not -(1 << 15) <= s < 1 << 15:
                    raise ValueError(f"{name}: stride {s} out of range")
        ctrl = (Ctrl.SYNC * self.sync | Ctrl.FULL_EXT * self.full_ext
                | Ctrl.FREE_EXT * self.free_ext | Ctrl.FULL_TOKENS * self.full_tokens
                | Ctrl.EMPTY_TOKENS * self.empty_tokens)
        buf_size = pmu_depth(p) if self.buf_size is None else self.buf_size
        w = [
            (PmuReg.CTRL, int(ctrl)),
            (PmuReg.BUF_BASE, self.buf_base),
            (PmuReg.BUF_SIZE, buf_size),
            (PmuReg.N_BUF, self.n_buf),
            (PmuReg.WR_MODE, WrMode.SCALAR * self.wr_scalar | WrMode.ADDR_STREAM * self.wr_addr_stream),
            (PmuReg.WR_PASSES, self.wr_passes),
            (PmuReg.WR_BASE, self.wr_base),
            (PmuReg.WR_ITER_STRIDE, self.wr_iter_stride),
            (PmuReg.RD_MODE, int(self.rd_mode) | RD_SERVICE * self.rd_service),
            (PmuReg.RD_PASSES, self.rd_passes),
            (PmuReg.RD_REPEAT, self.rd_repeat),
            (PmuReg.RD_BASE, self.rd_base),
            (PmuReg.RD_ITER_STRIDE, self.rd_iter_stride),
            (PmuReg.TBL_SIZE, self.tbl_size),
        ]
        for k in range(nc):
            wc = (list(self.wr_counts) + [1] * nc)[k]
            ws = (list(self.wr_strides) + [0] * nc)[k]
            rc = (list(self.rd_counts) + [1] * nc)[k]
            rs = (list(self.rd_strides) + [0] * nc)[k]
            w += [(wr_count_reg(k), wc), (wr_stride_reg(k), ws),
                  (rd_count_reg(k), rc), (rd_stride_reg(k), rs)]
        return [(int(a), _u32(int(v))) for a, v in w]

    # ---- common patterns ----
    @classmethod
    def resident_vector(cls, beats: int, repeat: int = 1, base: int = 0, **kw) -> "PmuConfig":
        """Write ``beats`` beats once (``win``), then read them ``repeat`` times (``rout``),
        e.g. the x vector of a GEMV re-read once per row block. One SYNC buffer at ``base``."""
        return cls(sync=True, buf_base=base, buf_size=beats, n_buf=1, wr_passes=1,
                   wr_counts=(beats,), wr_strides=(1,), rd_passes=1, rd_repeat=repeat,
                   rd_counts=(beats,), rd_strides=(1,), **kw)

    @classmethod
    def double_buffer(cls, beats_per_buffer: int, n_buffers: int = 2, passes: int = 1,
                      repeat: int = 1, base: int = 0, **kw) -> "PmuConfig":
        """Stream ``passes`` buffers of ``beats_per_buffer`` beats through ``n_buffers``
        ring buffers; each is read ``repeat`` times before it is freed."""
        return cls(sync=True, buf_base=base, buf_size=beats_per_buffer, n_buf=n_buffers,
                   wr_passes=passes, wr_counts=(beats_per_buffer,), wr_strides=(1,),
                   rd_passes=passes, rd_repeat=repeat, rd_counts=(beats_per_buffer,),
                   rd_strides=(1,), **kw)

    @classmethod
    def lut(cls, table_base: int, size: int, *, scalar: bool = False, load: str | None = "vector",
            **kw) -> "PmuConfig":
        """A lookup table of ``size`` words at word address ``table_base`` served in SERVICE
        mode (``gidx -> rout`` or, with ``scalar``, ``sidx -> sout``). ``load``: ``"vector"``
        writes the table as ``ceil(size/16)`` beats from ``win`` (``table_base`` beat-aligned),
        ``"scalar"`` as ``size`` words from ``swin``, ``None`` leaves memory alone. With a load
        the program is SYNC: lookups are held until the table is written; the program's
        ``done`` means "table loaded"."""
        kw.setdefault("rd_mode", RdMode.SGATHER if scalar else RdMode.GATHER)
        kw.setdefault("sync", load is not None)     # lookups wait for the table load
        c = cls(rd_service=True, rd_base=table_base, tbl_size=size, **kw)
        if load == "vector":
            if table_base % 16:
                raise ValueError("vector table load needs a beat-aligned table_base")
            c.wr_passes, c.wr_base = 1, table_base // 16
            c.wr_counts, c.wr_strides = ((size + 15) // 16,), (1,)
        elif load == "scalar":
            c.wr_passes, c.wr_scalar, c.wr_base = 1, True, table_base
            c.wr_counts, c.wr_strides = (size,), (1,)
        elif load is not None:
            raise ValueError(f"unknown load {load!r}")
        return c

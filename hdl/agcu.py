"""AGCU: address generator and coalescing unit between the fabric and one HBM port.

An AGCU runs an *address program* (a chain of ``agcu_counters`` nested counters with signed
strides, offset per outer-loop iteration), coalesces consecutive beat addresses into burst
requests on its HBM port, and moves the data between HBM and the fabric: in READ mode it delivers
the program's beats, in program order, on ``rd``; in WRITE mode it takes one beat from ``wr`` per
program address and writes it there.

Registers (config bus writes with ``cfg.unit == unit_id``; 32-bit, write-only, reset values given;
addresses in :class:`AgcuReg`, helpers :func:`agcu_count_reg` / :func:`agcu_stride_reg`):

=========  ==============  =====  ==========================================================
address    name            reset  meaning
=========  ==============  =====  ==========================================================
0x00       MODE            0      bit 0: 0 = READ (HBM -> ``rd``), 1 = WRITE (``wr`` -> HBM)
0x01       REGION_BASE     0      first beat address this unit may touch
0x02       REGION_BEATS    0      size of that region in beats (0: no address is allowed)
0x03       BASE            0      beat address of the program's first beat (unsigned)
0x04       ITER_STRIDE     0      signed beats added per outer iteration:
                                  effective base = BASE + iteration * ITER_STRIDE
0x10+2k    COUNT_k         1      iterations of counter k (k = 0 innermost); 0 = empty program
0x11+2k    STRIDE_k        0      signed beats added to the address per step of counter k
=========  ==============  =====  ==========================================================

The program yields, for ``i_{n-1}`` in ``range(COUNT_{n-1})``, ..., ``i_0`` in ``range(COUNT_0)``
(innermost fastest), the beat address ``base + sum_k i_k * STRIDE_k``: one address per cycle. Unused
outer counters keep COUNT = 1. Registers are read live: do not write them while ``busy``.

Status codes (:class:`AgcuStatus`, on ``status`` from ``done`` until the next ``start``):

* 0 ``OK``.
* 1 ``OUT_OF_REGION``: an address fell outside ``[REGION_BASE, REGION_BASE + REGION_BEATS)``
  (negative and huge addresses included; nothing wraps). No request for that address or any
  later one is issued; all earlier addresses are completed (read data delivered, write data
  accepted); in WRITE mode the beat meant for that address is *not* taken from ``wr``.
* 2 ``BAD_REGION``: ``REGION_BASE + REGION_BEATS`` exceeds the HBM size; nothing is issued.

Cycle-level contract
--------------------
* ``start`` (one-cycle pulse while not busy; ignored while busy) latches ``iteration``; ``busy``
  rises the next cycle. The first program address is generated 2 cycles after ``start``; a burst
  request is presented when the next address does not extend it (or the program ends), so a
  sequential program shows its first full-burst request on ``mem.req`` ``hbm_burst_beats + 3``
  cycles after ``start``, a program whose first burst has one beat after 4 cycles.
* Coalescing: consecutive addresses (``a+1`` after ``a``) inside one burst-aligned block of
  ``hbm_burst_beats`` beats merge into one request; a sequential program becomes full bursts,
  a strided one single-beat requests. Requests never cross a block.
* Throughput: one address per cycle, so up to one beat per cycle in either direction. READ mode
  keeps up to :func:`agcu_read_buffer_beats` beats outstanding (requested, not yet taken from
  ``rd``): credits against its own read buffer, sized to cover ``hbm_read_latency`` plus HBM
  queueing at full rate; it stops issuing when credits run out, so back-pressure on ``rd`` slows
  it down and never loses, duplicates or reorders data. WRITE mode takes a ``wr`` beat in the
  same cycle as its address and sends a write request only with its data already buffered.
* ``done`` is a one-cycle pulse, in the last cycle ``busy`` is high, when the program has
  finished: READ - every requested beat has been taken from ``rd``; WRITE - every beat has been
  accepted by the HBM port (it is then ordered before any later request to that address from any
  port). ``status`` is cleared by ``start``, may change while busy (an error is flagged when it is
  found) and is final from the ``done`` cycle until the next ``start``.
"""

import enum

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .bus import config_bus_signature, hbm_port_signature
from .links import ITERATION_BITS, STATUS_BITS
from .params import DEFAULT_PARAMS, RduParams

__all__ = ["Agcu", "AgcuReg", "AGCU_N_REGS", "AgcuMode", "AgcuStatus", "agcu_count_reg", "agcu_stride_reg",
           "agcu_read_buffer_beats", "agcu_port_signature", "ITERATION_BITS", "STATUS_BITS"]

_ADDR_BITS = 50   # signed internal address width: BASE + iteration*ITER_STRIDE + strides, no wrap


class AgcuReg(enum.IntEnum):
    MODE = 0x00
    REGION_BASE = 0x01
    REGION_BEATS = 0x02
    BASE = 0x03
    ITER_STRIDE = 0x04
    COUNT_0 = 0x10
    STRIDE_0 = 0x11
    COUNT_1 = 0x12
    STRIDE_1 = 0x13
    COUNT_2 = 0x14
    STRIDE_2 = 0x15
    COUNT_3 = 0x16
    STRIDE_3 = 0x17


# Register count the unit map (and so the config controller's REG_OUT_OF_RANGE check) uses: the
# counter pairs of the default geometry. The map is per kind, not per geometry, so a chip built
# with more counters refuses bitstreams that write them (a clear error, never a silent drop).
AGCU_N_REGS = 0x10 + 2 * DEFAULT_PARAMS.agcu_counters
assert AGCU_N_REGS == max(AgcuReg) + 1, "AgcuReg must name every counter register"


def agcu_count_reg(k: int) -> int:
    return AgcuReg.COUNT_0 + 2 * k


def agcu_stride_reg(k: int) -> int:
    return AgcuReg.STRIDE_0 + 2 * k


class AgcuMode(enum.IntEnum):
    READ = 0
    WRITE = 1


class AgcuStatus(enum.IntEnum):
    OK = 0
    OUT_OF_REGION = 1
    BAD_REGION = 2


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def agcu_read_buffer_beats(p: RduParams) -> int:
    """Read buffer (and credit) depth: covers a request's round trip at one beat per cycle -
    HBM read latency, a full queue in each channel ahead of it, and some bursts of slack."""
    return _next_pow2(p.hbm_read_latency + 2 * p.hbm_queue_depth * p.hbm_burst_beats
                      + 4 * p.hbm_burst_beats)


def agcu_port_signature(p: RduParams) -> wiring.Signature:
    """Fabric/sequencer side of one AGCU, seen from the AGCU (it drives the ``Out`` members)."""
    return wiring.Signature({
        "rd": Out(stream.Signature(p.beat_bits)),
        "wr": In(stream.Signature(p.beat_bits)),
        "start": In(1),
        "iteration": In(ITERATION_BITS),
        "busy": Out(1),
        "done": Out(1),
        "status": Out(STATUS_BITS),
    })


class Agcu(wiring.Component):
    """One AGCU; see the module docstring for registers and the cycle-level contract."""

    def __init__(self, params: RduParams, unit_id: int):
        self.p = params
        self.unit_id = unit_id
        self.read_buffer_beats = agcu_read_buffer_beats(params)
        super().__init__({
            "cfg": In(config_bus_signature()),
            "mem": Out(hbm_port_signature(params)),
            "rd": Out(stream.Signature(params.beat_bits)),
            "wr": In(stream.Signature(params.beat_bits)),
            "start": In(1),
            "iteration": In(ITERATION_BITS),
            "busy": Out(1),
            "done": Out(1),
            "status": Out(STATUS_BITS),
        })

    def elaborate(self, platform):
        p = self.p
        m = Module()
        n_cnt = p.agcu_counters
        burst = p.hbm_burst_beats
        burst_bits = (burst - 1).bit_length()
        W = _ADDR_BITS

        # ---- registers -----------------------------------------------------------------------
        mode = Signal()
        region_base = Signal(32)
        region_beats = Signal(32)
        base = Signal(32)
        iter_stride = Signal(signed(32))
        count = [Signal(32, init=1, name=f"count{k}") for k in range(n_cnt)]
        stride = [Signal(signed(32), name=f"stride{k}") for k in range(n_cnt)]
        regs = {AgcuReg.MODE: mode, AgcuReg.REGION_BASE: region_base,
                AgcuReg.REGION_BEATS: region_beats, AgcuReg.BASE: base,
                AgcuReg.ITER_STRIDE: iter_stride}
        for k in range(n_cnt):
            regs[agcu_count_reg(k)] = count[k]
            regs[agcu_stride_reg(k)] = stride[k]
        with m.If(self.cfg.we & (self.cfg.unit == self.unit_id)):
            with m.Switch(self.cfg.addr):
                for addr, reg in regs.items():
                    with m.Case(int(addr)):
                        m.d.sync += reg.eq(self.cfg.data)

        # ---- address generator state -----------------------------------------------------------
        iteration = Signal(ITERATION_BITS)
        idx = [Signal(32, name=f"idx{k}") for k in range(n_cnt)]
        lvl = [Signal(signed(W), name=f"lvl_addr{k}") for k in range(n_cnt)]   # level base addrs
        status = Signal(STATUS_BITS)
        m.d.comb += self.status.eq(status)

        region_lo = Signal(signed(W))
        region_hi = Signal(signed(W))
        m.d.comb += [region_lo.eq(region_base), region_hi.eq(region_base + region_beats)]
        addr = lvl[0]
        in_region = Signal()
        m.d.comb += in_region.eq((addr >= region_lo) & (addr < region_hi))

        # ---- coalescer: pending burst + output request register --------------------------------
        pend_valid = Signal()
        pend_addr = Signal(p.hbm_addr_bits)
        pend_n = Signal(range(burst + 1))
        req_valid = Signal()
        req_addr = Signal(p.hbm_addr_bits)
        req_n = Signal(range(burst + 1))
        m.d.comb += [
            self.mem.req.valid.eq(req_valid),
            self.mem.req.payload.addr.eq(req_addr),
            self.mem.req.payload.beats_m1.eq(req_n - 1),
            self.mem.req.payload.write.eq(mode),
        ]
        out_free = Signal()
        m.d.comb += out_free.eq(~req_valid | self.mem.req.ready)
        with m.If(self.mem.req.valid & self.mem.req.ready):
            m.d.sync += req_valid.eq(0)

        # read buffer + credits (READ mode)
        RB = self.read_buffer_beats
        m.submodules.rbuf = rbuf = SyncFIFO(width=p.beat_bits, depth=RB)
        credits = Signal(range(RB + 1), init=RB)
        m.d.comb += [
            rbuf.w_data.eq(self.mem.rdata.payload),
            rbuf.w_en.eq(self.mem.rdata.valid),
            self.mem.rdata.ready.eq(rbuf.w_rdy),
            self.rd.valid.eq(rbuf.r_rdy),
            self.rd.payload.eq(rbuf.r_data),
            rbuf.r_en.eq(self.rd.ready),
        ]
        # write buffer (WRITE mode): one beat per generated address, drained by the HBM port
        m.submodules.wbuf = wbuf = SyncFIFO(width=p.beat_bits, depth=4 * burst)
        m.d.comb += [
            self.mem.wdata.valid.eq(wbuf.r_rdy),
            self.mem.wdata.payload.eq(wbuf.r_data),
            wbuf.r_en.eq(self.mem.wdata.ready),
            wbuf.w_data.eq(self.wr.payload),
        ]

        emit = Signal()          # pending burst -> request register this cycle
        reserve = Signal(range(burst + 1))
        m.d.comb += reserve.eq(Mux(emit & ~mode, pend_n, 0))
        m.d.sync += credits.eq(credits - reserve + (self.rd.valid & self.rd.ready))
        can_emit = Signal()
        m.d.comb += can_emit.eq(out_free & (mode | (credits >= pend_n)))
        with m.If(emit):
            m.d.sync += [req_valid.eq(1), req_addr.eq(pend_addr), req_n.eq(pend_n)]

        merge = Signal()
        m.d.comb += merge.eq(pend_valid & (addr == pend_addr + pend_n)
                             & (addr[burst_bits:] == pend_addr[burst_bits:]))

        # ---- sequencing -------------------------------------------------------------------------
        eff_base = Signal(signed(W))
        m.d.comb += eff_base.eq(base + iteration * iter_stride)
        last = Signal()
        m.d.comb += last.eq(Cat(idx[k] == count[k] - 1 for k in range(n_cnt)).all())
        empty = Signal()
        m.d.comb += empty.eq(Cat(c == 0 for c in count).any())

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [iteration.eq(self.iteration), status.eq(AgcuStatus.OK)]
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.sync += [l.eq(eff_base) for l in lvl]
                m.d.sync += [i.eq(0) for i in idx]
                with m.If(region_hi > p.hbm_beats):
                    m.d.sync += status.eq(AgcuStatus.BAD_REGION)
                    m.next = "DRAIN"
                with m.Elif(empty):
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "RUN"
            with m.State("RUN"):
                advance = Signal()
                need_emit = pend_valid & ~merge
                wr_ok = ~mode | (self.wr.valid & wbuf.w_rdy)
                with m.If(~in_region):
                    # stop before this address; the pending burst is flushed in DRAIN
                    m.d.sync += status.eq(AgcuStatus.OUT_OF_REGION)
                    m.next = "DRAIN"
                with m.Elif(wr_ok & (~need_emit | can_emit)):
                    m.d.comb += [advance.eq(1), emit.eq(need_emit)]
                m.d.comb += [self.wr.ready.eq(advance & mode), wbuf.w_en.eq(advance & mode)]
                with m.If(advance):
                    with m.If(merge):
                        m.d.sync += pend_n.eq(pend_n + 1)
                    with m.Else():
                        m.d.sync += [pend_valid.eq(1), pend_addr.eq(addr), pend_n.eq(1)]
                    # step the counter chain: lowest level not at its end increments, the levels
                    # below it restart from its new address
                    for j in range(n_cnt):
                        lower_done = Cat(idx[k] == count[k] - 1 for k in range(j)).all() if j else C(1)
                        with m.If(lower_done & (idx[j] != count[j] - 1)):
                            new = lvl[j] + stride[j]
                            m.d.sync += [idx[j].eq(idx[j] + 1), lvl[j].eq(new)]
                            for k in range(j):
                                m.d.sync += [idx[k].eq(0), lvl[k].eq(new)]
                    with m.If(last):
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(pend_valid):
                    with m.If(can_emit):
                        m.d.comb += emit.eq(1)
                        m.d.sync += pend_valid.eq(0)
                with m.Elif(~req_valid & Mux(mode, ~wbuf.r_rdy, credits == RB)):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m

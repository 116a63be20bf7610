"""cocotb testbench of hdl.memsys.MemorySystem (Verilator), scored against a numpy memory model.

Environment: ``MEMSYS_PARAMS`` (JSON of the RduParams the model was built with), ``SEED``.

One central per-cycle loop drives every agent (DMA port, config bus, one agent per AGCU): at each
rising edge the agents drive their inputs, then in the ReadOnly phase they sample the outputs
and record the handshakes that the next edge completes. When nothing needs per-cycle driving
(the utilisation test) the loop is idle and the test waits on ``RisingEdge(done)`` with a timeout.
"""

import json
import os
import random
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, First, ReadOnly, RisingEdge, Timer

from hdl.agcu import (AgcuMode, AgcuReg, AgcuStatus, agcu_count_reg, agcu_stride_reg)
from hdl.params import RduParams

PARAMS = RduParams.from_dict(json.loads(os.environ["MEMSYS_PARAMS"]))
SEED = int(os.environ.get("SEED", "1"))
BURST = PARAMS.hbm_burst_beats
BEAT_BYTES = PARAMS.beat_bytes


def beat_to_int(row: np.ndarray) -> int:
    return int.from_bytes(row.tobytes(), "little")


def int_to_beat(v: int) -> np.ndarray:
    return np.frombuffer(v.to_bytes(BEAT_BYTES, "little"), dtype=np.uint8)


class MemModel:
    """numpy image of HBM: one row of ``beat_bytes`` uint8 per beat address."""

    def __init__(self, beats):
        self.mem = np.zeros((beats, BEAT_BYTES), dtype=np.uint8)

    def write(self, addr, values):
        for i, v in enumerate(values):
            self.mem[addr + i] = int_to_beat(v)

    def read(self, addr):
        return beat_to_int(self.mem[addr])


def program_addresses(base, counts, strides, region):
    """Reference address program (see hdl/agcu.py); stops at the first out-of-region address."""
    if any(c == 0 for c in counts):
        return [], False
    idx = [0] * len(counts)
    out = []
    while True:
        a = base + sum(i * s for i, s in zip(idx, strides))
        if not (region[0] <= a < region[0] + region[1]):
            return out, True
        out.append(a)
        k = 0
        while k < len(counts) and idx[k] == counts[k] - 1:
            idx[k] = 0
            k += 1
        if k == len(counts):
            return out, False
        idx[k] += 1


class Sig:
    """Flat access to the Verilog ports that Amaranth named ``a__b__c``."""

    def __init__(self, dut, prefix):
        self.dut, self.prefix = dut, prefix

    def __getattr__(self, name):
        return getattr(self.dut, f"{self.prefix}__{name}")


class DmaAgent:
    """Host-side driver of the ``dma`` HBM port: queued burst writes and reads."""

    def __init__(self, dut):
        self.s = Sig(dut, "dma")
        self.ops = []            # ("w", addr, [beats]) | ("r", addr, n) | ("mark", event)
        self.req_pending = None  # (addr, n, write)
        self.wbeats = []         # write beats owed to the port, in order
        self.reads = []          # [event, result list, expected beats] per read(), in order
        self.addr_bits = PARAMS.hbm_addr_bits
        self.bm1_bits = max(1, (BURST - 1).bit_length())
        self.s.req__valid.value = 0
        self.s.wdata__valid.value = 0
        self.s.rdata__ready.value = 1

    def write(self, addr, beats):
        ev = Event()
        i = 0
        while i < len(beats):
            k = min(len(beats) - i, BURST - (addr + i) % BURST)
            self.ops.append(("w", addr + i, beats[i:i + k]))
            i += k
        self.ops.append(("mark", ev))
        return ev

    def read(self, addr, n):
        ev = Event()
        out = []
        self.reads.append([ev, out, n])
        i = 0
        while i < n:
            k = min(n - i, BURST - (addr + i) % BURST)
            self.ops.append(("r", addr + i, k))
            i += k
        return ev, out

    def busy(self):
        return bool(self.ops or self.req_pending or self.wbeats or self.reads)

    def drive(self):
        if self.req_pending is None:
            # a write group is complete once all its beats were handed to the port
            while self.ops and self.ops[0][0] == "mark" and not self.wbeats:
                self.ops.pop(0)[1].set()
            if self.ops and self.ops[0][0] in ("w", "r"):
                kind, addr, x = self.ops.pop(0)
                if kind == "w":
                    self.req_pending = (addr, len(x), 1)
                    self.wbeats.extend(x)
                else:
                    self.req_pending = (addr, x, 0)
        if self.req_pending:
            addr, n, w = self.req_pending
            self.s.req__payload.value = (addr | ((n - 1) << self.addr_bits)
                                         | (w << (self.addr_bits + self.bm1_bits)))
            self.s.req__valid.value = 1
        else:
            self.s.req__valid.value = 0
        if self.wbeats:
            self.s.wdata__payload.value = self.wbeats[0]
            self.s.wdata__valid.value = 1
        else:
            self.s.wdata__valid.value = 0

    def sample(self):
        if self.req_pending and self.s.req__ready.value:
            self.req_pending = None
        if self.wbeats and self.s.wdata__ready.value:
            self.wbeats.pop(0)
        if self.s.rdata__valid.value:
            if not self.reads:
                raise AssertionError(f"[seed {SEED}] DMA port got read data it never asked for")
            ev, out, n = self.reads[0]
            out.append(int(self.s.rdata__payload.value))
            if len(out) == n:
                self.reads.pop(0)
                ev.set()


class CfgAgent:
    def __init__(self, dut):
        self.s = Sig(dut, "cfg")
        self.q = []
        self.s.we.value = 0

    def write(self, unit, addr, value):
        self.q.append((unit, int(addr), value & 0xFFFF_FFFF))

    def busy(self):
        return bool(self.q)

    def drive(self):
        if self.q:
            unit, addr, value = self.q.pop(0)
            self.s.unit.value = unit
            self.s.addr.value = addr
            self.s.data.value = value
            self.s.we.value = 1
        else:
            self.s.we.value = 0

    def sample(self):
        pass


class AgcuAgent:
    """Starts one AGCU program, consumes ``rd`` with random ready, feeds ``wr`` with random
    valid, and records delivered beats, consumed write beats, done and status."""

    def __init__(self, dut, index, rng):
        self.i = index
        self.s = Sig(dut, f"agcu__{index}")
        self.rng = rng
        self.s.start.value = 0
        self.s.rd__ready.value = 0
        self.s.wr__valid.value = 0
        self.reset_run()

    def reset_run(self):
        self.start_req = None
        self.rd_prob = 1.0
        self.wr_prob = 1.0
        self.got = []
        self.wr_beats = []
        self.wr_taken = 0
        self.done = Event()
        self.status = None
        self.start_cycle = None
        self.done_cycle = None
        self.rd_ready = 0
        self.wr_valid = 0

    def start(self, iteration=0, rd_prob=1.0, wr_beats=(), wr_prob=1.0):
        self.reset_run()
        self.start_req = iteration
        self.rd_prob, self.wr_beats, self.wr_prob = rd_prob, list(wr_beats), wr_prob
        return self.done

    def drive(self, cycle):
        if self.start_req is not None:
            self.s.iteration.value = self.start_req
            self.s.start.value = 1
            self.start_req = None
            self.start_cycle = cycle
        else:
            self.s.start.value = 0
        self.rd_ready = int(self.rng.random() < self.rd_prob)
        self.s.rd__ready.value = self.rd_ready
        if self.wr_taken < len(self.wr_beats) and self.rng.random() < self.wr_prob:
            self.s.wr__payload.value = self.wr_beats[self.wr_taken]
            self.wr_valid = 1
        else:
            self.wr_valid = 0
        self.s.wr__valid.value = self.wr_valid

    def sample(self, cycle):
        if self.rd_ready and self.s.rd__valid.value:
            self.got.append(int(self.s.rd__payload.value))
        if self.wr_valid and self.s.wr__ready.value:
            self.wr_taken += 1
        if self.s.done.value and self.start_cycle is not None and self.done_cycle is None:
            self.status = int(self.s.status.value)
            self.done_cycle = cycle
            self.done.set()

    def describe(self):
        return (f"AGCU {self.i}: busy={int(self.s.busy.value)} status={int(self.s.status.value)} "
                f"rd beats delivered={len(self.got)} wr beats taken={self.wr_taken}/"
                f"{len(self.wr_beats)} rd.valid={int(self.s.rd__valid.value)} "
                f"started at cycle {self.start_cycle}")


class Env:
    def __init__(self, dut):
        self.dut = dut
        self.rng = random.Random(SEED)
        self.np_rng = np.random.default_rng(SEED)
        self.dma = DmaAgent(dut)
        self.cfg = CfgAgent(dut)
        self.agcus = [AgcuAgent(dut, i, random.Random(SEED * 100 + i)) for i in range(PARAMS.n_agcus)]
        self.model = MemModel(PARAMS.hbm_beats)
        self.cycle = 0
        self.loop_task = None

    async def reset(self):
        Clock(self.dut.clk, 10, unit="ns", impl="gpi").start()
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)
        self.loop_task = cocotb.start_soon(self._loop())

    async def _loop(self):
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1
            self.dma.drive()
            self.cfg.drive()
            for a in self.agcus:
                a.drive(self.cycle)
            await ReadOnly()
            self.dma.sample()
            for a in self.agcus:
                a.sample(self.cycle)

    async def wait(self, event, limit_cycles, what, culprit=None):
        """Wait for ``event``; on timeout fail naming the stuck unit and its state."""
        timeout = Timer(limit_cycles * 10, unit="ns")
        res = await First(event.wait(), timeout)
        if res is timeout:
            state = culprit.describe() if culprit else ""
            raise AssertionError(f"[seed {SEED}] watchdog: {what} not done after {limit_cycles} "
                                 f"cycles. {state} dma busy={self.dma.busy()}")

    def random_beats(self, n):
        return [beat_to_int(r) for r in self.np_rng.integers(0, 256, (n, BEAT_BYTES), dtype=np.uint8)]

    async def dma_write(self, addr, beats):
        self.model.write(addr, beats)
        await self.wait(self.dma.write(addr, beats), 20 * len(beats) + 2000, f"DMA write @{addr}")

    async def dma_read(self, addr, n):
        ev, out = self.dma.read(addr, n)
        await self.wait(ev, 20 * n + 2000, f"DMA read @{addr}")
        return out

    def program(self, i, *, mode, region, base, counts, strides, iter_stride=0):
        unit = i   # MemorySystem default: AGCU i is config unit i
        self.cfg.write(unit, AgcuReg.MODE, mode)
        self.cfg.write(unit, AgcuReg.REGION_BASE, region[0])
        self.cfg.write(unit, AgcuReg.REGION_BEATS, region[1])
        self.cfg.write(unit, AgcuReg.BASE, base)
        self.cfg.write(unit, AgcuReg.ITER_STRIDE, iter_stride)
        for k in range(PARAMS.agcu_counters):
            self.cfg.write(unit, agcu_count_reg(k), counts[k] if k < len(counts) else 1)
            self.cfg.write(unit, agcu_stride_reg(k), strides[k] if k < len(strides) else 0)

    async def cfg_drain(self):
        while self.cfg.busy():
            await RisingEdge(self.dut.clk)


def random_program(rng, region):
    """Random 3-level program whose first address lies in the region; it may leave it."""
    counts = [rng.randint(1, 12), rng.randint(1, 5), rng.randint(1, 3)]
    strides = [rng.choice([1, 1, 1, 2, -1, 3]), rng.randint(-30, 30), rng.randint(-150, 150)]
    base = rng.randint(region[0], region[0] + region[1] - 1)
    return base, counts, strides


@cocotb.test()
async def random_programs_scoreboard(dut):
    """Several AGCUs at once: random read programs with random rd back-pressure, random write
    streams, an out-of-region writer; every byte scored against the numpy model."""
    env = Env(dut)
    await env.reset()
    n = PARAMS.n_agcus
    span = min(512, PARAMS.hbm_beats // (n + 1))
    regions = [(i * span, span) for i in range(n)]
    for r in regions:
        await env.dma_write(r[0], env.random_beats(r[1]))
    # guard band after the last region, to prove out-of-region writes never land there
    guard = (n * span, span)
    await env.dma_write(guard[0], env.random_beats(guard[1]))

    for rnd in range(3):
        plans = {}
        for i in range(n):
            # the last AGCU writes; every third round it runs a program that leaves its region
            write = (i == n - 1)
            region = regions[i]
            if write and rnd == 2:
                base, counts, strides = region[0] + region[1] - 20, [8, 6], [1, 8]
            else:
                base, counts, strides = random_program(env.rng, region)
            it, it_stride = env.rng.randint(0, 3), env.rng.randint(-4, 4)
            addrs, stopped = program_addresses(base + it * it_stride, counts, strides, region)
            mode = AgcuMode.WRITE if write else AgcuMode.READ
            env.program(i, mode=mode, region=region, base=base, counts=counts, strides=strides,
                        iter_stride=it_stride)
            data = env.random_beats(len(addrs) + 8) if write else []
            plans[i] = (mode, addrs, stopped, data, it)
        await env.cfg_drain()
        events = {}
        for i, (mode, addrs, stopped, data, it) in plans.items():
            events[i] = env.agcus[i].start(iteration=it, rd_prob=env.rng.choice([1.0, 0.7, 0.3]),
                                           wr_beats=data, wr_prob=env.rng.choice([1.0, 0.5]))
        for i, ev in events.items():
            await env.wait(ev, 40000, f"AGCU {i} program (round {rnd})", env.agcus[i])
        for i, (mode, addrs, stopped, data, it) in plans.items():
            a = env.agcus[i]
            want_status = AgcuStatus.OUT_OF_REGION if stopped else AgcuStatus.OK
            assert a.status == want_status, \
                f"[seed {SEED}] AGCU {i} round {rnd}: status {a.status}, expected {want_status}"
            if mode == AgcuMode.READ:
                expect = [env.model.read(x) for x in addrs]
                assert len(a.got) == len(expect), \
                    f"[seed {SEED}] AGCU {i} round {rnd}: {len(a.got)} beats, expected {len(expect)}"
                bad = [k for k, (g, e) in enumerate(zip(a.got, expect)) if g != e]
                assert not bad, f"[seed {SEED}] AGCU {i} round {rnd}: beat {bad[0]} (addr {addrs[bad[0]]}) wrong"
            else:
                assert a.wr_taken == len(addrs), \
                    f"[seed {SEED}] AGCU {i}: took {a.wr_taken} write beats for {len(addrs)} addresses"
                for x, v in zip(addrs, data):
                    env.model.mem[x] = int_to_beat(v)
        if rnd == 2:
            assert plans[n - 1][2], "the out-of-region program must actually leave its region"
    # whole touched memory (all regions + guard) read back through the DMA port
    total = guard[0] + guard[1]
    got = await env.dma_read(0, total)
    bad = [x for x in range(total) if got[x] != env.model.read(x)]
    assert not bad, f"[seed {SEED}] memory differs from the model at {len(bad)} beats, first {bad[0]}"


@cocotb.test()
async def sequential_read_utilisation(dut):
    """Two AGCUs stream long sequential reads; report sustained HBM utilisation and sim speed."""
    env = Env(dut)
    await env.reset()
    # each AGCU streams its half of HBM `passes` times (outer counter with stride 0): every row
    # is opened again on each pass, so row misses and refreshes are paid throughout
    span = PARAMS.hbm_beats // 2
    passes = int(os.environ.get("UTIL_PASSES", str(max(1, 8192 // span))))
    nbeats = span * passes
    for i in range(2):
        env.program(i, mode=AgcuMode.READ, region=(i * span, span), base=i * span,
                    counts=[span, passes], strides=[1, 0])
    await env.cfg_drain()
    await RisingEdge(dut.clk)
    # no per-cycle work during the stream: rd always ready, loop stopped, config bus idle
    env.loop_task.cancel()
    dut.cfg__we.value = 0
    count = {0: 0, 1: 0}
    for i in range(2):
        getattr(dut, f"agcu__{i}__rd__ready").value = 1
        getattr(dut, f"agcu__{i}__start").value = 1
    await RisingEdge(dut.clk)
    for i in range(2):
        getattr(dut, f"agcu__{i}__start").value = 0
    c_start = cocotb.utils.get_sim_time(unit="ns") / 10
    await ClockCycles(dut.clk, 2)     # busy rises the cycle after start
    assert all(int(getattr(dut, f"agcu__{i}__busy").value) for i in range(2)), "AGCUs did not start"
    t0 = time.perf_counter()
    # poll busy every POLL cycles (no per-edge Python); the end time is overestimated by less
    # than POLL cycles, so the utilisation below errs low
    limit, POLL = 3 * nbeats + 2000, 32
    waited = 0
    while any(int(getattr(dut, f"agcu__{i}__busy").value) for i in range(2)):
        if waited > limit:
            stuck = [i for i in range(2) if int(getattr(dut, f"agcu__{i}__busy").value)]
            raise AssertionError(f"[seed {SEED}] watchdog: AGCU(s) {stuck} still busy after "
                                 f"{limit} cycles of a {nbeats}-beat streaming read")
        await ClockCycles(dut.clk, POLL)
        waited += POLL
    c1 = cocotb.utils.get_sim_time(unit="ns") / 10
    wall = time.perf_counter() - t0
    cycles = c1 - c_start
    util = 2 * nbeats / (cycles * PARAMS.hbm_channels)
    steady = 2 * nbeats / ((cycles - PARAMS.hbm_read_latency) * PARAMS.hbm_channels)
    msg = (f"UTILISATION beats={2 * nbeats} cycles={cycles:.0f} util={util:.4f} "
           f"util_excl_first_latency={steady:.4f} sim_cycles_per_s={(c1 - c_start - 2) / wall:.0f}")
    dut._log.warning(msg)
    with open(os.environ.get("UTIL_REPORT", "util_report.txt"), "w") as f:
        f.write(msg + "\n")
    assert util >= 0.90, msg

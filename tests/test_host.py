"""Unit tests of the host interface (CSR decode, DMA engine, counters) in Amaranth's simulator.

The HBM side is played by a small Python target that obeys the HBM port contract of
``hdl/bus.py`` (in-order, burst-block-bounded requests) and checks it.
"""

import random

import pytest
from amaranth.sim import Simulator

from hdl.dma import DmaError
from hdl.host import CHIP_ID, Csr, HostInterface, counter_names
from hdl.params import RduParams

P = RduParams(hbm_bytes=64 * 1024, hbm_read_latency=8)


class PortTarget:
    """A behavioural HBM port target: memory dict, random readiness, contract checks."""

    def __init__(self, port, seed=0, latency=3):
        self.port, self.mem, self.rng = port, {}, random.Random(seed)
        self.reqs, self.latency = [], latency
        self.errors = []

    async def run(self, ctx):
        port, burst = self.port, P.hbm_burst_beats
        pending_w = []     # write requests waiting for data: [addr, beats_left]
        read_q = []        # (ready_cycle, addr)
        cycle = 0
        while True:
            req_ready = self.rng.random() < 0.7
            w_ready = self.rng.random() < 0.7
            ctx.set(port.req.ready, req_ready)
            ctx.set(port.wdata.ready, w_ready and bool(pending_w))
            r_valid = bool(read_q) and read_q[0][0] <= cycle
            ctx.set(port.rdata.valid, r_valid)
            if r_valid:
                ctx.set(port.rdata.payload, self.mem.get(read_q[0][1], 0))
            _, _, rv, rp, wv, wr, wp, dv, dr = await ctx.tick().sample(
                port.req.valid, port.req.payload, port.wdata.valid, port.wdata.ready,
                port.wdata.payload, port.rdata.valid, port.rdata.ready)
            cycle += 1
            # Write data accepted this cycle belongs to a request accepted in an earlier cycle.
            if wv and wr:
                a = pending_w[0]
                self.mem[a[0]] = wp
                a[0] += 1
                a[1] -= 1
                if a[1] == 0:
                    pending_w.pop(0)
            if rv and req_ready:
                addr, beats, write = rp.addr, rp.beats_m1 + 1, rp.write
                if addr % burst + beats > burst:
                    self.errors.append(f"request {addr}+{beats} crosses a burst block")
                self.reqs.append((addr, beats, write))
                if write:
                    pending_w.append([addr, beats])
                else:
                    read_q.extend((cycle + self.latency, addr + i) for i in range(beats))
            if dv and dr:
                read_q.pop(0)


async def csr_write(ctx, dut, addr, value):
    ctx.set(dut.csr.addr, addr)
    ctx.set(dut.csr.w_data, value)
    ctx.set(dut.csr.w_en, 1)
    await ctx.tick()
    ctx.set(dut.csr.w_en, 0)


async def csr_read(ctx, dut, addr):
    ctx.set(dut.csr.addr, addr)
    ctx.set(dut.csr.r_en, 1)
    await ctx.tick()
    ctx.set(dut.csr.r_en, 0)
    return ctx.get(dut.csr.r_data)


def simulate(bench, seed=0):
    dut = HostInterface(P, 8)
    target = PortTarget(dut.mem, seed=seed)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(target.run)

    async def testbench(ctx):
        await bench(ctx, dut, target)
    sim.add_testbench(testbench)
    sim.run()
    assert not target.errors, target.errors
    return target


def test_id_and_params_hash():
    async def bench(ctx, dut, target):
        assert await csr_read(ctx, dut, Csr.ID) == CHIP_ID
        assert await csr_read(ctx, dut, Csr.PARAMS_HASH) == int.from_bytes(P.digest()[:4], "big")
    simulate(bench)


@pytest.mark.parametrize("seed", [1, 2])
def test_dma_roundtrip_with_backpressure(seed):
    rng = random.Random(seed)
    addr, beats = rng.randrange(0, 40), rng.randrange(1, 30)
    words = [rng.getrandbits(P.beat_bits) for _ in range(beats)]
    got = []

    async def bench(ctx, dut, target):
        await csr_write(ctx, dut, Csr.DMA_ADDR, addr)
        await csr_write(ctx, dut, Csr.DMA_BEATS, beats)
        await csr_write(ctx, dut, Csr.DMA_CTRL, 0b11)          # start, host -> HBM
        i = 0
        while i < beats:
            ctx.set(dut.h2c.valid, rng.random() < 0.6)
            ctx.set(dut.h2c.payload, words[i])
            _, _, v, r = await ctx.tick().sample(dut.h2c.valid, dut.h2c.ready)
            i += bool(v and r)
        ctx.set(dut.h2c.valid, 0)
        for _ in range(200):
            if not (await csr_read(ctx, dut, Csr.DMA_STATUS)) & 1:
                break
        else:
            raise AssertionError("DMA host->HBM never finished")
        assert [target.mem[addr + k] for k in range(beats)] == words
        # Every request stays inside one burst block and the requests tile the range exactly.
        covered = [a + k for a, n, w in target.reqs for k in range(n)]
        assert covered == list(range(addr, addr + beats))

        await csr_write(ctx, dut, Csr.DMA_CTRL, 0b01)          # start, HBM -> host
        while len(got) < beats:
            ready = rng.random() < 0.5
            ctx.set(dut.c2h.ready, ready)
            _, _, v, d = await ctx.tick().sample(dut.c2h.valid, dut.c2h.payload)
            if v and ready:
                got.append(d)
        ctx.set(dut.c2h.ready, 0)
        await ctx.tick().repeat(5)
        assert (await csr_read(ctx, dut, Csr.DMA_STATUS)) & 1 == 0
        assert await csr_read(ctx, dut, Csr.ERROR) == 0
    simulate(bench, seed)
    assert got == words


def test_dma_out_of_range_is_refused():
    async def bench(ctx, dut, target):
        await csr_write(ctx, dut, Csr.DMA_ADDR, P.hbm_beats - 2)
        await csr_write(ctx, dut, Csr.DMA_BEATS, 3)
        await csr_write(ctx, dut, Csr.DMA_CTRL, 0b11)
        await ctx.tick().repeat(3)
        st = await csr_read(ctx, dut, Csr.DMA_STATUS)
        assert st & 1 == 0 and st >> 1 == DmaError.OUT_OF_RANGE
        assert await csr_read(ctx, dut, Csr.ERROR) == 0x10 | DmaError.OUT_OF_RANGE
        assert (await csr_read(ctx, dut, Csr.STATUS)) & 0b100
        await csr_write(ctx, dut, Csr.ERROR, 0)
        assert await csr_read(ctx, dut, Csr.ERROR) == 0
    target = simulate(bench)
    assert target.reqs == [] and target.mem == {}


def test_counters_and_clear():
    names = counter_names(P)
    k = names.index("cycles")

    async def bench(ctx, dut, target):
        await ctx.tick().repeat(50)
        lo = await csr_read(ctx, dut, Csr.COUNTER_BASE + 2 * k)
        hi = await csr_read(ctx, dut, Csr.COUNTER_BASE + 2 * k + 1)
        assert hi == 0 and 50 <= lo <= 53
        await csr_write(ctx, dut, Csr.CONTROL, 1)
        lo = await csr_read(ctx, dut, Csr.COUNTER_BASE + 2 * k)
        assert lo <= 2
    simulate(bench)


def test_config_debug_write():
    async def bench(ctx, dut, target):
        await csr_write(ctx, dut, Csr.CFG_UNIT, 3)
        await csr_write(ctx, dut, Csr.CFG_ADDR, 7)
        ctx.set(dut.csr.addr, Csr.CFG_DATA)
        ctx.set(dut.csr.w_data, 0xDEADBEEF)
        ctx.set(dut.csr.w_en, 1)
        await ctx.tick()
        ctx.set(dut.csr.w_en, 0)
        assert ctx.get(dut.cfg.we) == 1
        assert (ctx.get(dut.cfg.unit), ctx.get(dut.cfg.addr), ctx.get(dut.cfg.data)) == (3, 7, 0xDEADBEEF)
        await ctx.tick()
        assert ctx.get(dut.cfg.we) == 0
    simulate(bench)


def test_run_control_and_unit_errors():
    """RUN_START starts exactly the masked units; run_done waits for all of them; a unit's
    status latches ERROR with its id."""
    async def bench(ctx, dut, target):
        await csr_write(ctx, dut, Csr.RUN_MASK0, 0b1010)
        await csr_write(ctx, dut, Csr.RUN_ITER, 7)
        ctx.set(dut.csr.addr, Csr.RUN_START)
        ctx.set(dut.csr.w_en, 1)
        assert ctx.get(dut.unit_start) == 0
        await ctx.tick()
        ctx.set(dut.csr.w_en, 0)
        # the sequencer starts the call's units in the next cycle, all together
        assert ctx.get(dut.unit_start) == 0b1010 and ctx.get(dut.unit_iteration) == 7
        await ctx.tick()
        assert ctx.get(dut.unit_start) == 0
        ctx.set(dut.unit_busy, 0b1010)
        await ctx.tick()
        ctx.set(dut.unit_done, 0b0010)          # unit 1 finishes ...
        await ctx.tick()
        ctx.set(dut.unit_done, 0)
        ctx.set(dut.unit_busy, 0b1000)
        await ctx.tick()
        assert ctx.get(dut.run_done) == 0       # ... unit 3 has not
        assert (await csr_read(ctx, dut, Csr.RUN_STATUS)) == 0b01
        ctx.set(dut.unit_status[3], 2)
        ctx.set(dut.unit_done, 0b1000)
        await ctx.tick()
        ctx.set(dut.unit_done, 0)
        ctx.set(dut.unit_busy, 0)
        await ctx.tick()
        assert ctx.get(dut.run_done) == 1
        assert (await csr_read(ctx, dut, Csr.RUN_STATUS)) == 0b10
        assert await csr_read(ctx, dut, Csr.ERROR) == 0x20 | (3 << 8) | 2
        await csr_write(ctx, dut, Csr.UNIT_SEL, 3)
        assert await csr_read(ctx, dut, Csr.UNIT_STATUS) == 2
    simulate(bench)


def test_looped_call_through_csrs():
    """RUN_COUNT iterations per call; UNIT_DEP holds unit 2 back until unit 1 finished the
    previous iteration, unit 1 runs ahead; the launch and the dependence stall are counted."""
    from hdl.host import counter_names
    from hdl.sequencer import dep_word

    async def bench(ctx, dut, target):
        await csr_write(ctx, dut, Csr.CONTROL, 1)          # clear counters
        await csr_write(ctx, dut, Csr.UNIT_SEL, 2)
        await csr_write(ctx, dut, Csr.UNIT_DEP, dep_word(1))
        assert await csr_read(ctx, dut, Csr.UNIT_DEP) == dep_word(1)
        await csr_write(ctx, dut, Csr.RUN_MASK0, 0b110)
        await csr_write(ctx, dut, Csr.RUN_ITER, 4)
        await csr_write(ctx, dut, Csr.RUN_COUNT, 2)
        assert await csr_read(ctx, dut, Csr.RUN_COUNT) == 2
        await csr_write(ctx, dut, Csr.RUN_START, 1)
        assert ctx.get(dut.unit_start) == 0b110 and ctx.get(dut.unit_iteration) == 4
        await ctx.tick()
        ctx.set(dut.unit_done, 0b100)                       # unit 2 finishes iteration 4
        await ctx.tick()
        ctx.set(dut.unit_done, 0)
        await ctx.tick()
        assert ctx.get(dut.unit_start) == 0                 # waits for unit 1's iteration 4
        ctx.set(dut.unit_done, 0b010)
        await ctx.tick()
        ctx.set(dut.unit_done, 0)
        assert ctx.get(dut.unit_start) == 0b110 and ctx.get(dut.unit_iteration) == 5
        await ctx.tick()
        ctx.set(dut.unit_done, 0b110)
        await ctx.tick()
        ctx.set(dut.unit_done, 0)
        assert ctx.get(dut.run_done) == 1
        names = counter_names(RduParams())
        launches = await csr_read(ctx, dut, Csr.COUNTER_BASE + 2 * names.index("launches"))
        stalls = await csr_read(ctx, dut, Csr.COUNTER_BASE + 2 * names.index("dep_stall_cycles"))
        assert launches == 1 and stalls == 2, (launches, stalls)
    simulate(bench)


def test_h2c_routes_to_config_controller():
    async def bench(ctx, dut, target):
        await csr_write(ctx, dut, Csr.CONFIG_LENGTH, 128)
        await csr_write(ctx, dut, Csr.CONFIG_CTRL, 0b11)
        assert ctx.get(dut.cc_start) == 0      # the pulse was in the write cycle
        ctx.set(dut.cc_data.ready, 1)
        ctx.set(dut.h2c.valid, 1)
        ctx.set(dut.h2c.payload, 0x1234)
        assert ctx.get(dut.cc_data.valid) == 1 and ctx.get(dut.cc_data.payload) == 0x1234
        assert ctx.get(dut.h2c.ready) == 1
        await ctx.tick()
        ctx.set(dut.h2c.valid, 0)
        assert (await csr_read(ctx, dut, Csr.CONFIG_CTRL)) == 0b10
        await csr_write(ctx, dut, Csr.CONFIG_CTRL, 0)
        ctx.set(dut.h2c.valid, 1)
        assert ctx.get(dut.cc_data.valid) == 0
        ctx.set(dut.h2c.valid, 0)
        # A refused bitstream latches the CONFIG error.
        ctx.set(dut.cc_status, 5)
        ctx.set(dut.cc_done, 1)
        await ctx.tick()
        ctx.set(dut.cc_done, 0)
        await ctx.tick()
        assert await csr_read(ctx, dut, Csr.ERROR) == 0x35
        assert (await csr_read(ctx, dut, Csr.CONFIG_STATUS) >> 4) & 0xF == 5
    simulate(bench)


def test_attribution_counters_split_fill_from_idle_running():
    """Units busy with no kernel HBM beat yet since the launch count as fill; after the first,
    idle HBM counts as run_hbm_idle; a beat cycle counts as HBM busy only; a new launch starts
    a new fill."""
    names = counter_names(P)

    async def read(ctx, dut, name):
        return await csr_read(ctx, dut, Csr.COUNTER_BASE + 2 * names.index(name))

    async def bench(ctx, dut, target):
        await csr_write(ctx, dut, Csr.RUN_MASK0, 0b1)
        await csr_write(ctx, dut, Csr.CONTROL, 1)           # clear the counters
        await csr_write(ctx, dut, Csr.RUN_START, 1)
        ctx.set(dut.unit_busy, 1)
        await ctx.tick().repeat(5)                          # fill
        ctx.set(dut.hbm_stats.rd_beat, 1)                   # a beat, but not a kernel's
        await ctx.tick().repeat(1)                          # (a bitstream prefetch):
        ctx.set(dut.kernel_beat, 1)                         # HBM busy, still a fill
        await ctx.tick().repeat(1)
        ctx.set(dut.hbm_stats.rd_beat, 0)
        ctx.set(dut.kernel_beat, 0)
        await ctx.tick().repeat(3)                          # running, HBM idle
        ctx.set(dut.unit_busy, 0)
        got = {n: await read(ctx, dut, n) for n in ("fill_cycles", "hbm_busy_cycles",
                                                    "run_hbm_idle_cycles")}
        assert got == {"fill_cycles": 5, "hbm_busy_cycles": 2, "run_hbm_idle_cycles": 3}, got
        await csr_write(ctx, dut, Csr.RUN_START, 1)         # a new call: fill again
        ctx.set(dut.unit_busy, 1)
        await ctx.tick().repeat(4)
        ctx.set(dut.unit_busy, 0)
        assert await read(ctx, dut, "fill_cycles") == 9
        assert await read(ctx, dut, "run_hbm_idle_cycles") == 3
    simulate(bench)

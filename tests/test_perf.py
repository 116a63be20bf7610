"""LatencyMonitor and EventCounters in Amaranth's simulator: recorded latencies, histogram
bins, the clear sweep, and the in-flight overflow guard."""

import random

from amaranth.sim import Simulator

from hdl.params import RduParams
from hdl.perf import EventCounters, LatencyMonitor

BINS, BIN_CYCLES = 16, 4


def _run(dut, bench, cycles_limit=20000):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_latency_monitor_records_and_clears():
    dut = LatencyMonitor(RduParams(), bins=BINS, bin_cycles=BIN_CYCLES, depth=8)
    rng = random.Random(5)
    # Requests of 1-3 beats; each one's first data beat after a random latency. Responses are
    # in order, as on an HBM port.
    plan = [(rng.randint(1, 3), rng.randint(2, 90)) for _ in range(40)]
    expected = []

    async def read_hist(ctx):
        out = []
        for i in range(BINS):
            ctx.set(dut.hist_index, i)
            out.append(ctx.get(dut.hist_count))
        return out

    async def bench(ctx):
        await ctx.tick().repeat(BINS + 2)      # the reset-time sweep is already done
        assert not ctx.get(dut.clearing)
        for beats, lat in plan:
            ctx.set(dut.req_fire, 1)
            ctx.set(dut.req_beats_m1, beats - 1)
            await ctx.tick()
            ctx.set(dut.req_fire, 0)
            await ctx.tick().repeat(lat - 1)
            ctx.set(dut.rdata_fire, 1)
            await ctx.tick().repeat(beats)
            ctx.set(dut.rdata_fire, 0)
            expected.append(lat)
        assert ctx.get(dut.count) == len(expected)
        assert ctx.get(dut.total) == sum(expected)
        assert ctx.get(dut.max) == max(expected)
        want = [0] * BINS
        for lat in expected:
            want[min(BINS - 1, lat // BIN_CYCLES)] += 1
        assert await read_hist(ctx) == want
        assert not ctx.get(dut.overflow)
        # clear: statistics zero at once, the histogram after the sweep
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert ctx.get(dut.count) == 0 and ctx.get(dut.max) == 0
        assert ctx.get(dut.clearing)
        await ctx.tick().repeat(BINS)
        assert not ctx.get(dut.clearing)
        assert await read_hist(ctx) == [0] * BINS
        # back-to-back first beats in the same bin count twice (read-modify-write per cycle)
        ctx.set(dut.req_beats_m1, 0)
        for _ in range(2):
            ctx.set(dut.req_fire, 1)
            await ctx.tick()
        ctx.set(dut.req_fire, 0)
        await ctx.tick().repeat(5)
        ctx.set(dut.rdata_fire, 1)
        await ctx.tick().repeat(2)
        ctx.set(dut.rdata_fire, 0)
        hist = await read_hist(ctx)
        assert ctx.get(dut.count) == 2
        lat = ctx.get(dut.total) // 2           # both waited equally long
        assert ctx.get(dut.total) == 2 * lat and hist[lat // BIN_CYCLES] == 2 and sum(hist) == 2

    _run(dut, bench)


def test_latency_monitor_overflow_stops_recording():
    dut = LatencyMonitor(RduParams(), bins=BINS, bin_cycles=BIN_CYCLES, depth=4)

    async def bench(ctx):
        ctx.set(dut.req_fire, 1)
        await ctx.tick().repeat(10)             # 10 single-beat reads in flight, depth 4
        ctx.set(dut.req_fire, 0)
        await ctx.tick()
        assert ctx.get(dut.overflow)
        ctx.set(dut.rdata_fire, 1)
        await ctx.tick().repeat(4)
        ctx.set(dut.rdata_fire, 0)
        assert ctx.get(dut.count) == 0          # nothing recorded once overflowed

    _run(dut, bench)


def test_event_counters_count_and_clear():
    dut = EventCounters(3, width=16)

    async def bench(ctx):
        ctx.set(dut.inc, 0b101)
        await ctx.tick().repeat(7)
        ctx.set(dut.inc, 0b010)
        await ctx.tick().repeat(3)
        assert [ctx.get(c) for c in dut.counts] == [7, 3, 7]
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert [ctx.get(c) for c in dut.counts] == [0, 0, 0]

    _run(dut, bench)

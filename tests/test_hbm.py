"""Unit tests of hdl/hbm.py in Amaranth's simulator, with a reduced geometry (64 KiB, latency 12)."""

import random

import pytest
from amaranth.sim import Simulator

from hdl.hbm import HbmController, HbmGeometry
from hdl.params import RduParams

# refresh pushed far away unless a test wants it, so latencies are exact
P = RduParams(hbm_bytes=64 * 1024, hbm_read_latency=12, hbm_t_refi=1 << 16)
MASK = (1 << P.beat_bits) - 1


def rand_beat(rng):
    return rng.getrandbits(P.beat_bits)


def make_sim(dut):
    sim = Simulator(dut)
    sim.add_clock(1e-9)
    return sim


def run_with_watchdog(sim, finished, limit_cycles, what):
    """Run until every entry of ``finished`` (a dict filled by the testbenches) is set, failing
    with ``what`` after ``limit_cycles`` so that a hang is a failure, not a stuck test."""
    state = {}

    async def watchdog(ctx):
        for _ in range(limit_cycles):
            if finished and all(finished.values()):
                return
            await ctx.tick()
        state["timeout"] = True

    sim.add_testbench(watchdog)
    sim.run()
    assert "timeout" not in state, f"watchdog: {what} not finished after {limit_cycles} cycles ({finished})"


async def send_req(ctx, port, addr, beats, write):
    ctx.set(port.req.payload.addr, addr)
    ctx.set(port.req.payload.beats_m1, beats - 1)
    ctx.set(port.req.payload.write, write)
    ctx.set(port.req.valid, 1)
    await ctx.tick().until(port.req.ready)
    ctx.set(port.req.valid, 0)


async def send_wdata(ctx, port, beats):
    for b in beats:
        ctx.set(port.wdata.payload, b)
        ctx.set(port.wdata.valid, 1)
        await ctx.tick().until(port.wdata.ready)
    ctx.set(port.wdata.valid, 0)


async def write_burst(ctx, port, addr, beats):
    """Request then data (data right behind the request, as the contract asks)."""
    ctx.set(port.req.payload.addr, addr)
    ctx.set(port.req.payload.beats_m1, len(beats) - 1)
    ctx.set(port.req.payload.write, 1)
    ctx.set(port.req.valid, 1)
    ctx.set(port.wdata.payload, beats[0])
    ctx.set(port.wdata.valid, 1)
    await ctx.tick().until(port.req.ready)
    ctx.set(port.req.valid, 0)
    await send_wdata(ctx, port, beats)


async def recv(ctx, port, n, ready_prob=1.0, rng=None):
    out = []
    while len(out) < n:
        rdy = 1 if ready_prob >= 1.0 else int(rng.random() < ready_prob)
        ctx.set(port.rdata.ready, rdy)
        _, _, valid, payload = await ctx.tick().sample(port.rdata.valid, port.rdata.payload)
        if valid and rdy:
            out.append(payload)
    ctx.set(port.rdata.ready, 0)
    return out


def bursts_of(addr, n, burst):
    """Split n sequential beats from addr into block-aligned requests."""
    reqs = []
    while n:
        k = min(n, burst - addr % burst)
        reqs.append((addr, k))
        addr += k
        n -= k
    return reqs


def test_roundtrip_two_ports_random():
    """Random partial/full writes from two ports, then random reads; exact data, in order."""
    dut = HbmController(P, 2)
    rng = random.Random(1)
    burst = P.hbm_burst_beats
    model = {}
    regions = [(0, P.hbm_beats // 2), (P.hbm_beats // 2, P.hbm_beats)]
    results = {}

    def plan(i):
        lo, hi = regions[i]
        writes, reads = [], []
        for _ in range(24):
            a = rng.randrange(lo, hi)
            k = rng.randint(1, burst - a % burst)
            data = [rand_beat(rng) for _ in range(k)]
            writes.append((a, data))
            for j, d in enumerate(data):
                model[a + j] = d
        for _ in range(24):
            a = rng.randrange(lo, hi)
            k = rng.randint(1, burst - a % burst)
            reads.append((a, k))
        return writes, reads

    plans = [plan(0), plan(1)]

    def mk(i):
        port = dut.ports[i]
        writes, reads = plans[i]

        async def issuer(ctx):
            for a, data in writes:
                await write_burst(ctx, port, a, data)
            for a, k in reads:
                await send_req(ctx, port, a, k, 0)

        async def receiver(ctx):
            n = sum(k for _, k in reads)
            results[i] = await recv(ctx, port, n, ready_prob=0.6, rng=random.Random(i))
            finished[i] = True
        return issuer, receiver

    finished = {0: False, 1: False}
    sim = make_sim(dut)
    for i in range(2):
        a, b = mk(i)
        sim.add_testbench(a, background=True)
        sim.add_testbench(b, background=True)
    run_with_watchdog(sim, finished, 3000, "round trip")
    for i in range(2):
        expect = [model.get(a + j, 0) for a, k in plans[i][1] for j in range(k)]
        assert results.get(i) == expect, f"port {i} read data mismatch"


async def timed_read(ctx, dut, port, addr, beats=1):
    """Cycles from the request handshake to the first valid rdata beat."""
    ctx.set(port.rdata.ready, 1)
    await send_req(ctx, port, addr, beats, 0)
    t = 0
    while True:
        t += 1
        _, _, valid = await ctx.tick().sample(port.rdata.valid)
        if valid:
            break
    for _ in range(beats - 1):
        await ctx.tick()
    return t


def test_latency_row_hit_miss_conflict():
    """Closed bank: L + tRCD; row hit: L; other row open in the bank: L + tRP + tRCD."""
    dut = HbmController(P, 1)
    geo = HbmGeometry(P)
    # two addresses in channel 0, bank 0, rows 0 and 1
    a_row0, a_row1 = geo.compose(0, 0, 0), geo.compose(0, 0, 1)
    assert geo.split(a_row0)[:3] == (0, 0, 0) and geo.split(a_row1)[:3] == (0, 0, 1)
    lat = {}
    misses = []

    async def tb(ctx):
        lat["closed"] = await timed_read(ctx, dut, dut.ports[0], a_row0)
        lat["hit"] = await timed_read(ctx, dut, dut.ports[0], a_row0 + 1)
        lat["conflict"] = await timed_read(ctx, dut, dut.ports[0], a_row1)

    async def mon(ctx):
        async for _, _, rm in ctx.tick().sample(dut.stats.row_miss):
            if rm:
                misses.append(rm)

    sim = make_sim(dut)
    sim.add_testbench(tb)
    sim.add_testbench(mon, background=True)
    sim.run()
    L = P.hbm_read_latency
    assert lat == {"closed": L + P.hbm_t_rcd, "hit": L, "conflict": L + P.hbm_t_rp + P.hbm_t_rcd}
    assert len(misses) == 2


def test_order_kept_across_channels():
    """A slow channel (row conflict) followed by a fast one: data still comes back in order."""
    dut = HbmController(P, 1)
    geo = HbmGeometry(P)
    rng = random.Random(5)
    model = {}
    got = []
    # ch0 bank 0 row 0 opened, then ch0 bank 0 row 1 (conflict, slow), then ch1 (closed, faster),
    # then ch0 row 1 again (hit), then ch1 again
    seq = [(geo.compose(0, 0, 0), 4), (geo.compose(0, 0, 1), 4), (geo.compose(1, 0, 0), 4),
           (geo.compose(0, 0, 1, col=1), 4), (geo.compose(1, 0, 0, col=1), 4)]

    async def tb(ctx):
        port = dut.ports[0]
        for a, k in seq:
            data = [rand_beat(rng) for _ in range(k)]
            for j, d in enumerate(data):
                model[a + j] = d
            await write_burst(ctx, port, a, data)
        for a, k in seq:
            await send_req(ctx, port, a, k, 0)

    async def rx(ctx):
        got.extend(await recv(ctx, dut.ports[0], sum(k for _, k in seq)))

    sim = make_sim(dut)
    sim.add_testbench(tb)
    sim.add_testbench(rx)
    sim.run()
    assert got == [model[a + j] for a, k in seq for j in range(k)]


def test_stalled_port_does_not_block_other_port():
    """Port 0 floods reads and never takes rdata; port 1 still streams all its reads."""
    dut = HbmController(P, 2)
    done = {}

    async def flood(ctx):
        port = dut.ports[0]
        ctx.set(port.rdata.ready, 0)
        a = 0
        while True:
            await send_req(ctx, port, a % (P.hbm_beats // 2), 4, 0)
            a += 4

    async def worker(ctx):
        port = dut.ports[1]
        base = P.hbm_beats // 2
        n = 0
        for i in range(64):
            await send_req(ctx, port, base + 4 * i, 4, 0)
            n += 4
        done["reqs"] = True

    async def rx(ctx):
        data = await recv(ctx, dut.ports[1], 256)
        done["beats"] = len(data)

    sim = make_sim(dut)
    sim.add_testbench(flood, background=True)
    sim.add_testbench(worker, background=True)
    sim.add_testbench(rx, background=True)
    finished = {}

    async def flag(ctx):
        while done.get("beats") is None:
            await ctx.tick()
        finished["rx"] = True
    sim.add_testbench(flag, background=True)
    finished["rx"] = False
    run_with_watchdog(sim, finished, 2000, "port 1 stream next to a stalled port 0")
    assert done == {"reqs": True, "beats": 256}


def test_error_on_block_crossing():
    dut = HbmController(P, 1)
    seen = {}

    async def tb(ctx):
        port = dut.ports[0]
        ctx.set(port.rdata.ready, 1)
        await send_req(ctx, port, 0, 4, 0)       # legal: full block
        for _ in range(30):
            await ctx.tick()
        seen["before"] = ctx.get(dut.error)
        await send_req(ctx, port, 2, 4, 0)       # 2 + 4 > 4: crosses its block
        for _ in range(30):
            await ctx.tick()
        seen["after"] = ctx.get(dut.error)

    sim = make_sim(dut)
    sim.add_testbench(tb)
    sim.run()
    assert seen == {"before": 0, "after": 1}


def _stream_reads(params, n_ports, beats_per_port, cycles_limit):
    """Every port streams sequential full-burst reads over its own region; returns
    (cycles from first request to last beat, beats moved, stats counters)."""
    dut = HbmController(params, n_ports)
    span = params.hbm_beats // n_ports
    t = {"first": None, "last": 0, "cycle": 0}
    counts = {"refresh": 0, "row_miss": 0, "rd_beat": 0, "refresh_cmd": 0}
    got = {}

    async def clock(ctx):
        async for _, _, rf, rm, rb, rc in ctx.tick().sample(
                dut.stats.refresh, dut.stats.row_miss, dut.stats.rd_beat, dut.refresh_cmd):
            t["cycle"] += 1
            counts["refresh"] += bin(rf).count("1")
            counts["row_miss"] += bin(rm).count("1")
            counts["rd_beat"] += bin(rb).count("1")
            counts["refresh_cmd"] += bin(rc).count("1")

    def mk(i):
        port = dut.ports[i]

        async def issuer(ctx):
            for k in range(beats_per_port // params.hbm_burst_beats):
                if t["first"] is None:
                    t["first"] = t["cycle"]
                await send_req(ctx, port, i * span + (k * params.hbm_burst_beats) % span,
                               params.hbm_burst_beats, 0)

        async def receiver(ctx):
            got[i] = len(await recv(ctx, port, beats_per_port))
            t["last"] = max(t["last"], t["cycle"])
            finished[i] = True
        return issuer, receiver

    finished = {i: False for i in range(n_ports)}
    sim = make_sim(dut)
    sim.add_testbench(clock, background=True)
    for i in range(n_ports):
        a, b = mk(i)
        sim.add_testbench(a, background=True)
        sim.add_testbench(b, background=True)
    run_with_watchdog(sim, finished, cycles_limit, "streaming reads")
    assert got == {i: beats_per_port for i in range(n_ports)}
    return t["last"] - t["first"], beats_per_port * n_ports, counts


def test_refresh_per_bank_hidden_under_streaming():
    """Short tREFI (a REFsb every 40 cycles per channel, each 32 cycles long: 5% of each bank's
    time, like the default 128/3120): the refreshes are all issued, yet two sequential streams
    keep both channels >= 90% busy, because the controller refreshes banks the streams have
    just left instead of banks they are about to need."""
    # 256 KiB so that each stream walks fresh rows (no wrap-around) like a weight stream does
    p = P.replace(hbm_bytes=256 * 1024, hbm_t_refi=640, hbm_t_rfcsb=32)
    cycles, beats, counts = _stream_reads(p, 2, 2048, 4000)
    interval = p.hbm_t_refi // p.hbm_banks
    assert counts["rd_beat"] == beats
    assert counts["refresh_cmd"] >= p.hbm_channels * (cycles // interval - p.hbm_refresh_postpone - 1)
    # startup latency excluded from the steady state estimate
    util = beats / (cycles - p.hbm_read_latency - p.hbm_t_rcd) / p.hbm_channels
    assert util >= 0.90, (util, counts)


def test_refresh_per_bank_paid_at_once_when_idle():
    """An idle channel pays each REFsb as soon as it is due (no debt carried into the next
    burst of traffic), lowest bank first; a read to a bank under refresh waits for it
    (stats.refresh high)."""
    p = P.replace(hbm_t_refi=16 * 20, hbm_t_rfcsb=64)
    dut = HbmController(p, 1)
    geo = HbmGeometry(p)
    seen = {"refresh_cmd": [], "stall": 0}

    async def mon(ctx):
        cyc = 0
        async for _, _, rc, rf in ctx.tick().sample(dut.refresh_cmd, dut.stats.refresh):
            cyc += 1
            if rc & 1:
                seen["refresh_cmd"].append(cyc)
            seen["stall"] += rf & 1

    async def tb(ctx):
        while len(seen["refresh_cmd"]) < 3:            # banks 0, 1, 2 of channel 0 refreshed
            await ctx.tick()
        await ctx.tick()
        seen["lat"] = await timed_read(ctx, dut, dut.ports[0], geo.compose(0, 2, 0))

    sim = make_sim(dut)
    sim.add_testbench(mon, background=True)
    sim.add_testbench(tb)
    sim.run()
    cmds = seen["refresh_cmd"]
    assert abs(cmds[0] - 20) <= 2 and all(abs(b - a - 20) <= 2 for a, b in zip(cmds, cmds[1:3])), cmds
    L = p.hbm_read_latency
    assert L + p.hbm_t_rcd < seen["lat"] <= L + p.hbm_t_rcd + p.hbm_t_rfcsb, seen
    assert 0 < seen["stall"] <= p.hbm_t_rfcsb


def test_refresh_all_bank_blocks_channel():
    """All-bank refresh: the refresh strobe is high for whole tRFC windows and the stream pays."""
    p = P.replace(hbm_t_refi=400, hbm_t_rfc=100, hbm_refresh_per_bank=False)
    cycles, beats, counts = _stream_reads(p, 2, 512, 3000)
    n_refresh_windows = cycles // p.hbm_t_refi
    # each channel is blocked tRFC (+ maybe tRP) per window
    assert counts["refresh"] >= p.hbm_channels * (n_refresh_windows - 1) * p.hbm_t_rfc
    util = beats / cycles / p.hbm_channels
    assert util < 1 - p.hbm_t_rfc / p.hbm_t_refi + 0.05


def test_busy_until_posted_writes_are_performed():
    """stats.busy stays high from a write's acceptance until its last beat is in the store
    (the host's run_done waits for it); a read issued after busy falls sees the data."""
    p = P
    dut = HbmController(p, 1)
    geo = HbmGeometry(p)
    addr = geo.compose(1, 3, 5)
    seen = {}

    async def tb(ctx):
        assert ctx.get(dut.stats.busy) == 0
        rng = random.Random(3)
        beats = [rand_beat(rng) for _ in range(p.hbm_burst_beats)]
        await write_burst(ctx, dut.ports[0], addr, beats)
        assert ctx.get(dut.stats.busy) != 0          # accepted, not yet performed (row miss)
        n = 0
        while ctx.get(dut.stats.busy):
            await ctx.tick()
            n += 1
        seen["busy_after_accept"] = n
        await send_req(ctx, dut.ports[0], addr, p.hbm_burst_beats, 0)
        got = await recv(ctx, dut.ports[0], p.hbm_burst_beats)
        assert got == beats

    sim = make_sim(dut)
    sim.add_testbench(tb)
    sim.run()
    assert seen["busy_after_accept"] >= p.hbm_t_rcd, seen


def _agcu_streams(params, phases, limit):
    """Ports driven like AGCUs: a sequential program becomes one full-burst read request every
    ``hbm_burst_beats`` cycles (one address per cycle), held back when the port's credits
    (``agcu_read_buffer_beats``) run out; the consumer takes a beat every ``every`` cycles.
    ``phases``: (idle cycles, [(base, beats) per port], every), run back to back from reset.
    Returns one dict per phase (cycles, refresh stall cycles and REFsb commands per channel) and
    the total cycles and REFsb commands per channel since reset."""
    from hdl.agcu import agcu_read_buffer_beats
    n_ports = max(len(s) for _, s, _ in phases)
    dut = HbmController(params, n_ports)
    C, bb = params.hbm_channels, params.hbm_burst_beats
    credit_max = agcu_read_buffer_beats(params)
    out, total = [], {"cycles": 0, "cmd": [0] * C}

    async def sample(ctx, st):
        rf, rc = ctx.get(dut.stats.refresh), ctx.get(dut.refresh_cmd)
        for c in range(C):
            total["cmd"][c] += (rc >> c) & 1
            if st is not None:
                st["stall"][c] += (rf >> c) & 1
                st["cmd"][c] += (rc >> c) & 1
        total["cycles"] += 1
        await ctx.tick()

    async def tb(ctx):
        for idle, streams, every in phases:
            for _ in range(idle):
                await sample(ctx, None)
            st = {"cycles": 0, "stall": [0] * C, "cmd": [0] * C}
            n = len(streams)
            nxt, t_req, credits, got = [0] * n, [bb + 3] * n, [credit_max] * n, [0] * n
            while got != [beats for _, beats in streams]:
                assert st["cycles"] < limit, ("phase not finished", st, got)
                cyc = st["cycles"]
                for i, (base, beats) in enumerate(streams):
                    port = dut.ports[i]
                    present = nxt[i] < beats // bb and cyc >= t_req[i] and credits[i] >= bb
                    ctx.set(port.req.payload.addr, base + nxt[i] * bb)
                    ctx.set(port.req.payload.beats_m1, bb - 1)
                    ctx.set(port.req.payload.write, 0)
                    ctx.set(port.req.valid, present)
                    ctx.set(port.rdata.ready, cyc % every == 0)
                for i in range(n):
                    port = dut.ports[i]
                    if ctx.get(port.req.valid) and ctx.get(port.req.ready):
                        credits[i] -= bb
                        nxt[i] += 1
                        t_req[i] = max(cyc + 1, t_req[i] + bb)
                    if ctx.get(port.rdata.valid) and ctx.get(port.rdata.ready):
                        got[i] += 1
                        credits[i] += 1
                st["cycles"] += 1
                await sample(ctx, st)
            for i in range(n):
                ctx.set(dut.ports[i].req.valid, 0)
                ctx.set(dut.ports[i].rdata.ready, 0)
            out.append(st)

    sim = make_sim(dut)
    sim.add_testbench(tb)
    sim.run()
    return out, total


def test_refresh_per_bank_free_for_agcu_streams():
    """Default refresh timing (a REFsb due every 195 cycles per channel, each holding its bank
    tRP + tRFCsb = 140 cycles) under AGCU-like streams: a slow single stream (the channel queue
    is empty most of the time) and four streams sharing both channels at full rate. A refresh
    scheduler that refreshes only banks the streams have left or will not reach within 140 cycles
    makes refresh free: at most one REFsb's worth of stall cycles in total (the previous policy
    stalled 759 cycles here), every refresh still issued on time within the
    postpone/pull-in limits, and the cycle counts at the consumer/peak bound."""
    d = RduParams()
    p = P.replace(hbm_bytes=256 * 1024, hbm_t_refi=d.hbm_t_refi, hbm_t_rfcsb=d.hbm_t_rfcsb)
    q = p.hbm_beats // 4
    phases = [(0, [(0, 2048)], 2),                                # 1 beat every 2 cycles
              (0, [(i * q, q) for i in range(4)], 1)]             # 4 x 1024 beats, full rate
    (slow, four), total = _agcu_streams(p, phases, limit=8000)
    hold = p.hbm_t_rp + p.hbm_t_rfcsb
    stall = sum(slow["stall"]) + sum(four["stall"])
    assert stall <= hold, (slow, four)
    interval = p.hbm_t_refi // p.hbm_banks
    due = total["cycles"] // interval
    for c in range(p.hbm_channels):
        # refresh is not skipped: owed at most hbm_refresh_postpone, pulled in at most as many
        assert due - p.hbm_refresh_postpone - 1 <= total["cmd"][c] <= due + p.hbm_refresh_postpone, \
            (c, due, total)
    L = p.hbm_read_latency
    assert slow["cycles"] <= 2 * 2048 + L + 64, slow
    assert four["cycles"] <= (4 * q) // p.hbm_channels + L + 64, four

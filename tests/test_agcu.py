"""Unit tests of hdl/agcu.py (with the HBM model behind it) in Amaranth's simulator."""

import random

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hdl.agcu import (Agcu, AgcuMode, AgcuReg, AgcuStatus, ITERATION_BITS, STATUS_BITS,
                      agcu_count_reg, agcu_read_buffer_beats, agcu_stride_reg)
from hdl.bus import config_bus_signature, hbm_port_signature
from hdl.hbm import HbmController
from hdl.params import RduParams

P = RduParams(hbm_bytes=64 * 1024, hbm_read_latency=12, hbm_t_refi=1 << 16)
UNIT = 5
BURST = P.hbm_burst_beats


class Bench(wiring.Component):
    """One AGCU (unit id UNIT) on HBM port 0; HBM port 1 is left to the testbench (preload and
    readback, like the host DMA engine)."""

    def __init__(self, p):
        self.p = p
        self.agcu = Agcu(p, UNIT)
        super().__init__({
            "cfg": In(config_bus_signature()),
            "host": In(hbm_port_signature(p)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.agcu = self.agcu
        m.submodules.hbm = hbm = HbmController(self.p, 2)
        wiring.connect(m, self.agcu.mem, hbm.ports[0])
        wiring.connect(m, wiring.flipped(self.host), hbm.ports[1])
        wiring.connect(m, wiring.flipped(self.cfg), self.agcu.cfg)
        return m


def program_addresses(base, counts, strides, region=None):
    """Reference model of the address program; stops at the first out-of-region address."""
    out = []
    n = len(counts)
    if any(c == 0 for c in counts):
        return out, False
    idx = [0] * n
    while True:
        a = base + sum(i * s for i, s in zip(idx, strides))
        if region is not None and not (region[0] <= a < region[0] + region[1]):
            return out, True
        out.append(a)
        k = 0
        while k < n and idx[k] == counts[k] - 1:
            idx[k] = 0
            k += 1
        if k == n:
            return out, False
        idx[k] += 1


def coalesce(addrs):
    reqs = []
    for a in addrs:
        if reqs and a == reqs[-1][0] + reqs[-1][1] and a // BURST == reqs[-1][0] // BURST:
            reqs[-1][1] += 1
        else:
            reqs.append([a, 1])
    return [tuple(r) for r in reqs]


async def cfg_write(ctx, cfg, unit, addr, value):
    ctx.set(cfg.we, 1)
    ctx.set(cfg.unit, unit)
    ctx.set(cfg.addr, addr)
    ctx.set(cfg.data, value & 0xFFFF_FFFF)
    await ctx.tick()
    ctx.set(cfg.we, 0)


async def configure(ctx, dut, *, mode, region, base, counts, strides, iter_stride=0, unit=UNIT):
    await cfg_write(ctx, dut.cfg, unit, AgcuReg.MODE, mode)
    await cfg_write(ctx, dut.cfg, unit, AgcuReg.REGION_BASE, region[0])
    await cfg_write(ctx, dut.cfg, unit, AgcuReg.REGION_BEATS, region[1])
    await cfg_write(ctx, dut.cfg, unit, AgcuReg.BASE, base)
    await cfg_write(ctx, dut.cfg, unit, AgcuReg.ITER_STRIDE, iter_stride)
    for k in range(P.agcu_counters):
        await cfg_write(ctx, dut.cfg, unit, agcu_count_reg(k), counts[k] if k < len(counts) else 1)
        await cfg_write(ctx, dut.cfg, unit, agcu_stride_reg(k), strides[k] if k < len(strides) else 0)


async def host_write(ctx, port, addr, beats):
    """Write sequential beats through the host port, split into block-aligned bursts."""
    i = 0
    while i < len(beats):
        a = addr + i
        k = min(len(beats) - i, BURST - a % BURST)
        ctx.set(port.req.payload.addr, a)
        ctx.set(port.req.payload.beats_m1, k - 1)
        ctx.set(port.req.payload.write, 1)
        ctx.set(port.req.valid, 1)
        await ctx.tick().until(port.req.ready)
        ctx.set(port.req.valid, 0)
        for b in beats[i:i + k]:
            ctx.set(port.wdata.payload, b)
            ctx.set(port.wdata.valid, 1)
            await ctx.tick().until(port.wdata.ready)
        ctx.set(port.wdata.valid, 0)
        i += k


async def host_read(ctx, port, addr, n):
    out = []
    ctx.set(port.rdata.ready, 1)
    for i in range(0, n, BURST):
        a = addr + i
        k = min(n - i, BURST - a % BURST)
        assert a % BURST == 0 or i == 0
        ctx.set(port.req.payload.addr, a)
        ctx.set(port.req.payload.beats_m1, k - 1)
        ctx.set(port.req.payload.write, 0)
        ctx.set(port.req.valid, 1)
        await ctx.tick().until(port.req.ready)
        ctx.set(port.req.valid, 0)
        while len(out) < i + k:
            _, _, v, d = await ctx.tick().sample(port.rdata.valid, port.rdata.payload)
            if v:
                out.append(d)
    ctx.set(port.rdata.ready, 0)
    return out


async def run_program(ctx, dut, *, iteration=0, rd_ready_prob=1.0, wr_beats=None, rng=None,
                      limit=20000):
    """Pulse start, collect rd beats (or feed wr beats), return (beats, status, cycles, reqs)."""
    a = dut.agcu
    ctx.set(a.iteration, iteration)
    ctx.set(a.start, 1)
    await ctx.tick()
    ctx.set(a.start, 0)
    got, reqs = [], []
    wr_i = 0
    for cyc in range(1, limit):
        rdy = int(rng.random() < rd_ready_prob) if rng else 1
        ctx.set(a.rd.ready, rdy)
        if wr_beats is not None and wr_i < len(wr_beats):
            ctx.set(a.wr.valid, 1)
            ctx.set(a.wr.payload, wr_beats[wr_i])
        else:
            ctx.set(a.wr.valid, 0)
        _, _, done, status, rv, rd, wrr, rq_v, rq_r, rq_a, rq_n = await ctx.tick().sample(
            a.done, a.status, a.rd.valid, a.rd.payload, a.wr.ready, a.mem.req.valid,
            a.mem.req.ready, a.mem.req.payload.addr, a.mem.req.payload.beats_m1)
        if rv and rdy:
            got.append(rd)
        if wrr and wr_beats is not None and wr_i < len(wr_beats):
            wr_i += 1
        if rq_v and rq_r:
            reqs.append((rq_a, rq_n + 1, cyc))
        if done:
            ctx.set(a.rd.ready, 0)
            ctx.set(a.wr.valid, 0)
            return got, status, cyc, reqs, wr_i
    raise AssertionError(f"AGCU not done after {limit} cycles")


def make(testbench):
    dut = Bench(P)
    sim = Simulator(dut)
    sim.add_clock(1e-9)
    result = {}

    async def tb(ctx):
        result.update(await testbench(ctx, dut) or {})
    sim.add_testbench(tb)
    sim.run()
    return result


def rand_mem(rng, n):
    return [rng.getrandbits(P.beat_bits) for _ in range(n)]


def test_register_map_and_2d_program():
    """A 2-D program with an iteration offset: exact requests (coalesced), exact data; writes
    to another unit id are ignored."""
    rng = random.Random(1)
    image = rand_mem(rng, 1024)
    base, counts, strides, it_stride, it = 100, [3, 2], [1, 10], 50, 2
    eff = base + it * it_stride
    addrs, _ = program_addresses(eff, counts, strides)

    async def tb(ctx, dut):
        await host_write(ctx, dut.host, 0, image)
        await configure(ctx, dut, mode=AgcuMode.READ, region=(0, 1024), base=base, counts=counts,
                        strides=strides, iter_stride=it_stride)
        # a write to another unit must not change this AGCU's BASE
        await cfg_write(ctx, dut.cfg, UNIT + 1, AgcuReg.BASE, 900)
        got, status, cyc, reqs, _ = await run_program(ctx, dut, iteration=it)
        return {"got": got, "status": status, "reqs": [(a, n) for a, n, _ in reqs]}

    r = make(tb)
    assert addrs == [200, 201, 202, 210, 211, 212]
    assert r["reqs"] == coalesce(addrs) == [(200, 3), (210, 2), (212, 1)]
    assert r["got"] == [image[a] for a in addrs]
    assert r["status"] == AgcuStatus.OK


def test_random_programs_with_backpressure():
    """Random 3-level programs (negative strides included) with random rd back-pressure."""
    rng = random.Random(7)
    image = rand_mem(rng, P.hbm_beats)
    region = (64, P.hbm_beats - 128)
    cases = []
    for _ in range(5):
        counts = [rng.randint(1, 9), rng.randint(1, 4), rng.randint(1, 3)]
        strides = [rng.choice([1, 1, 2, -1, 5]), rng.randint(-40, 40), rng.randint(-200, 200)]
        base = rng.randint(300, 700)
        cases.append((base, counts, strides))

    async def tb(ctx, dut):
        await host_write(ctx, dut.host, 0, image)
        out = []
        for base, counts, strides in cases:
            await configure(ctx, dut, mode=AgcuMode.READ, region=region, base=base,
                            counts=counts, strides=strides)
            got, status, _, reqs, _ = await run_program(ctx, dut, rd_ready_prob=0.4, rng=rng)
            out.append((got, status, [(a, n) for a, n, _ in reqs]))
        return {"out": out}

    r = make(tb)
    for (base, counts, strides), (got, status, reqs) in zip(cases, r["out"]):
        addrs, stopped = program_addresses(base, counts, strides, region)
        assert status == (AgcuStatus.OUT_OF_REGION if stopped else AgcuStatus.OK)
        assert reqs == coalesce(addrs), (base, counts, strides)
        assert got == [image[a] for a in addrs], (base, counts, strides)


def test_write_program_then_read_back():
    """WRITE mode: a strided program stores exactly the fabric's beats at its addresses."""
    rng = random.Random(3)
    beats = rand_mem(rng, 24)
    counts, strides, base = [4, 6], [1, 9], 301

    async def tb(ctx, dut):
        await configure(ctx, dut, mode=AgcuMode.WRITE, region=(256, 256), base=base,
                        counts=counts, strides=strides)
        _, status, _, reqs, taken = await run_program(ctx, dut, wr_beats=beats)
        mem = await host_read(ctx, dut.host, 256, 256)
        return {"status": status, "mem": mem, "taken": taken}

    r = make(tb)
    addrs, _ = program_addresses(base, counts, strides)
    expect = [0] * 256
    for a, b in zip(addrs, beats):
        expect[a - 256] = b
    assert r["status"] == AgcuStatus.OK and r["taken"] == len(beats)
    assert r["mem"] == expect


def test_out_of_region_read_and_write():
    """Read: data before the bad address delivered, then status 1 + done. Write: only in-region
    beats are taken and written; memory outside the region is untouched."""
    rng = random.Random(11)
    image = rand_mem(rng, 512)
    region = (128, 64)
    counts, strides, base = [10, 10], [1, 8], 150     # runs past 192 at the 6th row

    async def tb(ctx, dut):
        await host_write(ctx, dut.host, 0, image)
        await configure(ctx, dut, mode=AgcuMode.READ, region=region, base=base, counts=counts,
                        strides=strides)
        got, st_r, _, _, _ = await run_program(ctx, dut)
        await configure(ctx, dut, mode=AgcuMode.WRITE, region=region, base=base, counts=counts,
                        strides=strides)
        new = rand_mem(rng, 100)
        _, st_w, _, _, taken = await run_program(ctx, dut, wr_beats=new)
        mem = await host_read(ctx, dut.host, 0, 512)
        # negative address: below the region and below zero
        await configure(ctx, dut, mode=AgcuMode.READ, region=(0, 512), base=3, counts=[1, 3],
                        strides=[0, -2])
        got_neg, st_neg, _, _, _ = await run_program(ctx, dut)
        return {"got": got, "st_r": st_r, "st_w": st_w, "mem": mem, "taken": taken, "new": new,
                "got_neg": got_neg, "st_neg": st_neg}

    r = make(tb)
    addrs, stopped = program_addresses(base, counts, strides, region)
    assert stopped and 0 < len(addrs) < 100
    assert r["st_r"] == AgcuStatus.OUT_OF_REGION and r["got"] == [image[a] for a in addrs]
    assert r["st_w"] == AgcuStatus.OUT_OF_REGION and r["taken"] == len(addrs)
    expect = list(image)
    for a, b in zip(addrs, r["new"]):
        expect[a] = b
    assert r["mem"] == expect
    assert r["st_neg"] == AgcuStatus.OUT_OF_REGION and r["got_neg"] == [image[3], image[1]]


def test_bad_region_and_empty_program():
    async def tb(ctx, dut):
        await configure(ctx, dut, mode=AgcuMode.READ, region=(P.hbm_beats - 4, 8), base=P.hbm_beats - 4,
                        counts=[4], strides=[1])
        got, st_bad, cyc_bad, reqs_bad, _ = await run_program(ctx, dut)
        await configure(ctx, dut, mode=AgcuMode.READ, region=(0, 64), base=0, counts=[4, 0],
                        strides=[1, 1])
        got_e, st_e, cyc_e, reqs_e, _ = await run_program(ctx, dut)
        return {"bad": (got, st_bad, reqs_bad), "empty": (got_e, st_e, reqs_e), "cyc": (cyc_bad, cyc_e)}

    r = make(tb)
    assert r["bad"] == ([], AgcuStatus.BAD_REGION, [])
    assert r["empty"] == ([], AgcuStatus.OK, [])
    assert max(r["cyc"]) <= 4


def test_sequential_latency_and_throughput():
    """First request burst+3 cycles after start; a long sequential read runs at ~1 beat/cycle
    (all full bursts), busy high throughout, done exactly once."""
    n = 512
    rng = random.Random(2)
    image = rand_mem(rng, n)

    async def tb(ctx, dut):
        await host_write(ctx, dut.host, 0, image)
        await configure(ctx, dut, mode=AgcuMode.READ, region=(0, n), base=0, counts=[n],
                        strides=[1])
        got, st, cyc, reqs, _ = await run_program(ctx, dut)
        return {"got": got, "st": st, "cyc": cyc, "reqs": reqs}

    r = make(tb)
    assert r["got"] == image and r["st"] == AgcuStatus.OK
    assert all(k == BURST for _, k, _ in r["reqs"]) and len(r["reqs"]) == n // BURST
    assert r["reqs"][0][2] == BURST + 3
    # steady state: n beats + one read latency + row activation + pipeline, nothing more
    assert r["cyc"] <= n + P.hbm_read_latency + P.hbm_t_rcd + BURST + 12, r["cyc"]


def test_read_buffer_credits_bound_outstanding():
    """With rd never ready, the AGCU stops after exactly its read buffer's worth of beats."""
    n = 2 * agcu_read_buffer_beats(P)

    async def tb(ctx, dut):
        a = dut.agcu
        await configure(ctx, dut, mode=AgcuMode.READ, region=(0, n), base=0, counts=[n], strides=[1])
        ctx.set(a.rd.ready, 0)
        ctx.set(a.start, 1)
        await ctx.tick()
        ctx.set(a.start, 0)
        requested = 0
        for _ in range(400):
            _, _, v, r, k = await ctx.tick().sample(a.mem.req.valid, a.mem.req.ready,
                                                    a.mem.req.payload.beats_m1)
            if v and r:
                requested += k + 1
        return {"requested": requested, "busy": ctx.get(a.busy)}

    r = make(tb)
    assert r == {"requested": agcu_read_buffer_beats(P), "busy": 1}


def test_every_counter_register_is_configurable_by_bitstream():
    """The unit map sizes the AGCU's register space from AgcuReg: a bitstream programming the
    outermost counter must pass the config controller's range check (a 2-D program over
    row-major W depends on it), and one register past the map must not."""
    from hdl.params import DEFAULT_PARAMS as D
    from hdl.unitmap import regs_per_kind, unit_id
    from sw.bitstream import Bitstream, ConfigStatus, check
    assert regs_per_kind("agcu") == 0x10 + 2 * D.agcu_counters
    a = unit_id(D, "agcu", 1)
    last = agcu_stride_reg(D.agcu_counters - 1)
    ok = Bitstream.for_params(D, writes=[(a, agcu_count_reg(D.agcu_counters - 1), 3),
                                          (a, last, 64)]).to_bytes()
    assert check(ok, D) == ConfigStatus.OK
    bad = Bitstream.for_params(D, writes=[(a, last + 1, 0)]).to_bytes()
    assert check(bad, D) == ConfigStatus.REG_OUT_OF_RANGE

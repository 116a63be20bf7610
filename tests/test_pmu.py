"""Unit tests of the Pattern Memory Unit (hdl/pmu.py) in Amaranth's simulator.

Every test compares exact data against a numpy model of the scratchpad; stream drivers insert
random stalls on both sides (seeded).
"""

import itertools
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hdl.addrgen import AffineAddrGen
from hdl.params import RduParams
from hdl.pmu import Pmu, PmuConfig, PmuReg, PmuStatus, RdMode, pmu_depth

P = RduParams(pmu_bytes=2048)          # 32 beats x 16 banks: fast
L = P.lanes
UNIT = 5
M32 = 0xFFFFFFFF


def pack(words):
    v = 0
    for i, w in enumerate(words):
        v |= (int(w) & M32) << (32 * i)
    return v


def unpack(v):
    return [(v >> (32 * i)) & M32 for i in range(L)]


def chain_offsets(counts, strides):
    """Python model of the affine counter chain (counter 0 innermost)."""
    ranges = [range(max(1, c)) for c in reversed(counts)]
    out = []
    for idx in itertools.product(*ranges):
        out.append(sum(i * s for i, s in zip(reversed(idx), strides)))
    return out


# ---- simulation helpers ----------------------------------------------------------------------

async def cfg_write(ctx, dut, addr, value, unit=UNIT):
    ctx.set(dut.cfg.we, 1)
    ctx.set(dut.cfg.unit, unit)
    ctx.set(dut.cfg.addr, int(addr))
    ctx.set(dut.cfg.data, value & M32)
    await ctx.tick()
    ctx.set(dut.cfg.we, 0)


async def configure(ctx, dut, config, params=P, unit=UNIT):
    for a, v in config.writes(params):
        await cfg_write(ctx, dut, a, v, unit)


async def run(ctx, dut, iteration=0, timeout=5000):
    """Pulse start, wait for done; returns the cycle count from start to done."""
    ctx.set(dut.ctrl.iteration, iteration)
    ctx.set(dut.ctrl.start, 1)
    await ctx.tick()
    ctx.set(dut.ctrl.start, 0)
    for cyc in range(1, timeout):
        _, _, done = await ctx.tick().sample(dut.ctrl.done)
        if done:
            return cyc
    raise AssertionError(f"PMU not done after {timeout} cycles")


def sender(stream, items, rng=None, p_valid=1.0):
    async def proc(ctx):
        for cyc_item in items:
            while rng is not None and rng.random() > p_valid:
                await ctx.tick()
            ctx.set(stream.valid, 1)
            ctx.set(stream.payload, cyc_item)
            while True:
                _, _, ready = await ctx.tick().sample(stream.ready)
                if ready:
                    break
            ctx.set(stream.valid, 0)
    return proc


def receiver(stream, out, rng=None, p_ready=1.0, stamps=None):
    async def proc(ctx):
        cyc = 0
        while True:
            r = rng is None or rng.random() < p_ready
            ctx.set(stream.ready, r)
            _, _, v, d = await ctx.tick().sample(stream.valid, stream.payload)
            if r and v:
                out.append(d if len(stream.payload) else 1)
                if stamps is not None:
                    stamps.append(cyc)
            cyc += 1
    return proc


def token_receiver(stream, stamps):
    async def proc(ctx):
        ctx.set(stream.ready, 1)
        cyc = 0
        while True:
            _, _, v = await ctx.tick().sample(stream.valid)
            if v:
                stamps.append(cyc)
            cyc += 1
    return proc


def simulate(dut, main, background=()):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for b in background:
        sim.add_testbench(b, background=True)
    sim.add_testbench(main)
    sim.run()


# ---- address generator -----------------------------------------------------------------------

def test_addrgen_matches_model():
    rng = random.Random(1)
    dut = AffineAddrGen(3)
    cases = [([rng.randint(0, 4) for _ in range(3)], [rng.randint(-20, 20) for _ in range(3)])
             for _ in range(6)]

    async def main(ctx):
        for counts, strides in cases:
            for k in range(3):
                ctx.set(dut.counts[k], counts[k])
                ctx.set(dut.strides[k], strides[k])
            ctx.set(dut.restart, 1)
            await ctx.tick()
            ctx.set(dut.restart, 0)
            exp = chain_offsets(counts, strides)
            got = []
            for i in range(2 * len(exp)):          # wraps around: twice the sequence
                ctx.set(dut.next, rng.random() < 0.8)
                got_off, last, nxt = ctx.get(dut.offset), ctx.get(dut.last), ctx.get(dut.next)
                if nxt:
                    got.append((got_off, last))
                await ctx.tick()
            ctx.set(dut.next, 0)
            n = len(got)
            want = [(exp[i % len(exp)], (i % len(exp)) == len(exp) - 1) for i in range(n)]
            assert got == want, (counts, strides)

    simulate(dut, main)


# ---- write / read round trip -------------------------------------------------------------------

def random_program(rng, limit, n=3):
    """Random (base, counts, strides) whose offsets all lie in [0, limit)."""
    while True:
        counts = [rng.randint(1, 4) for _ in range(n)]
        strides = [rng.randint(-6, 6) for _ in range(n)]
        offs = chain_offsets(counts, strides)
        lo, hi = min(offs), max(offs)
        if hi - lo < limit:
            base = rng.randint(-lo, limit - 1 - hi)
            return base, counts, strides


@pytest.mark.parametrize("seed", [0, 1])
def test_affine_write_then_read(seed):
    rng = random.Random(seed)
    D = pmu_depth(P)
    dut = Pmu(P, UNIT)
    buf_base, buf_size = 4, 20
    iteration, it_stride = 2, 3
    wbase, wc, ws = random_program(rng, buf_size - iteration * it_stride)
    rbase, rc, rs = random_program(rng, buf_size - iteration * it_stride)
    woffs = [wbase + iteration * it_stride + o for o in chain_offsets(wc, ws)]
    roffs = [rbase + iteration * it_stride + o for o in chain_offsets(rc, rs)]
    data = [[rng.getrandbits(32) for _ in range(L)] for _ in woffs]
    model = np.zeros((D, L), np.uint64)
    for o, d in zip(woffs, data):
        model[buf_base + o] = d
    expect = [pack(model[buf_base + o]) for o in roffs]

    cfg = PmuConfig(sync=True, buf_base=buf_base, buf_size=buf_size, wr_passes=1, rd_passes=1,
                    wr_base=wbase, wr_iter_stride=it_stride, wr_counts=tuple(wc),
                    wr_strides=tuple(ws), rd_base=rbase, rd_iter_stride=it_stride,
                    rd_counts=tuple(rc), rd_strides=tuple(rs))
    got = []

    async def main(ctx):
        await configure(ctx, dut, cfg)
        await run(ctx, dut, iteration=iteration)
        assert ctx.get(dut.ctrl.status) == PmuStatus.OK
        assert got == expect

    simulate(dut, main, [sender(dut.win, [pack(d) for d in data], rng, 0.6),
                         receiver(dut.rout, got, rng, 0.6)])


def test_scalar_write_scalar_read_and_addr_stream():
    """Word-granular writes (swin) at data-dependent addresses (waddr), scalar reads (sout)."""
    rng = random.Random(7)
    dut = Pmu(P, UNIT)
    D = pmu_depth(P)
    n = 40
    pos = rng.sample(range(D * L // 2), n)             # waddr: word positions (random order)
    words = [rng.getrandbits(32) for _ in range(n)]
    model = np.zeros(D * L, np.uint64)
    for a, w in zip(pos, words):
        model[5 + a] = w
    rd = rng.sample(pos, 25)
    expect = [int(model[5 + a]) for a in rd]
    wcfg = PmuConfig(wr_scalar=True, wr_addr_stream=True, wr_passes=1, wr_base=5,
                     wr_counts=(n,), wr_strides=(0,))
    got = []

    async def main(ctx):
        await configure(ctx, dut, wcfg)
        await run(ctx, dut)
        # scalar reads: one program per address via SGATHER (idx = address), then SCALAR chain
        await configure(ctx, dut, PmuConfig(rd_mode=RdMode.SGATHER, rd_passes=1, rd_base=5,
                                            tbl_size=D * L, rd_counts=(len(rd),)))
        await run(ctx, dut)
        assert got == expect
        assert ctx.get(dut.ctrl.status) == PmuStatus.OK
        del got[:]
        await configure(ctx, dut, PmuConfig(rd_mode=RdMode.SCALAR, rd_passes=1, rd_base=5 + 3,
                                            rd_counts=(10, 2), rd_strides=(7, 1)))
        await run(ctx, dut)
        offs = [3 + o for o in chain_offsets((10, 2), (7, 1))]
        assert got == [int(model[5 + o]) for o in offs]

    simulate(dut, main, [sender(dut.swin, words, rng, 0.7), sender(dut.waddr, pos, rng, 0.7),
                         sender(dut.sidx, rd, rng, 0.7), receiver(dut.sout, got, rng, 0.7)])


def test_resident_vector_reread_latency_throughput():
    """x written once, re-read R times; without stalls 1 beat/cycle, latency 2 from issue."""
    rng = random.Random(3)
    dut = Pmu(P, UNIT)
    beats, R = 6, 4
    data = [pack([rng.getrandbits(32) for _ in range(L)]) for _ in range(beats)]
    got, ev = [], {}

    async def main(ctx):
        await configure(ctx, dut, PmuConfig.resident_vector(beats, R, base=10))
        # start, then check busy timing
        ctx.set(dut.ctrl.start, 1)
        _, _, busy0 = await ctx.tick().sample(dut.ctrl.busy)
        ctx.set(dut.ctrl.start, 0)
        assert not busy0 and ctx.get(dut.ctrl.busy)
        prev_busy = 1
        for _ in range(500):
            _, _, done, busy = await ctx.tick().sample(dut.ctrl.done, dut.ctrl.busy)
            if done:
                break
            assert busy
            prev_busy = busy
        assert done and prev_busy and not busy    # busy falls with done (one-cycle pulse)
        await ctx.tick()
        assert not ctx.get(dut.ctrl.done)
        assert got == data * R
        # back-to-back writes and reads, one beat per cycle each; the first read is issued the
        # cycle after the last write and is valid on rout 2 cycles later
        w, r = ev["win"], ev["rout"]
        assert w == list(range(w[0], w[0] + beats))
        assert r == list(range(w[-1] + 3, w[-1] + 3 + beats * R))

    simulate(dut, main, [sender(dut.win, data), receiver(dut.rout, got),
                         monitor(dut, ev, {"win": dut.win, "rout": dut.rout})])


# ---- gather ------------------------------------------------------------------------------------

def gather_groups(idx, base):
    """Cycles the PMU needs for one gather beat: max over banks of distinct rows wanted."""
    per_bank = {}
    for i in idx:
        w = base + i
        per_bank.setdefault(w % L, set()).add(w // L)
    return max(len(s) for s in per_bank.values())


def test_gather_lut_conflicts():
    rng = random.Random(11)
    dut = Pmu(P, UNIT)
    size, base = 200, 32                   # table of 200 words at word 32 (beat 2)
    table = [rng.getrandbits(32) for _ in range(size)]
    beats_in = [pack(table[i:i + L] + [0] * (L - len(table[i:i + L])))
                for i in range(0, size, L)]
    idxs = [
        list(range(L)),                                   # conflict-free
        [5] * L,                                          # broadcast of one word
        [L * k + 3 for k in range(L - 4)] + [0, 1, 2, 3],  # bank 3 x 13 rows
        [L * k for k in range(L)] if L * (L - 1) < size else [0] * L,
    ] + [[rng.randrange(size) for _ in range(L)] for _ in range(12)]
    expect = [pack([table[i] for i in ix]) for ix in idxs]
    got, gstamps, loaded = [], [], []

    async def main(ctx):
        await configure(ctx, dut, PmuConfig.lut(base, size))
        await run(ctx, dut)
        assert ctx.get(dut.ctrl.status) == PmuStatus.OK
        loaded.append(1)
        for _ in range(400):
            await ctx.tick()
            if len(got) == len(expect):
                break
        assert got == expect
        # throughput: gidx beat k+1 accepted exactly groups(k) cycles after beat k
        gaps = [b - a for a, b in zip(gstamps, gstamps[1:])]
        assert gaps == [gather_groups(ix, base) for ix in idxs[:-1]]

    async def gfeed(ctx):
        cyc = 0                     # offered from cycle 0: held until the table is loaded
        for ix in idxs:
            ctx.set(dut.gidx.valid, 1)
            ctx.set(dut.gidx.payload, pack(ix))
            while True:
                _, _, r = await ctx.tick().sample(dut.gidx.ready)
                cyc += 1
                if r:
                    gstamps.append(cyc)
                    break
        ctx.set(dut.gidx.valid, 0)

    simulate(dut, main, [sender(dut.win, beats_in, rng, 0.8), gfeed,
                         receiver(dut.rout, got, None, 1.0)])


def test_gather_random_stalls_and_scalar_gather():
    rng = random.Random(12)
    dut = Pmu(P, UNIT)
    size, base = 300, 37                  # unaligned base: loaded word by word from swin
    table = [rng.getrandbits(32) for _ in range(size)]
    idxs = [[rng.choice([rng.randrange(size), rng.randrange(8) * L]) for _ in range(L)]
            for _ in range(25)]
    sidx = [rng.randrange(size) for _ in range(30)]
    got, sgot, loaded = [], [], []

    async def main(ctx):
        await configure(ctx, dut, PmuConfig.lut(base, size, load="scalar"))
        await run(ctx, dut)
        loaded.append(1)
        for _ in range(1500):
            await ctx.tick()
            if len(got) == len(idxs):
                break
        assert got == [pack([table[i] for i in ix]) for ix in idxs]
        await configure(ctx, dut, PmuConfig.lut(base, size, scalar=True, load=None))
        for _ in range(500):
            await ctx.tick()
            if len(sgot) == len(sidx):
                break
        assert sgot == [table[i] for i in sidx]
        assert ctx.get(dut.ctrl.status) == PmuStatus.OK

    async def gfeed(ctx):
        while not loaded:
            await ctx.tick()
        await sender(dut.gidx, [pack(ix) for ix in idxs], rng, 0.7)(ctx)

    async def sfeed(ctx):
        while len(got) < len(idxs):
            await ctx.tick()
        await ctx.tick().repeat(40)
        await sender(dut.sidx, sidx, rng, 0.7)(ctx)

    simulate(dut, main, [sender(dut.swin, table, rng, 0.8), gfeed, sfeed,
                         receiver(dut.rout, got, rng, 0.5), receiver(dut.sout, sgot, rng, 0.5)])


# ---- N-buffering -------------------------------------------------------------------------------

def monitor(dut, events, signals):
    """Record, per cycle, which of the named (valid, ready) pairs transferred."""
    names = list(signals)

    async def proc(ctx):
        cyc = 0
        flat = [s for n in names for s in (signals[n].valid, signals[n].ready)]
        while True:
            vals = (await ctx.tick().sample(*flat))[2:]
            for k, n in enumerate(names):
                if vals[2 * k] and vals[2 * k + 1]:
                    events.setdefault(n, []).append(cyc)
            cyc += 1
    return proc


@pytest.mark.parametrize("n_buf,seed", [(2, 0), (3, 1), (1, 2)])
def test_multi_buffer_random_stalls(n_buf, seed):
    rng = random.Random(seed)
    dut = Pmu(P, UNIT)
    bpb, passes, repeat = 4, 6, 2
    data = [pack([rng.getrandbits(32) for _ in range(L)]) for _ in range(bpb * passes)]
    expect = [b for k in range(passes) for _ in range(repeat) for b in data[k * bpb:(k + 1) * bpb]]
    cfg = PmuConfig.double_buffer(bpb, n_buf, passes, repeat, base=3, full_tokens=True,
                                  empty_tokens=True)
    got, ev = [], {}

    async def main(ctx):
        await configure(ctx, dut, cfg)
        await run(ctx, dut)
        assert ctx.get(dut.ctrl.status) == PmuStatus.OK
        await ctx.tick()
        assert got == expect
        assert len(ev["full"]) == passes and len(ev["empty"]) == passes
        # no buffer written before it was freed: a write at cycle c needs enough free tokens
        # (a token is visible the cycle after the buffer became free, the earliest cycle the
        # producer may use it)
        for n, c in enumerate(ev["win"]):
            freed = sum(1 for t in ev["empty"] if t <= c)
            assert n // bpb < freed + n_buf, (n, c)
        # a buffer is read only after its full token (full visible one cycle after the write)
        for n, c in enumerate(ev["rout"]):
            k = n // (bpb * repeat)
            assert sum(1 for t in ev["full"] if t <= c) > k
        if n_buf > 1:   # the producer really ran ahead: pass k+1 written while k is read
            assert any(ev["win"][(k + 1) * bpb] < ev["rout"][(k + 1) * bpb * repeat - 1]
                       for k in range(passes - 1))

    sigs = {"win": dut.win, "rout": dut.rout, "full": dut.ctl_out[0], "empty": dut.ctl_out[1]}
    simulate(dut, main, [sender(dut.win, data, rng, 0.5), receiver(dut.rout, got, rng, 0.5),
                         receiver(dut.ctl_out[0], [], None), receiver(dut.ctl_out[1], [], None),
                         monitor(dut, ev, sigs)])


def test_external_full_and_free_tokens():
    """FULL_EXT/FREE_EXT: buffers become full/free only on ctl_in tokens, sent late here."""
    rng = random.Random(5)
    dut = Pmu(P, UNIT)
    bpb, passes, n_buf = 3, 4, 2
    data = [pack([rng.getrandbits(32) for _ in range(L)]) for _ in range(bpb * passes)]
    cfg = PmuConfig.double_buffer(bpb, n_buf, passes, full_ext=True, free_ext=True,
                                  empty_tokens=True)
    got, ev = [], {}
    delay = 15

    async def main(ctx):
        await configure(ctx, dut, cfg)
        await run(ctx, dut)
        assert got == data
        assert ctx.get(dut.ctrl.status) == PmuStatus.OK
        assert len(ev["xfull"]) == passes and len(ev["xfree"]) == passes
        assert ev["empty"] == [t + 1 for t in ev["xfree"]]    # FREE only on the external token
        for k in range(passes):
            # reading of buffer k starts after its external full token
            assert ev["rout"][k * bpb] > ev["xfull"][k] + 2
            # the external full token is taken only after the write side finished the buffer
            assert ev["xfull"][k] > ev["win"][(k + 1) * bpb - 1]
            if k + n_buf < passes:   # buffer reused only after the external free token
                assert ev["win"][(k + n_buf) * bpb] > ev["xfree"][k]

    async def tokens(ctx):
        # full token k: offered `delay` cycles after the k-th buffer's last write;
        # free token k: `delay` cycles after the k-th buffer's last beat left on rout.
        cyc, sent_full, sent_free = 0, 0, 0
        while sent_free < passes:
            w, r = len(ev.get("win", [])), len(ev.get("rout", []))
            want_full = sent_full < passes and w >= (sent_full + 1) * bpb and \
                cyc >= ev["win"][(sent_full + 1) * bpb - 1] + delay
            want_free = r >= (sent_free + 1) * bpb and \
                cyc >= ev["rout"][(sent_free + 1) * bpb - 1] + delay
            ctx.set(dut.ctl_in[0].valid, want_full)
            ctx.set(dut.ctl_in[1].valid, want_free)
            _, _, r0, r1 = await ctx.tick().sample(dut.ctl_in[0].ready, dut.ctl_in[1].ready)
            sent_full += bool(want_full and r0)
            sent_free += bool(want_free and r1)
            cyc += 1
        ctx.set(dut.ctl_in[0].valid, 0)
        ctx.set(dut.ctl_in[1].valid, 0)

    sigs = {"win": dut.win, "rout": dut.rout, "xfull": dut.ctl_in[0], "xfree": dut.ctl_in[1],
            "empty": dut.ctl_out[1]}
    simulate(dut, main, [sender(dut.win, data, rng, 0.8), receiver(dut.rout, got, rng, 0.8),
                         receiver(dut.ctl_out[1], [], None), tokens, monitor(dut, ev, sigs)])


# ---- errors, unit id, control ------------------------------------------------------------------

async def dump(ctx, dut, got, params=P):
    """Read the whole scratchpad as beats (flat program) into ``got``; returns beats list."""
    d = pmu_depth(params)
    del got[:]
    await configure(ctx, dut, PmuConfig(rd_passes=1, rd_counts=(d,), rd_strides=(1,)), params)
    await run(ctx, dut)
    return list(got)


def test_out_of_range_write_read_and_index():
    rng = random.Random(9)
    dut = Pmu(P, UNIT)
    D = pmu_depth(P)
    data = [pack([rng.getrandbits(32) for _ in range(L)]) for _ in range(6)]
    got = []

    async def main(ctx):
        # buffer at beats 8..11; the write program runs 6 beats: offsets 4, 5 are outside
        await configure(ctx, dut, PmuConfig(buf_base=8, buf_size=4, wr_passes=1,
                                            wr_counts=(6,), wr_strides=(1,)))
        await run(ctx, dut)
        assert ctx.get(dut.ctrl.status) == PmuStatus.WR_OOB
        mem = await dump(ctx, dut, got)
        assert ctx.get(dut.ctrl.status) == PmuStatus.OK
        assert mem == [0] * 8 + data[:4] + [0] * (D - 12)
        # negative offset via base
        await configure(ctx, dut, PmuConfig(buf_base=8, buf_size=4, wr_passes=1, wr_base=-1,
                                            wr_counts=(1,)))
        await run(ctx, dut)
        assert ctx.get(dut.ctrl.status) == PmuStatus.WR_OOB
        # read outside the buffer: zeros for the outside beats, RD_OOB
        del got[:]
        await configure(ctx, dut, PmuConfig(buf_base=8, buf_size=4, rd_passes=1, rd_base=2,
                                            rd_counts=(4,), rd_strides=(1,)))
        await run(ctx, dut)
        assert ctx.get(dut.ctrl.status) == PmuStatus.RD_OOB
        assert got == [data[2], data[3], 0, 0]
        # gather: table of 20 words at word 128 (beat 8); indices >= 20 give 0 and IDX_OOB
        del got[:]
        words = [w for b in data[:4] for w in unpack(b)]
        ix = [0, 19, 20, 5, 1000, 3, 21, 7, 8, 9, 10, 11, 12, 13, 14, M32]
        await configure(ctx, dut, PmuConfig(rd_mode=RdMode.GATHER, rd_passes=1, rd_base=128,
                                            tbl_size=20))
        await run(ctx, dut)
        assert ctx.get(dut.ctrl.status) == PmuStatus.IDX_OOB
        assert got == [pack([words[i] if i < 20 else 0 for i in ix])]
        # scalar gather inside the table but outside the scratchpad region: RD_OOB
        await configure(ctx, dut, PmuConfig(rd_mode=RdMode.SGATHER, rd_passes=1,
                                            rd_base=D * L - 2, tbl_size=100))
        await run(ctx, dut)
        assert ctx.get(dut.ctrl.status) == PmuStatus.RD_OOB

    async def feed(ctx):
        await sender(dut.win, data, None)(ctx)
        await sender(dut.win, [data[5]], None)(ctx)

    simulate(dut, main, [feed, receiver(dut.rout, got, None),
                         sender(dut.gidx, [pack([0, 19, 20, 5, 1000, 3, 21, 7, 8, 9, 10, 11, 12,
                                                 13, 14, M32])]),
                         sender(dut.sidx, [5]), receiver(dut.sout, [], None)])


BAD_CONFIGS = [dict(n_buf=0), dict(n_buf=5), dict(buf_size=0), dict(buf_base=30, buf_size=4),
               dict(sync=True, wr_passes=1, rd_passes=2),                  # reader would starve
               dict(sync=True, wr_passes=4, rd_passes=1, n_buf=2, buf_size=4)]  # writer would block


def test_bad_config():
    dut = Pmu(P, UNIT)

    async def main(ctx):
        for bad in BAD_CONFIGS:
            kw = dict(wr_passes=1, wr_counts=(2,), wr_strides=(1,))
            kw.update(bad)
            await configure(ctx, dut, PmuConfig(**kw))
            cycles = await run(ctx, dut, timeout=10)
            assert cycles == 2, bad        # start in s, busy in s+1, done in s+2: nothing ran
            assert ctx.get(dut.ctrl.status) == PmuStatus.BAD_CONFIG, bad
            assert not ctx.get(dut.win.ready)
        # a good empty program also takes 2 cycles and clears the status
        await configure(ctx, dut, PmuConfig())
        assert await run(ctx, dut, timeout=10) == 2
        assert ctx.get(dut.ctrl.status) == PmuStatus.OK

    simulate(dut, main, [sender(dut.win, [1, 2], None)])


def test_other_unit_ignored_and_start_while_busy():
    rng = random.Random(4)
    dut = Pmu(P, UNIT)
    beats, R = 3, 2
    data = [pack([rng.getrandbits(32) for _ in range(L)]) for _ in range(beats)]
    got = []

    async def main(ctx):
        await configure(ctx, dut, PmuConfig.resident_vector(beats, R))
        # writes addressed to other units must not change anything
        for other in (UNIT - 1, UNIT + 1, 0xFF):
            await configure(ctx, dut, PmuConfig.resident_vector(beats + 1, R + 3, base=7),
                            unit=other)
        ctx.set(dut.ctrl.start, 1)
        await ctx.tick()
        ctx.set(dut.ctrl.start, 0)
        dones = 0
        for cyc in range(200):
            if cyc == 5:                     # start while busy: ignored
                ctx.set(dut.ctrl.start, 1)
                ctx.set(dut.ctrl.iteration, 3)
            if cyc == 6:
                ctx.set(dut.ctrl.start, 0)
            _, _, done = await ctx.tick().sample(dut.ctrl.done)
            dones += done
        assert dones == 1
        assert got == data * R
        assert ctx.get(dut.ctrl.status) == PmuStatus.OK

    simulate(dut, main, [sender(dut.win, data, rng, 0.3), receiver(dut.rout, got, rng, 0.5)])


def test_default_size_double_buffer_and_gather():
    """Full 16 KiB PMU: buffers at the top of the scratchpad, gather up to the last word."""
    p = RduParams()
    D = pmu_depth(p)
    assert D == 256
    rng = random.Random(21)
    dut = Pmu(p, UNIT)
    bpb, passes = 40, 3
    base = D - 2 * bpb
    data = [pack([rng.getrandbits(32) for _ in range(L)]) for _ in range(bpb * passes)]
    got = []
    ix = [[rng.randrange(2 * bpb * L) for _ in range(L)] for _ in range(4)]
    ix[0][0] = 2 * bpb * L - 1               # last word of the scratchpad

    async def main(ctx):
        await configure(ctx, dut, PmuConfig.double_buffer(bpb, 2, passes, base=base), p)
        await run(ctx, dut)
        assert got == data
        # the last two passes are now in the two buffers: gather from them as one table
        del got[:]
        mem = np.zeros(D * L, np.uint64)
        for k in (1, 2):
            slot = base + (k % 2) * bpb
            for j in range(bpb):
                mem[(slot + j) * L:(slot + j + 1) * L] = unpack(data[k * bpb + j])
        await configure(ctx, dut, PmuConfig(rd_mode=RdMode.GATHER, rd_passes=1,
                                            rd_counts=(len(ix),), rd_base=base * L,
                                            tbl_size=2 * bpb * L), p)
        await run(ctx, dut)
        assert ctx.get(dut.ctrl.status) == PmuStatus.OK
        assert got == [pack([mem[base * L + i] for i in row]) for row in ix]

    async def gfeed(ctx):
        while len(got) < len(data):
            await ctx.tick()
        await sender(dut.gidx, [pack(r) for r in ix], rng, 0.7)(ctx)

    simulate(dut, main, [sender(dut.win, data, rng, 0.9), receiver(dut.rout, got, rng, 0.9),
                         gfeed])


def test_latencies():
    """Documented latencies: start (s) -> first vector read issued s+1, rout valid s+3;
    sidx accepted t -> sout valid t+2; gidx accepted t -> rout valid t+k+2 (k groups)."""
    dut = Pmu(P, UNIT)
    ev = {}

    async def main(ctx):
        await configure(ctx, dut, PmuConfig(rd_passes=1, rd_counts=(3,), rd_strides=(1,)))
        cycles = await run(ctx, dut)
        s = ev["start"][-1]
        assert ev["rout"] == [s + 3, s + 4, s + 5]
        assert cycles == 7                           # done 2 cycles after the last rout beat
        await configure(ctx, dut, PmuConfig(rd_mode=RdMode.SGATHER, rd_passes=1,
                                            rd_counts=(2,), tbl_size=100))
        await run(ctx, dut)
        assert ev["sout"] == [t + 2 for t in ev["sidx"]]
        await configure(ctx, dut, PmuConfig(rd_mode=RdMode.GATHER, rd_passes=1,
                                            rd_counts=(2,), tbl_size=100))
        await run(ctx, dut)
        t0, t1 = ev["gidx"]
        assert t1 == t0 + 3                          # first beat: 3 conflict groups
        assert ev["rout"][3:] == [t0 + 3 + 2, t1 + 1 + 2]

    sigs = {n: getattr(dut, n) for n in ("rout", "sout", "sidx", "gidx")}

    class Start:
        valid, ready = dut.ctrl.start, dut.ctrl.start
    sigs["start"] = Start
    simulate(dut, main, [monitor(dut, ev, sigs), receiver(dut.rout, [], None),
                         receiver(dut.sout, [], None),
                         sender(dut.sidx, [1, 2]),
                         sender(dut.gidx, [pack([0, 16, 32] + [1] * 13), pack(list(range(16)))])])

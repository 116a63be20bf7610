"""Unit tests of the PCU (``hdl/pcu.py``) and its FU (``hdl/fu.py``) in Amaranth's simulator.

References are :mod:`sw.intops` (bit-exact). Streams are driven with random gaps and random
back-pressure from seeded generators; every comparison is exact.
"""

import dataclasses
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hdl.fu import Fu, FuOp, OutBits, fu_op_eval
from hdl.pcu import (AccOp, PCU_N_REGS, Pcu, PcuConfig, PcuReg, Red, Src, TokSrc,
                     pcu_geometry)
from hdl.params import RduParams
from sw import intops as I

P4 = RduParams(lanes=4, hbm_bytes_per_cycle=16, hbm_row_bytes=1024)   # 4 lanes: fast tests
P16 = RduParams()
UNIT = 5


# ---------------------------------------------------------------------------------------------
# harness
# ---------------------------------------------------------------------------------------------


async def configure_and_start(ctx, dut, writes):
    """Replay ``(register, value)`` writes on the config bus (a value may be ``(value, unit)``
    to address another unit), then pulse ``start`` on an idle PCU."""
    for addr, val in writes:
        data, unit = val if isinstance(val, tuple) else (val, UNIT)
        ctx.set(dut.cfg.we, 1)
        ctx.set(dut.cfg.unit, unit)
        ctx.set(dut.cfg.addr, int(addr))
        ctx.set(dut.cfg.data, data)
        await ctx.tick()
    ctx.set(dut.cfg.we, 0)
    assert not ctx.get(dut.ctrl.busy)
    ctx.set(dut.ctrl.start, 1)
    await ctx.tick()
    ctx.set(dut.ctrl.start, 0)

def pack(values, bits):
    """Pack signed ints, element e at bits [e*bits, (e+1)*bits)."""
    out = 0
    for e, v in enumerate(values):
        out |= (int(v) & ((1 << bits) - 1)) << (e * bits)
    return out


def unpack(word, bits, n):
    vals = []
    for e in range(n):
        v = (word >> (e * bits)) & ((1 << bits) - 1)
        vals.append(v - (1 << bits) if v >> (bits - 1) else v)
    return vals


class Program:
    """One PCU program and what came out of it."""

    def __init__(self, writes, vin=(), sin=(), ctl_in=(0, 0), params=None):
        self.params = params
        self.writes = list(writes)
        self.vin = [list(v) for v in vin]
        self.sin = [list(x) for x in sin]
        self.ctl_in = ctl_in
        self.vout, self.sout, self.tokens = [], [], [[], []]
        self.cycles = None
        self.busy_trace = []
        self.done_pulses = 0


def run_programs(params, programs, seed=0, gap=0.0, ready=1.0, ctl_out_ready=1.0,
                 timeout=20000):
    """Run ``programs`` one after the other on one simulated PCU (one elaboration).

    Each program: config writes (a value may be ``(data, unit)`` to write another unit id),
    a ``start`` pulse, then its vin/sin/ctl_in items are offered with random gaps while the
    sinks take vout/sout/ctl_out with random readiness; outputs are recorded per program
    (a program's outputs must all arrive before its ``done``).
    """
    dut = Pcu(params, UNIT)
    for prog in programs:
        prog.params = params
    rng = random.Random(seed)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    cur = [-1]
    cycle = [0]

    def source(port, k, kind):
        async def proc(ctx):
            for idx, prog in enumerate(programs):
                while cur[0] < idx:
                    await ctx.tick()
                items = (prog.vin if kind == "v" else prog.sin if kind == "s"
                         else [[None] * prog.ctl_in[0], [None] * prog.ctl_in[1]])
                for item in (items[k] if k < len(items) else []):
                    while rng.random() < gap:
                        await ctx.tick()
                    ctx.set(port.valid, 1)
                    if item is not None:
                        ctx.set(port.payload, item)
                    await ctx.tick().until(port.ready)
                    ctx.set(port.valid, 0)
        return proc

    def sink(port, attr, p_ready):
        async def proc(ctx):
            while True:
                r = rng.random() < p_ready
                ctx.set(port.ready, r)
                _, _, v, d = await ctx.tick().sample(port.valid, port.payload)
                if v and r:
                    getattr(programs[cur[0]], attr).append(d)
        return proc

    def tok_sink(j):
        async def proc(ctx):
            while True:
                r = rng.random() < ctl_out_ready
                ctx.set(dut.ctl_out[j].ready, r)
                _, _, v = await ctx.tick().sample(dut.ctl_out[j].valid)
                if v and r:
                    programs[cur[0]].tokens[j].append(cycle[0])
        return proc

    async def main(ctx):
        for idx, prog in enumerate(programs):
            cur[0] = idx
            await configure_and_start(ctx, dut, prog.writes)
            t0 = cycle[0]
            for _ in range(timeout):
                _, _, busy, done = await ctx.tick().sample(dut.ctrl.busy, dut.ctrl.done)
                prog.busy_trace.append(busy)
                if done:
                    prog.done_pulses += 1
                    prog.cycles = cycle[0] - t0
                    break
            else:
                raise AssertionError(f"program {idx}: PCU did not finish (timeout)")
            for _ in range(12):     # quiet afterwards: no output, no busy, no second done
                _, _, busy, done, vv, sv = await ctx.tick().sample(
                    dut.ctrl.busy, dut.ctrl.done, dut.vout.valid, dut.sout.valid)
                assert not (busy or done or vv or sv)

    async def clock(ctx):
        while True:
            await ctx.tick()
            cycle[0] += 1

    sim.add_testbench(main)
    sim.add_testbench(clock, background=True)
    for k in range(len(dut.vin)):
        sim.add_testbench(source(dut.vin[k], k, "v"), background=True)
    for k in range(len(dut.sin)):
        sim.add_testbench(source(dut.sin[k], k, "s"), background=True)
    for j in range(2):
        sim.add_testbench(source(dut.ctl_in[j], j, "t"), background=True)
        sim.add_testbench(tok_sink(j), background=True)
    sim.add_testbench(sink(dut.vout, "vout", ready), background=True)
    sim.add_testbench(sink(dut.sout, "sout", ready), background=True)
    sim.run()
    return programs


def s32(v):
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


# ---------------------------------------------------------------------------------------------
# GEMV
# ---------------------------------------------------------------------------------------------

def gemv_streams(p, w, x):
    """Beats of W (row-major, 4*lanes int8 per beat) and of x re-sent per row."""
    L = p.lanes
    rows, cols = w.shape
    per = 4 * L
    nb = cols // per
    wb = [pack(w[r, b * per:(b + 1) * per], 8) for r in range(rows) for b in range(nb)]
    xb = [pack(x[b * per:(b + 1) * per], 8) for b in range(nb)] * rows
    return wb, xb, nb


def vout_elems(prog, bits):
    per = prog.params.beat_bits // bits
    out = []
    for d in prog.vout:
        out += unpack(d, bits, per)
    return out


def check_control(prog):
    assert prog.done_pulses == 1
    assert all(prog.busy_trace), "busy must stay high from start until done"


# ---------------------------------------------------------------------------------------------
# FU ops
# ---------------------------------------------------------------------------------------------

EDGE = [0, 1, -1, 2, -2, 127, -128, 255, 0x7FFF, -0x8000, 0x7FFFFFFF, -0x80000000, 0x80808080,
        0x7F7F7F7F, 0x01FF80FE]


def test_fu_ops_vs_intops():
    """Every FU op on edge values and seeded random words, against sw.intops (via fu_op_eval)."""
    fu = Fu()
    sim = Simulator(fu)
    rng = random.Random(123)
    bad = []
    count = [0]

    def cases(op):
        for a in EDGE:
            for b in (EDGE if op not in (FuOp.REQUANT,) else [0, 1, 0x7FFF, 31 << 16 | 0x4000]):
                yield a, b, rng.choice([0, 1, 3])
        for _ in range(80):
            a = rng.getrandbits(32)
            b = rng.getrandbits(32)
            c = rng.choice([0, rng.getrandbits(32), rng.getrandbits(5)])
            if op == FuOp.REQUANT:
                b = rng.getrandbits(6) << 16 | rng.getrandbits(15)
                c = rng.choice([0, rng.getrandbits(5)])
            if op in (FuOp.SHR_ROUND, FuOp.SHL):
                b = rng.choice([b, rng.getrandbits(6)])
            if op == FuOp.SHLR:
                b = rng.randint(-40, 40)
            yield a, b, c

    async def tb(ctx):
        for op in FuOp:
            for a, b, c in cases(op):
                bits = rng.choice([8, 16, 32])
                ctx.set(fu.op, op)
                ctx.set(fu.a, a & 0xFFFFFFFF)
                ctx.set(fu.b, b & 0xFFFFFFFF)
                ctx.set(fu.c, c & 0xFFFFFFFF)
                ctx.set(fu.bits, OutBits.of(bits))
                got = s32(ctx.get(fu.r))
                exp = fu_op_eval(op, a, b, c, bits)
                count[0] += 1
                if got != exp:
                    bad.append((op.name, a, b, c, bits, got, exp))

    sim.add_testbench(tb)
    sim.run()
    assert count[0] > 16 * 250
    assert not bad, bad[:5]


def test_fu_reference_spot_checks():
    """fu_op_eval itself against hand-computed intops values (ties, saturation, unsigned)."""
    assert fu_op_eval(FuOp.SHR_ROUND, -5, 1) == -2 and fu_op_eval(FuOp.SHR_ROUND, 5, 1) == 3
    assert fu_op_eval(FuOp.REQUANT, 1000, 3 | 2 << 16, 0, 8) == int(I.requant(1000, 3, 2, 8))
    assert fu_op_eval(FuOp.REQUANT, -7, 1 | 1 << 16, 0, 8) == -3           # -3.5 -> -3
    assert fu_op_eval(FuOp.REQUANT, 1 << 30, 0x7FFF, 0, 16) == 32767
    assert fu_op_eval(FuOp.REQUANT, 100, 1 | 3 << 16, 2, 32) == int(I.rshift_round(100, 5))
    assert fu_op_eval(FuOp.DP4U, pack([-1, 2, -3, 4], 8), pack([255, 1, 2, 3], 8)) == \
        -255 + 2 - 6 + 12
    assert fu_op_eval(FuOp.DP4, pack([-1, 2, -3, 4], 8), pack([-1, 1, 2, 3], 8), 10) == \
        1 + 2 - 6 + 12 + 10
    assert fu_op_eval(FuOp.ADD_SAT, 30000, 10000, 0, 16) == 32767
    assert fu_op_eval(FuOp.CLZ, 1) == 31 and fu_op_eval(FuOp.CLZ, 0) == 32
    assert fu_op_eval(FuOp.SHLR, 1000, -3) == 8000 and fu_op_eval(FuOp.SHLR, -1000, 3) == -125


# ---------------------------------------------------------------------------------------------
# GEMV
# ---------------------------------------------------------------------------------------------

def gemv_program(p, rng, rows, nb, out_bits=8, x_reuse=False):
    per = 4 * p.lanes
    w = rng.integers(-128, 128, (rows, per * nb)).astype(np.int8)
    x = rng.integers(-128, 128, per * nb).astype(np.int8)
    ms = [I.quantize_multiplier(r) for r in rng.uniform(1e-4, 3e-3, rows)]
    m = np.array([a for a, _ in ms])
    s = np.array([b for _, b in ms])
    wb, xb, _ = gemv_streams(p, w, x)
    if x_reuse:
        xb = xb[:1]
    cfg = PcuConfig.gemv(p, rows, nb, out_bits=out_bits, scales_from_sin=True, sout=True,
                         x_reuse=x_reuse)
    scal = [PcuConfig.requant_word(int(a), int(b)) for a, b in zip(m, s)]
    exp = I.requant(I.gemv(w, x), m, s, out_bits)
    return Program(cfg.writes(), vin=[wb, xb], sin=[scal]), exp


def check_gemv(prog, exp, bits):
    per = prog.params.beat_bits // bits
    rows = len(exp)
    n_vec = -(-rows // per)
    assert len(prog.vout) == n_vec
    assert vout_elems(prog, bits) == list(exp) + [0] * (n_vec * per - rows)   # zero-filled tail
    assert [s32(d) for d in prog.sout] == [int(v) for v in exp]
    check_control(prog)


@pytest.mark.parametrize("seed,gap,ready", [(1, 0.0, 1.0), (2, 0.4, 0.5), (3, 0.15, 0.3)])
def test_gemv_lanes4(seed, gap, ready):
    """GEMV programs back to back on one PCU, with random input gaps and output back-pressure:
    several row/beat counts, int8/int16/int32 packing, x re-sent per row or reused."""
    p = P4
    rng = np.random.default_rng(seed)
    specs = [(13, 3, 8, False), (5, 1, 32, True), (18, 2, 16, False), (1, 1, 8, False)]
    progs, exps = [], []
    for rows, nb, bits, reuse in specs:
        prog, exp = gemv_program(p, rng, rows, nb, bits, reuse)
        progs.append(prog)
        exps.append(exp)
    run_programs(p, progs, seed=seed, gap=gap, ready=ready)
    for prog, exp, (_, _, bits, _) in zip(progs, exps, specs):
        assert np.sum((exp > I.qmin(bits)) & (exp < I.qmax(bits))) > len(exp) // 2
        check_gemv(prog, exp, bits)
    if gap == 0.0 and ready == 1.0:
        # full rate: 13 rows x 3 beats enter in 39 consecutive cycles
        assert progs[0].cycles <= 39 + 20


# ---------------------------------------------------------------------------------------------
# elementwise patterns: operand routing, accumulators, unpack / pack
# ---------------------------------------------------------------------------------------------

def routing_program(p, rng):
    """Every stage used, every operand source kind, a MAX accumulator over groups of 3 beats."""
    L = p.lanes
    nbeats = 9
    a = rng.integers(-(1 << 20), 1 << 20, (nbeats, L))
    rq = [[PcuConfig.requant_word(int(rng.integers(0, 1 << 15)), int(rng.integers(0, 12)))
           for _ in range(L)] for _ in range(nbeats)]
    s0 = rng.integers(-1000, 1000, nbeats)
    s1 = rng.choice([0, 1, 3], nbeats)
    c = PcuConfig(p).counters(3, 3)
    c.vin(0).vin(1).sin(0).sin(1)
    c.stage(0, FuOp.SUB, Src.VIN0, Src.SIN0)
    c.stage(1, FuOp.MUL, Src.PREV, Src.SIN1, Src.IMM, imm=7)
    c.stage(2, FuOp.MAX, Src.PREV, Src.IMM, imm=-1000)
    c.stage(3, FuOp.REQUANT, Src.PREV, Src.VIN1, Src.SIN1, bits=16)
    c.stage(4, FuOp.PASS, acc_op=AccOp.MAX, acc_level=1)
    c.stage(5, FuOp.SELECT, Src.PREV, Src.VIN0, Src.SIN1)
    c.emit(0).reduce(Red.OFF).output(vout=True, pack_bits=32)
    exp = []
    acc = [0] * L
    for b in range(nbeats):
        row = []
        for i in range(L):
            v = fu_op_eval(FuOp.SUB, int(a[b, i]), int(s0[b]))
            v = fu_op_eval(FuOp.MUL, v, int(s1[b]), 7)
            v = fu_op_eval(FuOp.MAX, v, -1000)
            v = fu_op_eval(FuOp.REQUANT, v, rq[b][i], int(s1[b]), 16)
            acc[i] = v if b % 3 == 0 else max(acc[i], v)
            row.append(fu_op_eval(FuOp.SELECT, acc[i], int(a[b, i]), int(s1[b])))
        exp += row
    prog = Program(c.writes(), vin=[[pack(r, 32) for r in a], [pack(r, 32) for r in rq]],
                   sin=[[int(v) & 0xFFFFFFFF for v in s0], [int(v) for v in s1]])
    return prog, exp, 32


def rope_like_program(p, rng):
    """MAC over 2-beat groups (emit level 1), then REQUANT to int8, packed 4 per lane."""
    L = p.lanes
    groups = 6
    x = rng.integers(-(1 << 15), 1 << 15, (groups, 2, L))
    t = rng.integers(-(1 << 14), 1 << 14, (groups, 2, L))
    m, s = 21000, 28
    c = PcuConfig(p).counters(2, groups)
    c.vin(0).vin(1)
    c.stage(0, FuOp.MUL, Src.VIN0, Src.VIN1, acc_op=AccOp.SUM, acc_level=1)
    c.stage(1, FuOp.REQUANT, Src.PREV, Src.IMM, imm=PcuConfig.requant_word(m, s), bits=8)
    c.emit(1).reduce(Red.OFF).output(vout=True, pack_bits=8)
    y = I.requant(I.check_range(x[:, 0] * t[:, 0] + x[:, 1] * t[:, 1], 32), m, s, 8)
    vin0 = [pack(x[g, j], 32) for g in range(groups) for j in range(2)]
    vin1 = [pack(t[g, j], 32) for g in range(groups) for j in range(2)]
    return Program(c.writes(), vin=[vin0, vin1]), y.reshape(-1).tolist(), 8


def residual_program(p, rng):
    """int16 residual add_sat on packed int16 vectors: unpack 16 -> ADD_SAT -> pack 16."""
    dim = 8 * p.lanes
    x = rng.integers(-(1 << 15), 1 << 15, dim)
    y = rng.integers(-(1 << 15), 1 << 15, dim)
    per = 2 * p.lanes
    c = PcuConfig(p).counters(dim // p.lanes)
    c.vin(0, unpack=16).vin(1, unpack=16)
    c.stage(0, FuOp.ADD_SAT, Src.VIN0, Src.VIN1, bits=16)
    c.emit(0).reduce(Red.OFF).output(vout=True, pack_bits=16)
    vx = [pack(x[i:i + per], 16) for i in range(0, dim, per)]
    vy = [pack(y[i:i + per], 16) for i in range(0, dim, per)]
    return Program(c.writes(), vin=[vx, vy]), I.add_sat(x, y, 16).tolist(), 16


def swiglu_program(p, rng):
    """SiLU(g) (32-bit lanes, from a PMU LUT) x u16 (packed int16) -> REQUANT int8, packed."""
    dim = 8 * p.lanes
    sg = rng.integers(-3000, 20000, dim)
    u = rng.integers(-(1 << 15), 1 << 15, dim)
    m, s = 17000, 30
    c = PcuConfig(p).counters(dim // p.lanes)
    c.vin(0).vin(1, unpack=16)
    c.stage(0, FuOp.MUL, Src.VIN0, Src.VIN1)
    c.stage(1, FuOp.REQUANT, Src.PREV, Src.IMM, imm=PcuConfig.requant_word(m, s), bits=8)
    c.emit(0).reduce(Red.OFF).output(vout=True, pack_bits=8)
    L = p.lanes
    v0 = [pack(sg[i:i + L], 32) for i in range(0, dim, L)]
    v1 = [pack(u[i:i + 2 * L], 16) for i in range(0, dim, 2 * L)]
    exp = I.requant(I.mul(sg, u), m, s, 8).tolist()
    return Program(c.writes(), vin=[v0, v1]), exp, 8


def int8_unpack_program(p, rng):
    dim = 8 * p.lanes
    v = rng.integers(-128, 128, dim)
    c = PcuConfig(p).counters(dim // p.lanes)
    c.vin(0, unpack=8)
    c.stage(2, FuOp.ADD, Src.PREV, Src.IMM, imm=-3)
    c.emit(0).reduce(Red.OFF).output(vout=True, pack_bits=32)
    per = 4 * p.lanes
    return (Program(c.writes(), vin=[[pack(v[i:i + per], 8) for i in range(0, dim, per)]]),
            (v - 3).tolist(), 32)


@pytest.mark.parametrize("seed,gap,ready", [(11, 0.0, 1.0), (12, 0.35, 0.4)])
def test_elementwise_lanes4(seed, gap, ready):
    p = P4
    rng = np.random.default_rng(seed)
    made = [f(p, rng) for f in (routing_program, rope_like_program, residual_program,
                                swiglu_program, int8_unpack_program)]
    run_programs(p, [m[0] for m in made], seed=seed, gap=gap, ready=ready)
    for prog, exp, bits in made:
        got = vout_elems(prog, bits)
        assert got[:len(exp)] == [int(v) for v in exp]
        assert not any(got[len(exp):])
        check_control(prog)


# ---------------------------------------------------------------------------------------------
# reductions: SUM / MAX / MIN / MAXIDX / FIRST, post stage, scalar chains
# ---------------------------------------------------------------------------------------------

def test_reductions_lanes4():
    p = P4
    L = p.lanes
    rng = np.random.default_rng(5)
    progs, checks = [], []

    # RMSNorm sum of squares: SUM((x >>r sh)^2) + eps, x int16 packed
    dim, sh, eps = 8 * L, 3, 77
    x = rng.integers(-(1 << 15), 1 << 15, dim)
    c = PcuConfig(p).counters(dim // L).vin(0, unpack=16)
    c.stage(0, FuOp.SHR_ROUND, Src.VIN0, Src.IMM, imm=sh)
    c.stage(1, FuOp.MUL, Src.PREV, Src.PREV, acc_op=AccOp.SUM, acc_level=1)
    c.emit(1).reduce(Red.SUM).post(FuOp.ADD, Src.PREV, Src.IMM, imm=eps)
    c.output(vout=False, sout=True)
    xs = I.rshift_round(x, sh)
    progs.append(Program(c.writes(), vin=[[pack(x[i:i + 2 * L], 16) for i in range(0, dim, 2 * L)]]))
    checks.append([int(I.check_range(np.sum(xs * xs), 32) + eps)])

    # argmax over the whole program with many ties (lowest index wins), 3 data sets
    for trial in range(3):
        nb = 5
        v = rng.integers(-3, 4, nb * L)
        if trial == 2:
            v[:] = -7                       # all equal: index 0
        progs.append(Program(PcuConfig.argmax(p, nb).writes(),
                             vin=[[pack(v[i:i + L], 32) for i in range(0, nb * L, L)]]))
        checks.append([I.argmax_first(v)])

    # per-beat MAXIDX lane index (post A = IDX) and per-beat MIN value
    nb = 6
    v = rng.integers(-2, 3, (nb, L))
    for red, src, ref in ((Red.MAXIDX, Src.IDX, lambda r: I.argmax_first(r)),
                          (Red.MIN, Src.PREV, lambda r: int(r.min())),
                          (Red.FIRST, Src.PREV, lambda r: int(r[0]))):
        c = PcuConfig(p).counters(nb).vin(0).emit(0).reduce(red).post(FuOp.PASS, src)
        c.output(vout=False, sout=True)
        progs.append(Program(c.writes(), vin=[[pack(r, 32) for r in v]]))
        checks.append([ref(r) for r in v])

    # softmax: max over T beats (lane MAX accumulators, then MAX tree), and the SUM of e_t
    # (SUM tree per beat, post SUM accumulator over the program)
    T = 7
    sc = rng.integers(-(1 << 30), 1 << 30, T * L)
    c = PcuConfig(p).counters(T).vin(0)
    c.stage(0, FuOp.PASS, Src.VIN0, acc_op=AccOp.MAX, acc_level=1)
    c.emit(1).reduce(Red.MAX).output(vout=False, sout=True)
    progs.append(Program(c.writes(), vin=[[pack(sc[i:i + L], 32) for i in range(0, T * L, L)]]))
    checks.append([int(sc.max())])
    e = rng.integers(0, 1 << 15, T * L)
    c = PcuConfig(p).counters(T).vin(0).emit(0).reduce(Red.SUM)
    c.post(FuOp.PASS, Src.PREV, acc_op=AccOp.SUM, acc_level=1).output(vout=False, sout=True)
    progs.append(Program(c.writes(), vin=[[pack(e[i:i + L], 32) for i in range(0, T * L, L)]]))
    checks.append([int(e.sum())])

    # rsqrt_index on scalars (broadcast from sin0, result from lane 0): CLZ, ilog2, even,
    # variable shift left or right
    bits = 10
    vals = [1, 2, 3, 255, 256, 1023, 1 << 20, (1 << 31) - 1] + [int(t) for t in
                                                                  rng.integers(1, 1 << 31, 4)]
    c = PcuConfig(p).counters(len(vals)).sin(0)
    c.stage(0, FuOp.CLZ, Src.SIN0)
    c.stage(1, FuOp.SUB, Src.IMM, Src.PREV, imm=31)                 # e = ilog2(v)
    c.stage(2, FuOp.AND, Src.PREV, Src.IMM, imm=~1)                 # k = e & ~1
    c.stage(3, FuOp.SUB, Src.PREV, Src.IMM, imm=bits - 2)           # k - (bits - 2)
    c.stage(4, FuOp.SHLR, Src.SIN0, Src.PREV)                       # idx
    c.emit(0).reduce(Red.FIRST).output(vout=False, sout=True)
    progs.append(Program(c.writes(), sin=[vals]))
    checks.append([int(I.rsqrt_index(v, bits)[0]) for v in vals])

    run_programs(p, progs, seed=5, gap=0.3, ready=0.5)
    for i, (prog, exp) in enumerate(zip(progs, checks)):
        assert [s32(d) for d in prog.sout] == exp, f"program {i}"
        assert prog.vout == []
        check_control(prog)


# ---------------------------------------------------------------------------------------------
# control: config bus, tokens, start/busy/done, latency
# ---------------------------------------------------------------------------------------------

def test_control_lanes4():
    p = P4
    rng = np.random.default_rng(9)
    progs, exps = [], []
    # 1. config writes to another unit id are ignored (garbage to every register after the
    #    real configuration)
    prog, exp = gemv_program(p, rng, 6, 2)
    prog.writes += [(r, (0xFFFFFFFF if k % 2 else 0x12345, UNIT + 1))
                    for k, r in enumerate(range(PCU_N_REGS))]
    progs.append(prog)
    exps.append(exp)
    # 2. tokens: one input token per row gates entry; ENTRY tokens per row, VOUT tokens per
    #    output vector, a DONE token
    prog, exp = gemv_program(p, rng, 21, 2)
    c = PcuConfig(p)
    c.token_in(0, level=1).token_out(0, TokSrc.ENTRY, level=1).token_out(1, TokSrc.VOUT)
    prog.writes += [(r, v) for r, v in c.writes() if r.name.startswith("TOK")]
    prog.ctl_in = (21, 0)
    progs.append(prog)
    exps.append(exp)
    prog, exp = gemv_program(p, rng, 3, 1)
    c = PcuConfig(p)
    c.token_out(1, TokSrc.DONE)
    prog.writes += [(r, v) for r, v in c.writes() if r.name.startswith("TOK")]
    progs.append(prog)
    exps.append(exp)
    run_programs(p, progs, seed=9, gap=0.3, ready=0.6, ctl_out_ready=0.4)
    for prog, exp in zip(progs, exps):
        check_gemv(prog, exp, 8)
    assert progs[0].tokens == [[], []]
    assert len(progs[1].tokens[0]) == 21 and len(progs[1].tokens[1]) == len(progs[1].vout) == 2
    assert progs[2].tokens == [[], [progs[2].tokens[1][0]]]       # exactly one DONE token


def test_tokens_gate_entry_and_latency():
    """Without its input token the PCU does not start a row; the documented latency holds."""
    p = P4
    dut = Pcu(p, UNIT)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    S, T = p.pcu_stages, (p.lanes - 1).bit_length()
    c = PcuConfig(p).counters(2).vin(0).token_in(1, level=1).emit(0).reduce(Red.OFF)
    c.output(vout=True)

    async def tb(ctx):
        await configure_and_start(ctx, dut, c.writes())
        assert ctx.get(dut.ctrl.busy)
        ctx.set(dut.vout.ready, 1)
        # beat 0 offered, no token: nothing may come out
        ctx.set(dut.vin[0].valid, 1)
        ctx.set(dut.vin[0].payload, pack([1, 2, 3, 4], 32))
        await ctx.tick()
        ctx.set(dut.vin[0].payload, pack([5, 6, 7, 8], 32))
        await ctx.tick()
        ctx.set(dut.vin[0].valid, 0)
        for _ in range(S + T + 10):
            assert not ctx.get(dut.vout.valid)
            await ctx.tick()
        ctx.set(dut.ctl_in[1].valid, 1)
        assert ctx.get(dut.ctl_in[1].ready)       # consumed by the first beat of the row
        await ctx.tick()
        ctx.set(dut.ctl_in[1].valid, 0)
        outs = []
        for _ in range(S + T + 10):
            if ctx.get(dut.vout.valid):
                outs.append(ctx.get(dut.vout.payload))
            if ctx.get(dut.ctrl.done):
                break
            await ctx.tick()
        assert outs == [pack([1, 2, 3, 4], 32), pack([5, 6, 7, 8], 32)]
        await ctx.tick()
        assert not ctx.get(dut.ctrl.busy)

        # latency: vin.valid in cycle t -> vout.valid in cycle t + S + log2(L) + 5
        c2 = PcuConfig(p).counters(1).vin(0).emit(0).reduce(Red.OFF).output(vout=True)
        ctx.set(dut.cfg.we, 1)
        for r, v in c2.writes():
            ctx.set(dut.cfg.addr, int(r))
            ctx.set(dut.cfg.data, v)
            await ctx.tick()
        ctx.set(dut.cfg.we, 0)
        ctx.set(dut.ctrl.start, 1)
        await ctx.tick()
        ctx.set(dut.ctrl.start, 0)
        for _ in range(3):
            await ctx.tick()
        ctx.set(dut.vin[0].valid, 1)
        ctx.set(dut.vin[0].payload, 42)
        n = 0
        while not ctx.get(dut.vout.valid):
            await ctx.tick()
            ctx.set(dut.vin[0].valid, 0)
            n += 1
            assert n < 50
        assert n == S + T + 5
        assert ctx.get(dut.vout.payload) == 42

    sim.add_testbench(tb)
    sim.run()


# ---------------------------------------------------------------------------------------------
# default geometry
# ---------------------------------------------------------------------------------------------

def test_default_16_lanes():
    """Default geometry (16 lanes x 6 stages): a GEMV whose 66 int8 rows fill one vector of 64
    and part of a second, then an argmax over 4 beats, with gaps and back-pressure."""
    p = P16
    rng = np.random.default_rng(16)
    prog, exp = gemv_program(p, rng, 66, 1)
    v = rng.integers(-5, 5, 64)
    arg = Program(PcuConfig.argmax(p, 4).writes(),
                  vin=[[pack(v[i:i + 16], 32) for i in range(0, 64, 16)]])
    run_programs(p, [prog, arg], seed=16, gap=0.2, ready=0.7)
    assert len(set(exp.tolist())) > 10
    check_gemv(prog, exp, 8)
    assert [s32(d) for d in arg.sout] == [I.argmax_first(v)]
    check_control(arg)


@dataclasses.dataclass(frozen=True)
class P3Params(RduParams):
    """4 lanes and a third vector input (what an int16-activation GEMV needs)."""
    pcu_vector_inputs: int = 3


def test_gemv_int16_input_three_vins():
    p = P3Params(lanes=4, hbm_bytes_per_cycle=16)
    assert pcu_geometry(p)["n_vin"] == 3
    rng = np.random.default_rng(21)
    rows, nb, per = 7, 2, 16
    w = rng.integers(-128, 128, (rows, per * nb)).astype(np.int8)
    x = rng.integers(-(1 << 15), 1 << 15, per * nb).astype(np.int16)
    m, s = I.quantize_multiplier(2e-5)
    hi = np.right_shift(x.astype(np.int64), 8)
    lo = np.bitwise_and(x.astype(np.int64), 0xFF)
    wb = [pack(w[r, b * per:(b + 1) * per], 8) for r in range(rows) for b in range(nb)]
    hb = [pack(hi[b * per:(b + 1) * per], 8) for b in range(nb)] * rows
    lb = [pack(lo[b * per:(b + 1) * per], 8) for b in range(nb)] * rows
    cfg = PcuConfig.gemv(p, rows, nb, m, s, out_bits=16, x_bits=16, sout=True)
    prog = Program(cfg.writes(), vin=[wb, hb, lb])
    run_programs(p, [prog], seed=21, gap=0.2, ready=0.6)
    exp = I.requant(I.gemv(w, x, 16), m, s, 16)
    assert len(set(exp.tolist())) == rows
    check_gemv(prog, exp, 16)
    # With only two vector inputs there is no room for W, x_hi and x_lo.
    with pytest.raises(ValueError):
        PcuConfig.gemv(P4.replace(pcu_vector_inputs=2), rows, nb, m, s, x_bits=16)


def test_segmented_reduce_attention_scores():
    """Segmented SUM tree: per-head dot products (head_dim 8 = 2 lanes of int8 at 4 lanes),
    q reused for every position; also a segmented MAX packed to int16."""
    p = P4
    rng = np.random.default_rng(33)
    T, H, hd = 5, 2, 8
    q = rng.integers(-128, 128, (H, hd)).astype(np.int8)
    K = rng.integers(-128, 128, (T, H, hd)).astype(np.int8)
    c = PcuConfig(p).counters(T).vin(0).vin(1, pop_level=1)
    c.stage(0, FuOp.DP4, Src.VIN0, Src.VIN1)
    c.emit(0).reduce(Red.SUM, segment_log2=1).output(vout=True, pack_bits=32)
    scores = Program(c.writes(), vin=[[pack(K[t].reshape(-1), 8) for t in range(T)],
                                      [pack(q.reshape(-1), 8)]])
    exp_scores = I.dot(q[None, :, :], K, axis=-1).reshape(-1).tolist()
    v = rng.integers(-(1 << 15), 1 << 15, (6, p.lanes))
    c = PcuConfig(p).counters(6).vin(0).emit(0).reduce(Red.MAX, segment_log2=1)
    c.output(vout=True, pack_bits=16)
    mx = Program(c.writes(), vin=[[pack(r, 32) for r in v]])
    exp_mx = v.reshape(6, 2, 2).max(axis=-1).reshape(-1).tolist()
    run_programs(p, [scores, mx], seed=33, gap=0.3, ready=0.5)
    got = vout_elems(scores, 32)
    assert len(scores.vout) == 3
    assert got == exp_scores + [0] * (12 - len(exp_scores))
    assert len(mx.vout) == 2 and vout_elems(mx, 16)[:12] == exp_mx
    assert scores.sout == [] and mx.sout == []
    check_control(scores)
    check_control(mx)

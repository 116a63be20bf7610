"""Unit tests of the PCU (``hdl/pcu.py``) and its FU (``hdl/fu.py``) in Amaranth's simulator.

References are :mod:`sw.intops` (bit-exact). Streams are driven with random gaps and random
back-pressure from seeded generators; every comparison is exact.
"""

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
            for addr, val in prog.writes:
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
            for _ in range(6):      # quiet afterwards: no output, no busy, no second done
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

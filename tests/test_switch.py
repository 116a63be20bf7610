"""Unit tests of the switch (hdl/switch.py) in Amaranth's simulator.

One testbench process drives every input and output port of a switch each cycle (random
offers, random back-pressure) and records every transfer; the checks are exact: each routed
output receives every word of its input exactly once and in order (multicast included),
unrouted outputs never raise valid, unselected inputs are never ready.
"""

import random

import pytest
from amaranth.sim import Simulator

from hdl.params import RduParams
from hdl.switch import (NETS, SWITCH_N_REGS, Switch, SwitchReg, full_ports, sel_code,
                        switch_reg, switch_tracks)
from hdl.unitmap import regs_per_kind

P = RduParams(lanes=4, pmu_banks=4, hbm_bytes_per_cycle=16)   # 128-bit beats: quicker
UNIT = 23
LOCAL_IN = {"vec": 1, "scl": 1, "ctl": 2}      # a PCU's outputs
LOCAL_OUT = {"vec": 3, "scl": 2, "ctl": 2}     # a PCU's inputs
WIDTH = {"vec": P.beat_bits, "scl": 32, "ctl": 0}


def make_switch(ports=None):
    return Switch(P, UNIT, ports=ports, local_in=LOCAL_IN, local_out=LOCAL_OUT)


async def cfg_write(ctx, dut, addr, value, unit=UNIT):
    ctx.set(dut.cfg.we, 1)
    ctx.set(dut.cfg.unit, unit)
    ctx.set(dut.cfg.addr, addr)
    ctx.set(dut.cfg.data, value)
    await ctx.tick()
    ctx.set(dut.cfg.we, 0)


def random_routes(rng, dut, p_none=0.25):
    """{net: {out: in or None}}, with at least one forced multicast per network."""
    routes = {}
    for net in NETS:
        ins, outs = dut.ports[net]
        r = {o: (None if rng.random() < p_none else rng.choice(ins)) for o in outs}
        a, b = rng.sample(list(outs), 2)
        r[a] = r[b] = rng.choice(ins)
        routes[net] = r
    return routes


def run_traffic(dut, routes, *, seed, cycles, p_offer, p_ready, foreign_writes=False,
                latency_check=False):
    """Configure ``routes`` over the bus, run random traffic, drain, return the records."""
    rng = random.Random(seed)
    sent = {(net, i): [] for net in NETS for i in dut.ports[net][0]}
    got = {(net, o): [] for net in NETS for o in dut.ports[net][1]}
    bad = []
    stamps = []             # (net, in, out, cycle sent, cycle seen) for the latency check

    async def tb(ctx):
        for net in NETS:
            for o, i in routes[net].items():
                await cfg_write(ctx, dut, switch_reg(net, o), sel_code(i))
        if foreign_writes:
            # Other units' writes to every switch register, and junk in this switch's unused
            # register slots: none may change a route.
            for a in range(SWITCH_N_REGS):
                await cfg_write(ctx, dut, a, rng.randrange(32), unit=UNIT + 1)
                await cfg_write(ctx, dut, a, rng.randrange(32), unit=UNIT - 1)
        offer = {}
        counter = {k: 0 for k in sent}
        pending = {}
        for cyc in range(cycles + 60):
            draining = cyc >= cycles
            for (net, i), lst in sent.items():
                port = dut.inp(net, i)
                if (net, i) not in offer and not draining and rng.random() < p_offer:
                    n = counter[(net, i)]
                    counter[(net, i)] += 1
                    word = rng.getrandbits(WIDTH[net]) if WIDTH[net] else 1
                    offer[(net, i)] = (word, cyc)
                if (net, i) in offer:
                    ctx.set(port.valid, 1)
                    if WIDTH[net]:
                        ctx.set(port.payload, offer[(net, i)][0])
                else:
                    ctx.set(port.valid, 0)
            for (net, o) in got:
                ctx.set(dut.out(net, o).ready, draining or rng.random() < p_ready)
            # settled view of this cycle: which transfers happen at the coming edge
            for (net, i) in sent:
                port = dut.inp(net, i)
                r = ctx.get(port.ready)
                if r and i not in routes[net].values():
                    bad.append(f"{net} input {i} ready but unselected (cycle {cyc})")
                if r and (net, i) in offer:
                    word, c0 = offer.pop((net, i))
                    sent[(net, i)].append(word)
                    pending[(net, i, word if WIDTH[net] else len(sent[(net, i)]))] = cyc
            for (net, o), lst in got.items():
                port = dut.out(net, o)
                v = ctx.get(port.valid)
                if v and routes[net][o] is None:
                    bad.append(f"{net} output {o} valid while unrouted (cycle {cyc})")
                if v and ctx.get(port.ready):
                    lst.append(ctx.get(port.payload) if WIDTH[net] else 1)
                    if latency_check and WIDTH[net]:
                        stamps.append((pending.get((net, routes[net][o], lst[-1])), cyc))
            await ctx.tick()
        assert not ctx.get(dut.held), "switch still holds data after draining"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return sent, got, bad, stamps


def check(routes, sent, got, bad):
    assert not bad, bad[:5]
    for net in NETS:
        for o, i in routes[net].items():
            if i is None:
                assert got[(net, o)] == [], (net, o)
            else:
                assert got[(net, o)] == sent[(net, i)], (
                    f"{net} output {o} <- {i}: got {len(got[(net, o)])} words, "
                    f"sent {len(sent[(net, i)])}")


def test_register_map():
    assert SWITCH_N_REGS == 60 == len(SwitchReg)
    assert regs_per_kind("switch") == SWITCH_N_REGS
    assert switch_reg("vec", "N0") == SwitchReg.VEC_OUT_N0 == 0
    assert switch_reg("scl", "E1") == SwitchReg.SCL_OUT_E1 == 20 + 5
    assert switch_reg("ctl", "L1") == SwitchReg.CTL_OUT_L1 == 40 + 17
    assert sel_code(None) == 0 and sel_code("N0") == 1 and sel_code("L0") == 17
    assert sel_code("W3") == 16
    ports = full_ports(P, LOCAL_IN, LOCAL_OUT)
    assert ports["vec"][0] == ("N0", "N1", "E0", "E1", "S0", "S1", "W0", "W1", "L0")
    assert len(ports["vec"][1]) == 8 + 3
    with pytest.raises(ValueError):
        switch_reg("vec", "L4")
    with pytest.raises(ValueError):
        switch_tracks(P.replace(switch_tracks=5))


@pytest.mark.parametrize("seed", [1, 2])
def test_random_routes_random_backpressure(seed):
    rng = random.Random(seed)
    dut = make_switch()
    routes = random_routes(rng, dut)
    res = run_traffic(dut, routes, seed=seed, cycles=150, p_offer=0.7, p_ready=0.6)
    check(routes, *res[:3])
    for net in NETS:
        for o, i in routes[net].items():
            if i is not None:
                assert len(res[0][(net, i)]) > 10, "too little traffic to mean anything"


def test_full_throughput_and_latency():
    """No back-pressure, an offer every cycle: one word per cycle per output, 1-cycle hop."""
    rng = random.Random(5)
    dut = make_switch()
    routes = random_routes(rng, dut, p_none=0.0)
    sent, got, bad, stamps = run_traffic(dut, routes, seed=5, cycles=60, p_offer=1.0,
                                         p_ready=1.0, latency_check=True)
    check(routes, sent, got, bad)
    for net in ("vec", "scl", "ctl"):
        for i in dut.ports[net][0]:
            if i in routes[net].values():
                assert len(sent[(net, i)]) == 60, (net, i, len(sent[(net, i)]))
    assert stamps and all(s is not None and e - s == 1 for s, e in stamps), stamps[:5]


def test_multicast_slow_branch_paces_fork():
    """One input to three outputs, one of which is rarely ready: all three get everything."""
    dut = make_switch()
    routes = {net: {o: None for o in dut.ports[net][1]} for net in NETS}
    for net in NETS:
        src = dut.ports[net][0][0]
        for o in dut.ports[net][1][:3]:
            routes[net][o] = src
    sent, got, bad, _ = run_traffic(dut, routes, seed=9, cycles=200, p_offer=0.9, p_ready=0.3)
    check(routes, sent, got, bad)
    assert len(sent[("vec", "N0")]) > 20


def test_foreign_config_writes_ignored():
    rng = random.Random(11)
    dut = make_switch()
    routes = random_routes(rng, dut)
    res = run_traffic(dut, routes, seed=11, cycles=60, p_offer=0.8, p_ready=0.7,
                      foreign_writes=True)
    check(routes, *res[:3])


def test_partial_switch_missing_ports():
    """An edge switch (no north/west ports): routes naming missing inputs deliver nothing."""
    full = full_ports(P, LOCAL_IN, LOCAL_OUT)
    ports = {net: (tuple(p for p in ins if p[0] not in "NW"), tuple(p for p in outs if p[0] not in "NW"))
             for net, (ins, outs) in full.items()}
    dut = Switch(P, UNIT, ports=ports)
    rng = random.Random(3)
    routes = random_routes(rng, dut)

    sent, got, bad, _ = run_traffic(dut, routes, seed=3, cycles=80, p_offer=0.8, p_ready=0.8)
    check(routes, sent, got, bad)
    # Now point an output at a missing input (N0): it must stay silent.
    routes2 = {net: dict(r) for net, r in routes.items()}
    o = dut.ports["scl"][1][0]
    routes2["scl"][o] = None

    dut2 = Switch(P, UNIT, ports=ports)

    async def tb(ctx):
        await cfg_write(ctx, dut2, switch_reg("scl", o), sel_code("N0"))
        for i in dut2.ports["scl"][0]:
            ctx.set(dut2.inp("scl", i).valid, 1)
        ctx.set(dut2.out("scl", o).ready, 1)
        for _ in range(10):
            assert not ctx.get(dut2.out("scl", o).valid)
            for i in dut2.ports["scl"][0]:
                assert not ctx.get(dut2.inp("scl", i).ready)
            await ctx.tick()

    sim = Simulator(dut2)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()

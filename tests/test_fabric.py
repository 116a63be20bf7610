"""Fabric topology (pure Python) and a small fabric in Amaranth's simulator.

Topology: for several geometries, every link joins ports of one network, every unit port is
attached exactly once, and every route the router emits is connected hop by hop, uses each
switch output at most once, is shortest where that is easy to know, and its config writes are
the ones :meth:`FabricTopology.select` gives.

RTL (2 x 2 grid, 4 lanes, 1 PCU stage): routes and unit programs are written over the config
bus only; data goes AGCU rd -> switches -> PMU ``win``, PMU ``rout`` -> switches -> AGCU wr,
and AGCU rd -> PCU (pass-through) -> AGCU wr, plus a multicast straight across, all under
random back-pressure, checked word for word.
"""

import random

import pytest
from amaranth.sim import Simulator

from hdl.fabric import Fabric, FabricTopology, RouteError, unit_local_ports
from hdl.params import RduParams
from hdl.pcu import PcuConfig, Red
from hdl.pmu import PmuConfig, RdMode
from hdl.switch import NETS, sel_code, switch_reg
from hdl.unitmap import unit_map

SMALL = RduParams(grid_rows=2, grid_cols=2, lanes=4, pmu_banks=4, hbm_bytes_per_cycle=16,
                  pmu_bytes=512, pcu_stages=1)
GEOMS = [RduParams(), SMALL, RduParams(grid_rows=3, grid_cols=5, switch_tracks=1, n_agcus=6),
         RduParams(grid_rows=1, grid_cols=2, n_agcus=2, switch_tracks=3)]


def check_route(topo, r):
    """Walk a route from its source: raises AssertionError if anything is not connected."""
    reached = {topo.sink_of(r.src): 1}
    outs = set()
    for o, i in r.hops:
        assert o not in outs, f"output {o} used twice"
        outs.add(o)
        assert i in reached, f"hop {o} <- {i}: input not reached by the route"
        assert o.split(".")[:2] == i.split(".")[:2], (o, i)
        nxt = topo.sink_of(o)
        if topo.is_switch_port(nxt):
            reached.setdefault(nxt, reached[i] + 1)
        else:
            assert nxt in r.dsts, f"{o} leads to {nxt}, not a destination"
            assert r.latency[nxt] == reached[i], (nxt, r.latency[nxt], reached[i])
    ends = {topo.sink_of(o) for o in outs}
    assert set(r.dsts) <= ends, f"destinations not reached: {set(r.dsts) - ends}"
    assert list(r.writes) == [topo.select(o, i) for o, i in r.hops]


@pytest.mark.parametrize("p", GEOMS, ids=lambda p: f"{p.grid_rows}x{p.grid_cols}t{p.switch_tracks}")
def test_topology_consistent(p):
    topo = FabricTopology(p)
    srcs = [l.src for l in topo.links]
    dsts = [l.dst for l in topo.links]
    assert len(set(srcs)) == len(srcs) and len(set(dsts)) == len(dsts)
    for l in topo.links:
        for end in (l.src, l.dst):
            if topo.is_switch_port(end):
                assert f".{l.net}." in end
    tiles = [u for u in unit_map(p) if u.kind in ("pcu", "pmu")]
    for u in tiles:
        for net, (outs, ins) in unit_local_ports(p, u.kind).items():
            for port in outs:
                assert topo.net_of(f"{u.name}.{port}") == net
                assert topo.sink_of(f"{u.name}.{port}").startswith(f"sw({u.pos[0]},{u.pos[1]}).{net}.in.L")
            for port in ins:
                assert topo.driver_of(f"{u.name}.{port}").startswith(f"sw({u.pos[0]},{u.pos[1]}).{net}.out.L")
    for i in range(p.n_agcus):
        assert f"agcu{i}.rd" in topo.producers("vec") and f"agcu{i}.wr" in topo.consumers("vec")
    # Interior switches have all 4 directions x tracks; corner switches two directions.
    for info in topo.switches.values():
        r, c = info.pos
        n_dirs = (r > 0) + (r < p.grid_rows - 1) + (c > 0) + (c < p.grid_cols - 1)
        ins = [x for x in info.ports["scl"][0] if x[0] != "L"]
        assert len(ins) == n_dirs * p.switch_tracks, (info.name, ins)


@pytest.mark.parametrize("p", GEOMS, ids=lambda p: f"{p.grid_rows}x{p.grid_cols}t{p.switch_tracks}")
def test_random_routes_connected(p):
    topo = FabricTopology(p)
    rng = random.Random(p.grid_cols * 7 + p.switch_tracks)
    n_ok = n_fail = 0
    for net in NETS:
        used = set()
        prods, cons = topo.producers(net), topo.consumers(net)
        rng.shuffle(cons)
        free = list(cons)
        for src in rng.sample(prods, len(prods)):
            if not free:
                break
            k = min(len(free), rng.choice([1, 1, 2, 3]))
            dsts, free = free[:k], free[k:]
            try:
                r = topo.route_multicast(net, src, dsts, used)
            except RouteError:
                n_fail += 1
                continue
            check_route(topo, r)
            assert not (r.outputs & used)
            used |= r.outputs
            n_ok += 1
    assert n_ok >= 3, (n_ok, n_fail)


def test_shortest_paths_and_errors():
    p = RduParams()
    topo = FabricTopology(p)
    r = topo.route("vec", "agcu0.rd", "agcu2.wr")        # across row 0: 4 switches
    assert r.latency == {"agcu2.wr": 4} and len(r.hops) == 4
    check_route(topo, r)
    # Same tile: unit output to its own input (loop-back) is one switch.
    r = topo.route("vec", "pcu0.vout", "pcu0.vin1")
    assert r.latency["pcu0.vin1"] == 1
    assert r.writes == ((topo.switches[(0, 0)].unit_id, switch_reg("vec", "L1"), sel_code("L0")),)
    # Multicast shares the trunk: 3 destinations along row 0 cost 4 outputs, not 1+2+3.
    r = topo.route_multicast("scl", "pcu0.sout", ["pmu0.swin", "pcu1.sin0", "pmu1.sidx"])
    check_route(topo, r)
    assert len(r.hops) <= 6
    with pytest.raises(RouteError):
        topo.route("vec", "pcu0.vout", "pmu0.swin")          # wrong network
    with pytest.raises(RouteError):
        topo.route("vec", "pmu0.win", "pcu0.vin0")           # not a producer
    # Exhaust: block every output of sw(0,0)'s vec network except towards pcu0: no way out.
    sw = topo.switches[(0, 0)]
    used = {f"sw(0,0).vec.out.{o}" for o in sw.ports["vec"][1]}
    with pytest.raises(RouteError):
        topo.route("vec", "agcu0.rd", "agcu2.wr", used)
    j = topo.route("vec", "agcu0.rd", "agcu2.wr").to_json()
    assert j["net"] == "vector" and j["hops"][0] == "sw(0,0).E0<-W0"


# ---- RTL ----------------------------------------------------------------------------------

def run_fabric(p, topo, writes, starts, beats, n_expect, seed=4, timeout=800):
    """Simulate a :class:`Fabric`: config ``writes`` over the bus, pulse ``starts`` (unit
    names), feed ``beats[i]`` into ``agcu_rd[i]`` (random gaps), drain every ``agcu_wr``
    (random stalls) until each sink ``j`` has ``n_expect[j]`` beats and the units are done.
    Returns ``{sink: [beats]}``; fails naming what is stuck."""
    dut = Fabric(p, topo)
    units = {u.name: u for u in unit_map(p)}
    rng = random.Random(seed)
    got = {i: [] for i in range(p.n_agcus)}
    configured = []     # sources start after the config writes (as AGCUs start after config)

    def source(i):
        async def proc(ctx):
            port = dut.agcu_rd[i]
            while not configured:
                await ctx.tick()
            for b in beats[i]:
                while rng.random() < 0.3:
                    await ctx.tick()
                ctx.set(port.valid, 1)
                ctx.set(port.payload, b)
                await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
        return proc

    def sink(i):
        async def proc(ctx):
            port = dut.agcu_wr[i]
            while True:
                ctx.set(port.ready, rng.random() < 0.6)
                _, _, v, r, d = await ctx.tick().sample(port.valid, port.ready, port.payload)
                if v and r:
                    got[i].append(d)
        return proc

    async def main(ctx):
        for uid, a, v in writes:
            ctx.set(dut.cfg.we, 1)
            ctx.set(dut.cfg.unit, uid)
            ctx.set(dut.cfg.addr, int(a))
            ctx.set(dut.cfg.data, v)
            await ctx.tick()
        ctx.set(dut.cfg.we, 0)
        configured.append(True)
        for name in starts:
            ctx.set(dut.ctrl_of(units[name].id).start, 1)
        await ctx.tick()
        for name in starts:
            ctx.set(dut.ctrl_of(units[name].id).start, 0)
        done = set()
        for cyc in range(timeout):
            for name in starts:
                if ctx.get(dut.ctrl_of(units[name].id).done):
                    done.add(name)
            if len(done) == len(starts) and all(len(got[j]) >= n for j, n in n_expect.items()):
                break
            await ctx.tick()
        else:
            raise AssertionError(f"stuck: done={done}, got={ {k: len(v) for k, v in got.items()} }"
                                 f", held={ctx.get(dut.held):b}, busy={ctx.get(dut.busy)}")
        await ctx.tick().repeat(8)
        assert ctx.get(dut.held) == 0, "data left in switches"
        assert not ctx.get(dut.busy)
        for name in starts:
            assert ctx.get(dut.ctrl_of(units[name].id).status) == 0, name

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for i in beats:
        sim.add_testbench(source(i), background=True)
    for i in range(p.n_agcus):
        sim.add_testbench(sink(i), background=True)
    sim.add_testbench(main)
    sim.run()
    return got


def routes_for(topo, specs):
    used, routes = set(), []
    for net, src, dsts in specs:
        r = topo.route_multicast(net, src, dsts, used)
        check_route(topo, r)
        used |= r.outputs
        routes.append(r)
    return [w for r in routes for w in r.writes]


def test_fabric_pmu_pcu_paths():
    """AGCU -> PMU -> AGCU, AGCU -> PCU (pass-through) -> AGCU, AGCU -> 2 AGCUs (multicast)."""
    p = SMALL
    topo = FabricTopology(p)
    units = {u.name: u for u in unit_map(p)}
    rng = random.Random(4)
    n_pmu, n_pcu, n_x = 12, 10, 15
    writes = routes_for(topo, [("vec", "agcu0.rd", ["pmu0.win"]),
                               ("vec", "pmu0.rout", ["agcu1.wr"]),
                               ("vec", "agcu1.rd", ["pcu0.vin0"]),
                               ("vec", "pcu0.vout", ["agcu3.wr"]),
                               ("vec", "agcu3.rd", ["agcu0.wr", "agcu2.wr"])])
    writes += [(units["pmu0"].id, a, v)
               for a, v in PmuConfig.resident_vector(n_pmu, repeat=1).writes(p)]
    pcfg = PcuConfig(p).counters(n_pcu)
    pcfg.vin(0).emit(0).reduce(Red.OFF).output(vout=True)
    writes += [(units["pcu0"].id, int(a), v) for a, v in pcfg.writes()]
    beats = {i: [rng.getrandbits(p.beat_bits) for _ in range(n)]
             for i, n in ((0, n_pmu), (1, n_pcu), (3, n_x))}
    got = run_fabric(p, topo, writes, ("pmu0", "pcu0"), beats,
                     {1: n_pmu, 3: n_pcu, 0: n_x, 2: n_x})
    assert got[1] == beats[0], "agcu0 -> pmu0 -> agcu1"
    assert got[3] == beats[1], "agcu1 -> pcu0 -> agcu3"
    assert got[0] == beats[3] and got[2] == beats[3], "agcu3 -> {agcu0, agcu2} multicast"


def test_fabric_scalar_and_control_networks():
    """pmu0 reads its beats out word by word on the scalar network into pmu1 (scalar writes)
    and tells it "buffer full" with a token on the control network; pmu1 returns the beats."""
    p = SMALL
    topo = FabricTopology(p)
    units = {u.name: u for u in unit_map(p)}
    rng = random.Random(8)
    n, L = 6, p.lanes
    writes = routes_for(topo, [("vec", "agcu2.rd", ["pmu0.win"]),
                               ("scl", "pmu0.sout", ["pmu1.swin"]),
                               ("ctl", "pmu0.ctl_out0", ["pmu1.ctl_in0"]),
                               ("vec", "pmu1.rout", ["agcu1.wr"])])
    a = PmuConfig(sync=True, full_tokens=True, buf_size=n, wr_passes=1, wr_counts=(n,),
                  wr_strides=(1,), rd_mode=RdMode.SCALAR, rd_passes=1, rd_counts=(n * L,),
                  rd_strides=(1,))
    b = PmuConfig(sync=True, full_ext=True, buf_size=n, wr_scalar=True, wr_passes=1,
                  wr_counts=(n * L,), wr_strides=(1,), rd_passes=1, rd_counts=(n,),
                  rd_strides=(1,))
    writes += [(units["pmu0"].id, r, v) for r, v in a.writes(p)]
    writes += [(units["pmu1"].id, r, v) for r, v in b.writes(p)]
    beats = {2: [rng.getrandbits(p.beat_bits) for _ in range(n)]}
    got = run_fabric(p, topo, writes, ("pmu0", "pmu1"), beats, {1: n})
    assert got[1] == beats[2]
    assert all(not got[j] for j in (0, 2, 3))

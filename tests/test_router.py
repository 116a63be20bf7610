"""Negotiated-congestion routing (``sw/kernels/router.py``) and its use by ``KernelBuilder``
(no simulation): stream sets that greedy routing (``FabricTopology.route_multicast`` in call
order) cannot route but PathFinder can, on a small 2x4 grid with one track and on the default
chip; multicast trees; a provably impossible set and its error; determinism; legality of
every result against the topology; speed."""

import json
import os
import random
import subprocess
import sys
import time

import pytest

from hdl.fabric import FabricTopology, RouteError
from hdl.params import DEFAULT_PARAMS, RduParams
from sw.bitstream import Bitstream
from sw.kernels.builder import KernelBuilder, KernelError
from sw.kernels.router import NegotiatedRouter, Net, RoutingError, route_nets

SMALL = RduParams(grid_rows=2, grid_cols=4, hbm_bytes=256 * 1024, switch_tracks=1)
TOPO = {"small": FabricTopology(SMALL), "default": FabricTopology(DEFAULT_PARAMS)}


def greedy(topo, nets):
    """The routes greedy routing gives, in order (raises RouteError when one has no path)."""
    used, out = set(), []
    for n in nets:
        r = topo.route_multicast(topo.net_of(n.src), n.src, n.dsts, frozenset(used))
        used |= r.outputs
        out.append(r)
    return out


def check_legal(topo, nets, routes, blocked=()):
    """Every route is a tree of legal hops from its source reaching each destination, with no
    dead branch; no switch output is used twice (nor a blocked one); the writes and
    latencies are what the topology says."""
    assert len(routes) == len(nets)
    held = set(blocked)
    for n, r in zip(nets, routes):
        net = topo.net_of(n.src)
        assert (r.net, r.src, r.dsts) == (net, n.src, tuple(n.dsts))
        depth = {topo.sink_of(n.src): 1}          # switch inputs the tree reaches
        for o, i in r.hops:
            assert o not in held, f"{o} driven twice"
            held.add(o)
            assert i in depth, f"{r.src}: hop {o} <- {i} selects an input the tree does not reach"
            topo.select(o, i)                       # same switch and network, else ValueError
            assert topo.net_of(o) == net
            s = topo.sink_of(o)
            if topo.is_switch_port(s):
                depth[s] = depth[i] + 1
        assert r.writes == tuple(topo.select(o, i) for o, i in r.hops)
        sel = dict(r.hops)
        for d in n.dsts:
            o = topo.driver_of(d)
            assert o in sel, f"{d} not reached by {r.src}"
            assert r.latency[d] == depth[sel[o]]
        # no dead branch: every output feeds a destination or an input a later hop selects
        used_inputs = {i for _, i in r.hops}
        for o, _ in r.hops:
            s = topo.sink_of(o)
            assert s in n.dsts or s in used_inputs, f"{r.src}: dead branch at {o}"


def rand_nets(topo, rng, k, nets=("vec",), fanout=(1, 1, 2, 3)):
    """``k`` nets with distinct sources and destinations, random ends and fan-out."""
    out, srcs, dsts = [], set(), set()
    for _ in range(k):
        net = rng.choice(nets)
        s = rng.choice([x for x in topo.producers(net) if x not in srcs])
        free = [x for x in topo.consumers(net) if x not in dsts]
        ds = rng.sample(free, min(rng.choice(fanout), len(free)))
        srcs.add(s)
        dsts.update(ds)
        out.append(Net(s, tuple(ds)))
    return out


# Small grid, one track per direction (pcu0 (0,0), pmu0 (0,1), pcu1 (0,2), pmu1 (0,3) / pmu2
# (1,0) ...; agcu0/1 west of rows 0/1). The first stream's shortest path leaves sw(1,0) north
# (the first direction tried), but pmu2 -> pcu0 needs that link or a detour through sw(0,1)'s
# west link, which pcu1 -> pcu0 then needs: greedy fails on the third stream. Negotiated, the
# first stream goes east then north and everything fits.
SMALL_NETS = [Net("agcu1.rd", ("pcu1.vin0",)), Net("pmu2.rout", ("pcu0.vin1",)),
              Net("pcu1.vout", ("pcu0.vin0",))]

# Three streams from column 0 (agcu0 enters sw(0,0) from the west, pcu0 sits at (0,0), pmu2 at
# (1,0)) to columns 1..3: only two links leave column 0 eastwards (sw(0,0).E0, sw(1,0).E0) and
# a stream that leaves westwards ends at an AGCU: impossible.
CUT_NETS = [Net("agcu0.rd", ("pmu0.win",)), Net("pcu0.vout", ("pmu1.win",)),
            Net("pmu2.rout", ("pmu3.win",))]

# Multicast on the small grid: greedy routing of these three trees fails, negotiated succeeds.
SMALL_MULTICAST = [Net("agcu0.rd", ("pcu2.vin2", "pmu3.gidx")),
                   Net("pcu1.vout", ("pcu3.vin0", "agcu2.wr", "agcu1.wr")),
                   Net("pmu0.rout", ("pmu1.gidx", "pmu0.gidx"))]

# A decode GEMV (int16 x, two weight streams, 13 routes) placed so that greedy routing fails
# on the default chip (a random placement; the placer and the hand placement route greedily).
GEMV_ROLES = {"B": "pcu7", "A": "pcu5", "C": "pcu6", "X": "pcu2", "WB": "pmu7", "SB": "pmu2",
              "WA": "pmu6", "SA": "pmu3", "MX": "pmu4", "ML": "pmu0", "MY": "pmu5",
              "aWB": "agcu3", "aWA": "agcu2", "ax": "agcu0", "ay": "agcu1"}


def gemv_nets():
    from sw.kernels.gemv import build_decode_gemv
    k = build_decode_gemv(DEFAULT_PARAMS, rows=64, cols=192, x_bits=16, out_bits=16, w=0,
                          x=1 << 16, y=1 << 17, roles=GEMV_ROLES)
    return k, [Net(e.route.src, e.route.dsts, e.what) for e in k.builder.routes]


# ---- the router ---------------------------------------------------------------------------

def test_check_legal_catches_bad_routes():
    """The legality check used below refuses shared outputs, foreign hops and dead branches."""
    topo = TOPO["small"]
    a, b = Net("agcu0.rd", "pmu0.win"), Net("pcu0.vout", "pcu1.vin0")
    ra = topo.route_multicast("vec", a.src, a.dsts)
    rb = topo.route_multicast("vec", b.src, b.dsts)        # each alone: both take sw(0,0).E0
    check_legal(topo, [a], [ra])
    with pytest.raises(AssertionError, match="sw\\(0,0\\).vec.out.E0 driven twice"):
        check_legal(topo, [a, b], [ra, rb])
    dead = ra.__class__(ra.net, ra.src, ra.dsts, ra.hops + (("sw(0,1).vec.out.S0",
                                                              "sw(0,1).vec.in.W0"),),
                       ra.writes + (topo.select("sw(0,1).vec.out.S0", "sw(0,1).vec.in.W0"),),
                       ra.latency)
    with pytest.raises(AssertionError, match="dead branch at sw\\(0,1\\).vec.out.S0"):
        check_legal(topo, [a], [dead])
    jump = ra.__class__(ra.net, ra.src, ra.dsts, (("sw(0,1).vec.out.L0", "sw(0,1).vec.in.S0"),),
                        (topo.select("sw(0,1).vec.out.L0", "sw(0,1).vec.in.S0"),), ra.latency)
    with pytest.raises(AssertionError, match="selects an input the tree does not reach"):
        check_legal(topo, [a], [jump])


def test_greedy_fails_negotiated_routes_small_grid():
    topo = TOPO["small"]
    with pytest.raises(RouteError, match="pcu1.vout -> pcu0.vin0"):
        greedy(topo, SMALL_NETS)
    r = NegotiatedRouter(topo)
    routes = r.route(SMALL_NETS)
    check_legal(topo, SMALL_NETS, routes)
    assert r.iterations > 1                  # the first pass was congested
    # pmu2 -> pcu0 takes its only 2-switch path, the north link the greedy first stream took
    assert routes[1].outputs == {"sw(1,0).vec.out.N0", "sw(0,0).vec.out.L1"}
    assert routes[0].latency == {"pcu1.vin0": 4}


def test_greedy_fails_negotiated_routes_default_chip():
    topo = TOPO["default"]
    # a real kernel: the GEMV's 13 streams in the builder's call order
    k, nets = gemv_nets()
    assert len(nets) == 13 and k.builder.negotiations
    with pytest.raises(RouteError):
        greedy(topo, nets)
    check_legal(topo, nets, route_nets(topo, nets))
    check_legal(topo, nets, [e.route for e in k.builder.routes])
    # random sets of 15 vector/scalar streams (with multicast) that greedy routing fails
    solved = 0
    for seed in (10, 27, 276):
        nets = rand_nets(topo, random.Random(seed), 15, ("vec", "vec", "scl"))
        with pytest.raises(RouteError):
            greedy(topo, nets)
        check_legal(topo, nets, route_nets(topo, nets))
        solved += 1
    assert solved == 3


def test_multicast_trees():
    small = TOPO["small"]
    # on an empty fabric the tree shares its trunk: as few outputs as greedy's tree
    net = Net("agcu0.rd", ("pmu0.win", "pcu1.vin0", "pmu3.win"))
    (r,) = route_nets(small, [net])
    check_legal(small, [net], [r])
    assert len(r.outputs) == len(greedy(small, [net])[0].outputs) == 6
    assert r.latency == {"pmu0.win": 2, "pcu1.vin0": 3, "pmu3.win": 4}
    # trees that greedy routing cannot fit together
    with pytest.raises(RouteError):
        greedy(small, SMALL_MULTICAST)
    check_legal(small, SMALL_MULTICAST, route_nets(small, SMALL_MULTICAST))
    # one source to every PMU write port of the default chip plus two PCUs
    topo = TOPO["default"]
    fan = [Net("agcu1.rd", tuple(f"pmu{i}.win" for i in range(8)) + ("pcu3.vin0", "pcu6.vin2"))]
    rs = route_nets(topo, fan)
    check_legal(topo, fan, rs)
    assert len(rs[0].hops) <= len(greedy(topo, fan)[0].hops)


def test_impossible_set_names_the_fight():
    topo = TOPO["small"]
    with pytest.raises(RoutingError) as e:
        NegotiatedRouter(topo, max_iterations=30).route(CUT_NETS)
    err = e.value
    assert err.iterations == 30 and err.congested
    labels = {n.label for n in CUT_NETS}
    for out, fighters in err.congested.items():
        assert topo.is_switch_port(out) and ".vec.out." in out
        assert len(fighters) >= 2 and set(fighters) <= labels
        assert out in str(err) and all(f in str(err) for f in fighters)
    assert str(err).startswith("negotiated routing of 3 nets found no legal routing in 30 "
                               "iterations: at best"), str(err)


def test_unreachable_and_bad_nets_fail_at_once():
    topo = TOPO["small"]
    t0 = time.perf_counter()
    # every way out of sw(0,0) but the local ports blocked: pcu0 reaches nothing else
    blocked = {f"sw(0,0).vec.out.{p}" for p in ("E0", "S0", "W0")}
    with pytest.raises(RoutingError, match=r"no vector path pcu0.vout -> pmu0.win outside "
                                           r"the blocked outputs") as e:
        route_nets(topo, [Net("pcu0.vout", "pmu0.win")], blocked=blocked)
    assert e.value.iterations == 0 and time.perf_counter() - t0 < 0.1
    with pytest.raises(RoutingError, match="driven by sw\\(0,1\\).vec.out.L0, which is blocked"):
        route_nets(topo, [Net("agcu0.rd", "pmu0.win")], blocked={"sw(0,1).vec.out.L0"})
    with pytest.raises(RoutingError, match="pcu1.sin0 is on the scalar network, agcu0.rd on "
                                           "the vector network"):
        route_nets(topo, [Net("agcu0.rd", "pcu1.sin0")])
    with pytest.raises(RoutingError, match="pcu0.vin0 is a destination of two nets"):
        route_nets(topo, [Net("agcu0.rd", "pcu0.vin0"), Net("agcu1.rd", "pcu0.vin0")])
    with pytest.raises(RoutingError, match="agcu0.rd is the source of two nets"):
        route_nets(topo, [Net("agcu0.rd", "pcu0.vin0"), Net("agcu0.rd", "pmu0.win")])
    with pytest.raises(RoutingError, match="'pcu0.vin0' is not a producer port"):
        route_nets(topo, [Net("pcu0.vin0", "pmu0.win")])


_DETERMINISM = r"""
import json, random, sys
from hdl.fabric import FabricTopology
from hdl.params import DEFAULT_PARAMS
from sw.kernels.router import route_nets
sys.path.insert(0, sys.argv[1])
from test_router import rand_nets
topo = FabricTopology(DEFAULT_PARAMS)
nets = rand_nets(topo, random.Random(276), 15, ("vec", "vec", "scl"))
print(json.dumps([[r.hops, r.writes, r.latency] for r in route_nets(topo, nets)]))
"""


def test_determinism():
    nets = rand_nets(TOPO["default"], random.Random(276), 15, ("vec", "vec", "scl"))
    a = route_nets(TOPO["default"], nets)
    b = route_nets(FabricTopology(DEFAULT_PARAMS), list(nets))      # fresh topology and graph
    assert [(r.hops, r.writes, r.latency) for r in a] == [(r.hops, r.writes, r.latency) for r in b]
    # and in other interpreters with other string hashes
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.add(subprocess.run([sys.executable, "-c", _DETERMINISM, os.path.dirname(__file__)],
                                env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1
    assert json.loads(outs.pop()) == json.loads(json.dumps(
        [[r.hops, r.writes, r.latency] for r in a]))


@pytest.mark.parametrize("where,k,nets", [("small", 4, ("vec",)), ("small", 5, ("vec", "scl")),
                                          ("default", 12, ("vec",)),
                                          ("default", 15, ("vec", "scl", "ctl"))])
def test_random_sets_legal(where, k, nets):
    """Random stream sets: whatever greedy routes, negotiation routes too; every result legal."""
    topo = TOPO[where]
    rng = random.Random(f"{where}{k}")
    n_greedy = n_neg = 0
    for _ in range(25):
        ns = rand_nets(topo, rng, k, nets)
        try:
            greedy(topo, ns)
            g = True
        except RouteError:
            g = False
        try:
            rs = NegotiatedRouter(topo, max_iterations=40).route(ns)
        except RoutingError as e:
            assert not g, f"negotiation failed where greedy routes: {e}"
            continue
        check_legal(topo, ns, rs)
        n_greedy += g
        n_neg += 1
    assert n_neg >= n_greedy and n_neg > 0


def test_speed_15_streams_default_chip():
    topo = TOPO["default"]
    sets = [rand_nets(topo, random.Random(s), 15, ("vec", "vec", "scl")) for s in (10, 27, 276)]
    times = []
    for nets in sets:
        t0 = time.perf_counter()
        route_nets(topo, nets)
        times.append(time.perf_counter() - t0)
    # measured ~10-30 ms each
    assert max(times) < 0.25, times
    # a hopeless set gives up within the budget too (100 iterations)
    t0 = time.perf_counter()
    with pytest.raises(RoutingError):
        route_nets(TOPO["small"], CUT_NETS)
    assert time.perf_counter() - t0 < 0.5


# ---- KernelBuilder ------------------------------------------------------------------------

def _configure_ends(kb, nets):
    for n in nets:
        for port in (n.src,) + n.dsts:
            unit = port.split(".")[0]
            if unit not in kb.units:
                kb.add_unit(unit.rstrip("0123456789"), unit, [])


def test_builder_falls_back_to_negotiation():
    greedy_kb = KernelBuilder(SMALL, "t", negotiate=False)
    greedy_kb.route("agcu1.rd", "pcu1.vin0")
    greedy_kb.route("pmu2.rout", "pcu0.vin1")
    with pytest.raises(KernelError, match="route conflict: no free vector path pcu1.vout -> "
                                          "pcu0.vin0"):
        greedy_kb.route("pcu1.vout", "pcu0.vin0")

    kb = KernelBuilder(SMALL, "t")
    first = kb.route("agcu1.rd", "pcu1.vin0", what="a")
    kb.route("pmu2.rout", "pcu0.vin1", what="b")
    assert first == greedy_kb.routes[0].route and not kb.negotiations
    last = kb.route("pcu1.vout", "pcu0.vin0", what="c")
    assert kb.negotiations and kb.negotiations[0][0] == 3
    assert [e.what for e in kb.routes] == ["a", "b", "c"] and kb.routes[2].route == last
    assert kb.routes[0].route != first                 # rerouted
    check_legal(kb.topo, SMALL_NETS, [e.route for e in kb.routes])
    # later streams go greedily on top, the checks still apply
    kb.route("agcu0.rd", "pmu0.win", what="d")
    assert len(kb.negotiations) == 1
    with pytest.raises(KernelError, match="pcu0.vin0 would be driven twice"):
        kb.route("pmu0.rout", "pcu0.vin0")
    # the bitstream holds exactly the current routes' writes and clears every other output
    _configure_ends(kb, SMALL_NETS + [Net("agcu0.rd", "pmu0.win")])
    bs = Bitstream.from_bytes(kb.to_bytes(), SMALL)
    writes = [(w.unit, w.reg, w.value) for w in bs.writes]
    held = set()
    for e in kb.routes:
        held |= e.route.outputs
        for w in e.route.writes:
            assert w in writes and (w[0], w[1], 0) not in writes
    n_outputs = sum(len(outs) for info in kb.topo.switches.values()
                    for _, outs in info.ports.values())
    assert sum(1 for w in writes if w[2] == 0) == n_outputs - len(held)
    assert [(x["src"], x.get("what")) for x in bs.routes["routes"]] == [
        ("agcu1.rd", "a"), ("pmu2.rout", "b"), ("pcu1.vout", "c"), ("agcu0.rd", "d")]
    assert "rerouted together by the negotiated router" in kb.describe()


def test_builder_impossible_keeps_earlier_routes():
    kb = KernelBuilder(SMALL, "t")
    kb.route("agcu0.rd", "pmu0.win")
    kb.route("pcu0.vout", "pmu1.win")
    before = [e.route for e in kb.routes]
    t0 = time.perf_counter()
    with pytest.raises(KernelError) as e:
        kb.route("pmu2.rout", "pmu3.win")
    msg = str(e.value)
    assert msg.startswith("route conflict: no free vector path pmu2.rout -> pmu3.win"), msg
    assert "rerouting all 3 routes together does not help either: negotiated routing of 3 " \
           "nets found no legal routing in 100 iterations" in msg, msg
    assert "wanted by" in msg and "sw(" in msg
    assert time.perf_counter() - t0 < 0.5
    assert [e.route for e in kb.routes] == before and not kb.negotiations
    kb.route("pcu3.vout", "pmu3.win")                  # pmu3.win is still free


def test_decode_kernels_route_greedily_unchanged():
    """Every kernel of a real decode step routes greedily (no negotiation), so its routes and
    bitstream are what the greedy router alone gives."""
    from sw.compiler.program import compile_decode
    from sw.frontend import load_model
    from sw.golden import quantized

    root = os.path.join(os.path.dirname(__file__), "..")
    qm = quantized(load_model(os.path.join(root, "models/kjv-280k")))
    prog = compile_decode(qm, DEFAULT_PARAMS)
    seen = set()
    for call in prog.token_calls(7, 3):
        kb = call.kernel.builder
        if id(kb) in seen:
            continue
        seen.add(id(kb))
        assert not kb.negotiations, kb.name
        nets = [Net(e.route.src, e.route.dsts) for e in kb.routes]
        assert [e.route for e in kb.routes] == greedy(kb.topo, nets), kb.name
    assert len(seen) >= 15


def test_place_bounds_negotiation_effort():
    """place() negotiates for its first ``negotiate_tries`` candidates only: a kernel that no
    placement routes fails in well under a second on the small grid (each hopeless
    negotiation costs ~10 ms here, 300 candidates would take seconds), naming the best
    candidate's negotiated failure."""
    from sw.kernels.builder import place

    pcus, pmus = ["a", "b", "c", "d"], ["m", "n", "o", "q"]
    flags = []

    def build(u):
        kb = KernelBuilder(SMALL, "dense")
        flags.append(kb.negotiate)
        # every PCU feeds two PMU ports, every PMU two PCU inputs, two scalar fan-outs: more
        # streams than a one-track 2x4 grid carries
        for i, r in enumerate(pcus):
            kb.route(f"{u[r]}.vout", [f"{u[pmus[i]]}.win", f"{u[pmus[(i + 1) % 4]]}.gidx"])
        for i, r in enumerate(pmus):
            kb.route(f"{u[r]}.rout", [f"{u[pcus[(i + k) % 4]]}.vin{k}" for k in (1, 2)])
        kb.route(f"{u['a']}.sout", [f"{u[x]}.sin0" for x in ("b", "c", "d")])
        kb.route(f"{u['m']}.sout", [f"{u[x]}.sin1" for x in ("b", "c", "d")])
        return kb

    t0 = time.perf_counter()
    with pytest.raises(KernelError, match="no placement routes without conflicts \\(300 "
                                          "candidates tried.*rerouting all .* routes together "
                                          "does not help either"):
        place(SMALL, pcus=pcus, pmus=pmus, edges=[(a, b) for a in pcus for b in pmus],
              build=build)
    assert time.perf_counter() - t0 < 1.5
    assert flags == [True] * 20 + [False] * 280
    assert KernelBuilder(SMALL).negotiate is True          # the default is restored

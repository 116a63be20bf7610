"""Kernel builder and GEMV bitstreams (no simulation)."""

import itertools
import random
import time

import numpy as np
import pytest

from hdl.agcu import AgcuReg
from hdl.fabric import FabricTopology
from hdl.params import DEFAULT_PARAMS
from hdl.pcu import PcuConfig, PcuReg
from hdl.pmu import PmuConfig
from hdl.unitmap import unit_id, units_of_kind
from sw import intops
from sw.bitstream import Bitstream
from sw.kernels.builder import AgcuProgram, KernelBuilder, KernelError, _Placer, place
from hdl.params import RduParams
from sw.kernels.gemv import (REDUCED_PARAMS, GemvError, build_gemv, choose_requant, golden,
                             make_data)

P = RduParams(grid_rows=2, grid_cols=4, hbm_bytes=256 * 1024)   # 4 PCUs, 4 PMUs


def small_kernel(p=P):
    kb = KernelBuilder(p, "t")
    kb.agcu(0, AgcuProgram.read(0, (8,), (1,)), role="W")
    kb.agcu(1, AgcuProgram.read(8, (2,), (1,)), role="x")
    kb.agcu(2, AgcuProgram.write(16, (1,), (1,)), role="y")
    kb.pmu(0, PmuConfig.resident_vector(2, repeat=4))
    kb.pcu(0, PcuConfig.gemv(p, 4, 2, m=1 << 14, s=14))
    return kb


def test_routes_and_bitstream_roundtrip():
    kb = small_kernel()
    r = kb.route("agcu0.rd", "pcu0.vin0")
    assert r.latency["pcu0.vin0"] == 1
    kb.route("agcu1.rd", "pmu0.win")
    kb.route("pmu0.rout", "pcu0.vin1")
    kb.route("pcu0.vout", "agcu2.wr")
    bs = Bitstream.from_bytes(kb.to_bytes(), P)
    ids = {unit_id(P, "agcu", i) for i in range(3)} | {unit_id(P, "pmu", 0), unit_id(P, "pcu", 0)}
    assert set(bs.kernels[0].units) == ids
    assert [(x["src"], x["dst"]) for x in bs.routes["routes"]] == [
        ("agcu0.rd", "pcu0.vin0"), ("agcu1.rd", "pmu0.win"), ("pmu0.rout", "pcu0.vin1"),
        ("pcu0.vout", "agcu2.wr")]
    # every route write is in the bitstream, and no used switch output is also cleared
    writes = [(w.unit, w.reg, w.value) for w in bs.writes]
    for e in kb.routes:
        for w in e.route.writes:
            assert w in writes
            assert (w[0], w[1], 0) not in writes
    text = kb.describe()
    assert "pcu0" in text and "1 hop" in text and "agcu2.wr" in text


def test_route_conflict_names_the_routes():
    p = P.replace(switch_tracks=1)
    kb = KernelBuilder(p, "t")
    # One track per direction: agcu0 (west of sw(0,0)) -> pmu0 (0,1) takes sw(0,0)'s only east
    # link; pcu0 (0,0) -> pmu1 (0,3) must detour through row 1, taking sw(1,0)'s east link;
    # then pmu2 (1,0) -> pmu3 (1,2) has no free way east.
    kb.route("agcu0.rd", "pmu0.win")
    assert "sw(0,0).vec.out.E0" in kb.routes[0].route.outputs
    kb.route("pcu0.vout", "pmu1.win")
    with pytest.raises(KernelError) as e:
        kb.route("pmu2.rout", "pmu3.win")
    msg = str(e.value)
    assert msg.startswith("route conflict: no free vector path pmu2.rout -> pmu3.win"), msg
    assert "taken by: pcu0.vout -> pmu1.win holds sw(1,0).vec.out.E0" in msg, msg
    # the failed route left nothing behind: pmu3.win is still free for another producer
    kb.route("pcu3.vout", "pmu3.win")


def test_port_checks_name_units():
    kb = KernelBuilder(P, "t")
    with pytest.raises(KernelError, match="pcu9"):
        kb.route("agcu0.rd", "pcu9.vin0")
    with pytest.raises(KernelError, match=r"pcu0 has no port 'vin7'"):
        kb.route("agcu0.rd", "pcu0.vin7")
    with pytest.raises(KernelError, match=r"pcu0.vin0.*consumer"):
        kb.route("pcu0.vin0", "pmu0.win")
    with pytest.raises(KernelError, match=r"pcu1.sin0 is unreachable from agcu0.rd.*vector.*scalar"):
        kb.route("agcu0.rd", "pcu1.sin0")
    kb.route("agcu0.rd", "pcu0.vin0")
    with pytest.raises(KernelError, match=r"pcu0.vin0 would be driven twice: by agcu1.rd and already by agcu0.rd"):
        kb.route("agcu1.rd", "pcu0.vin0")
    with pytest.raises(KernelError, match=r"agcu0.rd is already the source"):
        kb.route("agcu0.rd", "pmu0.win")
    # route to a unit the kernel does not configure: refused at bitstream time
    with pytest.raises(KernelError, match=r"uses agcu0, which the kernel does not configure"):
        kb.to_bytes()


def test_unit_checks():
    kb = KernelBuilder(P, "t")
    kb.pcu(0, PcuConfig(P).counters(1))
    with pytest.raises(KernelError, match="pcu0 is configured twice"):
        kb.pcu("pcu0", PcuConfig(P))
    with pytest.raises(KernelError, match="no unit 'pmu4'"):
        kb.pmu(4, PmuConfig())
    with pytest.raises(KernelError, match="outside its region"):
        AgcuProgram.read(0, (8,), (1,), region=(0, 4)).writes(P)
    with pytest.raises(KernelError, match="outside its region"):
        AgcuProgram.read(P.hbm_beats - 2, (8,), (1,)).writes(P)


@pytest.mark.parametrize("p", [REDUCED_PARAMS, P, DEFAULT_PARAMS],
                         ids=["reduced", "2x4", "default"])
@pytest.mark.parametrize("pcus", [1, 2])
def test_gemv_bitstream(p, pcus):
    rows, cols = 128, 192
    w, x = make_data(rows, cols, 5)
    m, s = choose_requant(w, x)
    k = build_gemv(p, rows, cols, pcus=pcus, m=m, s=s)
    bs = Bitstream.from_bytes(k.to_bytes(), p)
    assert bs.metadata["rows"] == rows and bs.metadata["pcus"] == pcus
    routes = [(r["src"], r["dst"]) for r in bs.routes["routes"]]
    roles = k.roles
    if pcus == 1:
        assert routes == [("agcu0.rd", f"{roles['P']}.vin0"), ("agcu1.rd", f"{roles['M']}.win"),
                          (f"{roles['M']}.rout", f"{roles['P']}.vin1"),
                          (f"{roles['P']}.vout", "agcu2.wr")]
        names = {"agcu0", "agcu1", "agcu2", roles["P"], roles["M"]}
    else:
        assert (f"{roles['B']}.sout", f"{roles['A']}.sin0") in routes
        assert (f"{roles['A']}.sout", f"{roles['C']}.sin0") in routes
        assert ("agcu2.rd", [f"{roles['MB']}.win", f"{roles['MA']}.win"]) in routes
        assert (f"{roles['C']}.vout", "agcu3.wr") in routes
        names = {"agcu0", "agcu1", "agcu2", "agcu3", roles["A"], roles["B"], roles["C"],
                 roles["MA"], roles["MB"]}
        assert len(names) == 9
    from hdl.unitmap import unit_map
    by_name = {u.name: u.id for u in unit_map(p)}
    assert set(bs.kernels[0].units) == {by_name[n] for n in names}
    # the requant constants and the AGCU programs are in the config writes
    writes = {(w_.unit, w_.reg): w_.value for w_ in bs.writes}
    req = roles["P"] if pcus == 1 else roles["C"]
    assert writes[(by_name[req], PcuReg.POST_IMM)] == PcuConfig.requant_word(m, s)
    y_agcu = by_name["agcu2" if pcus == 1 else "agcu3"]
    assert writes[(y_agcu, AgcuReg.MODE)] == 1
    assert writes[(y_agcu, AgcuReg.BASE)] == k.layout.y // p.beat_bytes
    # W image: all of W, in the layout the AGCU programs read
    img = k.w_image(w)
    assert len(img) == rows * cols
    if k.w_layout == "row-major":
        assert img == w.tobytes()


def test_gemv_shape_errors():
    with pytest.raises(GemvError, match="multiple of 64"):
        build_gemv(P, 64, 100, pcus=1, m=1, s=0)
    with pytest.raises(GemvError, match="HBM"):
        build_gemv(P, 512, 1024, pcus=1, m=1, s=0)
    with pytest.raises(GemvError, match="cols >= 128"):
        build_gemv(P, 64, 64, pcus=2, m=1, s=0)


def test_requant_spreads_over_int8():
    w, x = make_data(256, 256, 3)
    m, s = choose_requant(w, x)
    y = golden(w, x, m, s)
    assert y.dtype == np.int8 and y.std() > 20
    assert np.array_equal(y, intops.requant(intops.gemv(w, x), m, s, 8))


def test_bitstream_size_limit():
    kb = small_kernel(P.replace(config_buffer_bytes=1024))
    with pytest.raises(KernelError, match="exceeds the config controller's 1024 B buffer"):
        kb.to_bytes()


def _agcu_beats(writes, unit):
    """Beat addresses of an AGCU program, from its config writes (Python model of hdl/agcu.py)."""
    from hdl.agcu import agcu_count_reg, agcu_stride_reg
    regs = {w_.reg: w_.value for w_ in writes if w_.unit == unit}
    counts, strides, k = [], [], 0
    while agcu_count_reg(k) in regs:
        counts.append(regs[agcu_count_reg(k)])
        s = regs[agcu_stride_reg(k)]
        strides.append(s - (1 << 32) if s >> 31 else s)
        k += 1
    addrs = [regs[AgcuReg.BASE]]
    for c, s in zip(counts, strides):
        addrs = [a + i * s for i in range(c) for a in addrs]
    lo, n = regs[AgcuReg.REGION_BASE], regs[AgcuReg.REGION_BEATS]
    assert all(lo <= a < lo + n for a in addrs)
    return addrs


@pytest.mark.parametrize("rows,cols,pcus", [(64, 64, 1), (128, 192, 2), (192, 128, 2),
                                            (64, 320, 2)])
def test_gemv_agcu_programs_stream_the_right_weights(rows, cols, pcus):
    """The weight AGCUs, reading the W image, deliver each PCU exactly its rows x column range,
    row by row; the x AGCU reads x; the y AGCU writes ceil(rows/64) beats at layout.y."""
    p = REDUCED_PARAMS
    w, x = make_data(rows, cols, 1)
    k = build_gemv(p, rows, cols, pcus=pcus, m=1, s=0)
    bs = Bitstream.from_bytes(k.to_bytes(), p)
    bb = p.beat_bytes
    hbm = bytearray(k.layout.end)
    img = k.w_image(w)
    hbm[k.layout.w:k.layout.w + len(img)] = img
    hbm[k.layout.x:k.layout.x + cols] = x.tobytes()
    from hdl.unitmap import unit_map
    ids = {u.name: u.id for u in unit_map(p)}

    def stream(agcu):
        return b"".join(bytes(hbm[a * bb:(a + 1) * bb]) for a in _agcu_beats(bs.writes, ids[agcu]))

    nb = cols // bb
    if pcus == 1:
        assert stream(k.roles["W"] if "W" in k.roles else "agcu0") == w.tobytes()
    else:
        kl = nb // 2
        assert stream(k.roles["WL"]) == np.ascontiguousarray(w[:, :kl * bb]).tobytes()
        assert stream(k.roles["WR"]) == np.ascontiguousarray(w[:, kl * bb:]).tobytes()
    assert stream(k.roles["x"]) == x.tobytes()
    y_addrs = _agcu_beats(bs.writes, ids[k.roles["y"]])
    assert y_addrs == list(range(k.layout.y // bb, k.layout.y // bb + -(-rows // bb)))


# ---- place: the role -> unit placer ----------------------------------------------------------


def brute_placements(p, pcus=(), pmus=(), agcus=(), fixed=None, edges=()):
    """Every assignment, sorted by (route length, index in the product of permutations): the
    original enumeration ``place`` must reproduce."""
    kinds = [("pcu", list(pcus)), ("pmu", list(pmus)), ("agcu", list(agcus))]
    pools = [list(itertools.permutations(units_of_kind(p, k), len(r))) for k, r in kinds]
    out = []
    for chosen in itertools.product(*pools):
        units = {r: u for (_, roles), us in zip(kinds, chosen) for r, u in zip(roles, us)}
        pos = {**(fixed or {}), **{r: u.pos for r, u in units.items()}}
        cost = sum(abs(pos[a][0] - pos[b][0]) + abs(pos[a][1] - pos[b][1]) for a, b in edges)
        out.append((cost, len(out), {r: u.name for r, u in units.items()}))
    out.sort(key=lambda c: c[:2])
    return [(c, names) for c, _, names in out]


def tried_placements(p, tries, **kw):
    """The candidates ``place`` hands to ``build``, in order (every one refused)."""
    seen = []

    def build(names):
        seen.append(dict(names))
        raise KernelError(f"refused #{len(seen)}")
    with pytest.raises(KernelError, match="no placement routes"):
        place(p, build=build, tries=tries, **kw)
    return seen


def length(p, names, fixed, edges):
    pos = {u.name: u.pos for u in itertools.chain(*(units_of_kind(p, k)
                                                     for k in ("pcu", "pmu", "agcu")))}
    at = {**(fixed or {}), **{r: pos[u] for r, u in names.items()}}
    return sum(abs(at[a][0] - at[b][0]) + abs(at[a][1] - at[b][1]) for a, b in edges)


SWIGLU_EDGES = [("ag", "PI"), ("PI", "MT"), ("ac", "MT"), ("ac", "MM"), ("MT", "PS"),
                ("au", "PS"), ("PS", "PR"), ("MM", "PR"), ("PR", "ao")]


def random_roles(rng, npcu, npmu, nagcu, extra):
    roles = ([f"P{i}" for i in range(npcu)] + [f"M{i}" for i in range(npmu)]
             + [f"a{i}" for i in range(nagcu)])
    order = roles[:]
    rng.shuffle(order)
    edges = [(order[rng.randrange(i)], order[i]) for i in range(1, len(order))]
    edges += [tuple(rng.sample(roles, 2)) for _ in range(extra)]
    return dict(pcus=roles[:npcu], pmus=roles[npcu:npcu + npmu], agcus=roles[npcu + npmu:],
                edges=edges)


def small_cases():
    rng = random.Random(7)
    yield REDUCED_PARAMS, dict(pcus=["PI", "PS", "PR"], pmus=["MT", "MM"],
                               agcus=["ag", "au", "ac", "ao"], edges=SWIGLU_EDGES)
    yield P, dict(pcus=["PI", "PS", "PR"], pmus=["MT", "MM"], agcus=["ag", "au", "ac", "ao"],
                  edges=SWIGLU_EDGES)
    # GEMV-like: AGCUs fixed at grid positions, a multicast, parallel edges
    yield REDUCED_PARAMS, dict(pcus=["A", "B", "C"], pmus=["MA", "MB"],
                               fixed={"x": (0, -1), "WL": (1, -1), "WR": (0, 3), "y": (1, 3)},
                               edges=[("WL", "B"), ("WR", "A"), ("x", "MA"), ("x", "MB"),
                                      ("MB", "B"), ("MA", "A"), ("B", "A"), ("A", "C"),
                                      ("C", "y"), ("A", "C")])
    yield P, dict(pcus=["P"], agcus=["al", "ao"], edges=[("al", "P"), ("P", "ao")])
    for p, shape in [(REDUCED_PARAMS, (3, 3, 2, 3)), (REDUCED_PARAMS, (2, 3, 4, 2)),
                     (P, (4, 3, 2, 2)), (P, (3, 3, 3, 4)), (P, (2, 4, 1, 0))]:
        yield p, random_roles(rng, *shape)
    # a role without edges, a self-edge
    yield P, dict(pcus=["P0", "P1"], pmus=["M0"], agcus=["a0", "a1"],
                  edges=[("a0", "P0"), ("P0", "M0"), ("P0", "P0"), ("M0", "a1")])


@pytest.mark.parametrize("case", list(range(len(list(small_cases())))))
def test_place_is_the_brute_force_order(case):
    """On small chips and role sets the candidates come in the order of sorting all
    permutations by route length (ties in some order), each exactly once, then no more."""
    p, kw = list(small_cases())[case]
    want = brute_placements(p, **kw)
    got = tried_placements(p, len(want) + 5, **kw)
    assert len(got) == len(want)
    lengths = [length(p, names, kw.get("fixed"), kw["edges"]) for names in got]
    assert lengths == [c for c, _ in want]
    key = lambda names: tuple(sorted(names.items()))                      # noqa: E731
    assert sorted(map(key, got)) == sorted(key(n) for _, n in want)
    # the first 20 again, with a tries limit: the same ones
    assert tried_placements(p, 20, **kw) == got[:20]


def test_place_local_phase_gives_each_candidate_once():
    """Past the exact search's budget (forced to 1 expansion here) the candidates come from a
    beam and a local search: each assignment exactly once, the first optimal on small cases."""
    for p, kw in list(small_cases())[:6]:
        want = brute_placements(p, **kw)
        for first, total in [(1, 1), (10**6, 3)]:      # beam seeds; local from exact ones
            pl = _Placer(p, kw.get("pcus", ()), kw.get("pmus", ()), kw.get("agcus", ()),
                         kw.get("fixed", {}), kw["edges"], KernelError)
            pl.exact_first, pl.exact_all = first, total
            got = list(pl.candidates())
            assert len(got) == len(want)
            assert sorted(map(lambda c: sorted(c[1].items()), got)) == \
                sorted(map(lambda c: sorted(c[1].items()), want))
            assert all(c == length(p, names, kw.get("fixed"), kw["edges"]) for c, names in got)
            assert got[0][0] == want[0][0]


# 6 PCU + 6 PMU + 4 AGCU dataflow graphs on the default chip, with their optimal route length
# (the exact search run to the end)
BIG_CASES = {
    "chain": (["a0"] + [x for i in range(6) for x in (f"M{i}", f"P{i}")] + ["a3"],
              [("a1", "P1"), ("a2", "P3")], 16),
    "branches": (None, [("a0", "M0"), ("M0", "P0"), ("P0", "P1"), ("a1", "M1"), ("M1", "P2"),
                        ("P2", "P3"), ("P1", "M2"), ("P3", "M3"), ("M2", "P4"), ("M3", "P4"),
                        ("P4", "M4"), ("M4", "P5"), ("a2", "M5"), ("M5", "P5"), ("P5", "a3")],
                 18),
    "multicast": (None, [("a2", "M0"), ("a2", "M1"), ("a2", "M2"), ("a0", "M3"), ("M3", "P0"),
                         ("M3", "P1"), ("a1", "P0"), ("a1", "P1"), ("P0", "P2"), ("P1", "P2"),
                         ("M0", "P2"), ("P2", "M4"), ("M4", "P3"), ("P3", "M5"), ("M5", "P4"),
                         ("M1", "P4"), ("P4", "P5"), ("M2", "P5"), ("P5", "a3")], 30),
}


@pytest.mark.parametrize("name", list(BIG_CASES))
def test_place_default_chip_is_fast(name):
    chain, extra, best = BIG_CASES[name]
    edges = (list(zip(chain, chain[1:])) if chain else []) + extra
    kw = dict(pcus=[f"P{i}" for i in range(6)], pmus=[f"M{i}" for i in range(6)],
              agcus=[f"a{i}" for i in range(4)], edges=edges)
    for k in ("pcu", "pmu", "agcu"):
        units_of_kind(DEFAULT_PARAMS, k)
    t0 = time.perf_counter()
    first = []

    def build(names):
        if not first:
            first.append(time.perf_counter() - t0)
        raise KernelError("refused")
    with pytest.raises(KernelError, match="300 candidates tried"):
        place(DEFAULT_PARAMS, build=build, tries=300, **kw)
    total = time.perf_counter() - t0
    # budgets: 50 ms / 1 s (measured ~3-30 ms / 30-60 ms); generous here for a loaded machine
    assert first[0] < 0.25 and total < 3, (first, total)
    got = tried_placements(DEFAULT_PARAMS, 300, **kw)
    lengths = [length(DEFAULT_PARAMS, n, None, edges) for n in got]
    assert lengths[0] == best
    assert lengths == sorted(lengths)
    assert len({tuple(sorted(n.items())) for n in got}) == 300
    for n in got:
        assert len(set(n.values())) == len(n)
        assert all(u.startswith({"P": "pcu", "M": "pmu", "a": "agcu"}[r[0]]) for r, u in n.items())


@pytest.mark.parametrize("name", list(BIG_CASES))
def test_place_default_chip_beam_fallback(name):
    """With no budget for the exact search (forced), the beam + local search still starts at
    the optimum on these graphs and gives 300 distinct valid candidates."""
    chain, extra, best = BIG_CASES[name]
    edges = (list(zip(chain, chain[1:])) if chain else []) + extra
    pl = _Placer(DEFAULT_PARAMS, [f"P{i}" for i in range(6)], [f"M{i}" for i in range(6)],
                 [f"a{i}" for i in range(4)], {}, edges, KernelError)
    pl.exact_first = pl.exact_all = 0
    got = list(itertools.islice(pl.candidates(), 300))
    assert got[0][0] == best
    assert all(c == length(DEFAULT_PARAMS, n, None, edges) for c, n in got)
    assert len({tuple(sorted(n.items())) for _, n in got}) == 300


def test_place_returns_first_that_routes():
    calls = []

    def build(names):
        calls.append(names)
        if len(calls) < 4:
            raise KernelError(f"conflict #{len(calls)}")
        return "kernel", names
    kw = dict(pcus=["PI", "PS", "PR"], pmus=["MT", "MM"], agcus=["ag", "au", "ac", "ao"],
              edges=SWIGLU_EDGES)
    got = place(P, build=build, **kw)
    assert got == ("kernel", calls[3])
    assert calls == tried_placements(P, 4, **kw)
    best = brute_placements(P, **kw)
    assert [length(P, n, None, SWIGLU_EDGES) for n in calls] == [c for c, _ in best[:4]]


def test_place_errors():
    class MyError(ValueError):
        pass

    def never(names):
        raise AssertionError("must not build")
    with pytest.raises(MyError, match="needs 5 PCUs; the chip has 4"):
        place(P, pcus=[f"P{i}" for i in range(5)], build=never, error=MyError)
    with pytest.raises(MyError, match="needs 5 AGCUs"):
        place(P, agcus=[f"a{i}" for i in range(5)], build=never, error=MyError)
    with pytest.raises(MyError, match="role 'Q' is neither placed"):
        place(P, pcus=["P"], edges=[("P", "Q")], build=never, error=MyError)
    with pytest.raises(MyError, match="role 'X' is named twice"):
        place(P, pcus=["X"], pmus=["X"], build=never, error=MyError)
    with pytest.raises(MyError, match="role 'x' is named twice"):
        place(P, pcus=["x"], fixed={"x": (0, -1)}, build=never, error=MyError)

    # nothing routes: the message gives the best candidate and its own route error, not only
    # the last one's
    def build(names):
        raise KernelError(f"route conflict: no free vector path for P at {names['P']}")
    with pytest.raises(MyError) as e:
        place(P, pcus=["P"], agcus=["al", "ao"], edges=[("al", "P"), ("P", "ao")],
              build=build, tries=5, error=MyError)
    msg = str(e.value)
    kw = dict(pcus=["P"], agcus=["al", "ao"], edges=[("al", "P"), ("P", "ao")])
    first = tried_placements(P, 5, **kw)[0]
    best = brute_placements(P, **kw)[0][0]
    assert length(P, first, None, kw["edges"]) == best
    assert f"5 candidates tried, lengths {best}.." in msg, msg
    shown = ", ".join(f"{r}={u}" for r, u in first.items())
    assert f"the best ({shown}; length {best}) failed with: route conflict: no free " \
           f"vector path for P at {first['P']}" in msg, msg

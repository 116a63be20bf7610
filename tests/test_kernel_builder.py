"""Kernel builder and GEMV bitstreams (no simulation)."""

import numpy as np
import pytest

from hdl.agcu import AgcuReg
from hdl.fabric import FabricTopology
from hdl.params import DEFAULT_PARAMS
from hdl.pcu import PcuConfig, PcuReg
from hdl.pmu import PmuConfig
from hdl.unitmap import unit_id
from sw import intops
from sw.bitstream import Bitstream
from sw.kernels.builder import AgcuProgram, KernelBuilder, KernelError
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

"""Bitstream format (sw/bitstream.py) and unit map (hdl/unitmap.py): round trips, every error
code from crafted inputs, and a seeded fuzz that the reader only ever raises BitstreamError."""

import json
import random
import struct
import zlib

import pytest

from hdl.params import DEFAULT_PARAMS, RduParams
from hdl.unitmap import (KINDS, REGS_PER_KIND, kind_ranges, regs_per_kind, unit_by_id, unit_id,
                         unit_map, units_of_kind)
from tb.bitfuzz import mutate, resign
from sw.bitstream import (HEADER_SIZE, MAGIC, Bitstream, BitstreamError, ConfigStatus,
                          ConfigWrite, Kernel, SectionType, check, crc32)

P = DEFAULT_PARAMS


def sample(seed=0, n=50, params=P, **kw):
    rng = random.Random(seed)
    units = unit_map(params)
    writes = [(u.id, rng.randrange(u.n_regs), rng.getrandbits(32))
              for u in (rng.choice(units) for _ in range(n))]
    kernels = [Kernel(3, "layer", (unit_id(params, "pcu", 0), unit_id(params, "sequencer")), 5, 1),
               Kernel(4, "lm_head", (unit_id(params, "agcu", 1),))]
    routes = {"units": {str(unit_id(params, "pcu", 0)): "gemv q"},
              "routes": [{"net": "vector", "src": "pmu0.out0", "dst": "pcu0.in0",
                          "hops": ["sw(0,1)", "sw(0,0)"]}]}
    return Bitstream.for_params(params, writes, kernels, {"model": "tiny", "mode": "looped"},
                                routes, **kw)


# ---- unit map ----------------------------------------------------------------------------------

def test_unit_map_default_geometry():
    units = unit_map(P)
    assert [u.id for u in units] == list(range(len(units)))
    counts = {k: len(units_of_kind(P, k)) for k in KINDS}
    assert counts == {"agcu": 4, "pcu": 8, "pmu": 8, "switch": 16, "sequencer": 1}
    assert len(units) == 37 and len(units) <= 256
    # Checkerboard: PCUs on even (r+c), PMUs on odd, switches on every tile, all distinct.
    assert all((u.pos[0] + u.pos[1]) % 2 == 0 for u in units_of_kind(P, "pcu"))
    assert all((u.pos[0] + u.pos[1]) % 2 == 1 for u in units_of_kind(P, "pmu"))
    tiles = {u.pos for u in units if u.kind in ("pcu", "pmu")}
    assert tiles == {u.pos for u in units_of_kind(P, "switch")} and len(tiles) == 16
    agcu_cols = {u.pos[1] for u in units_of_kind(P, "agcu")}
    assert agcu_cols == {-1, P.grid_cols}
    assert unit_by_id(P, unit_id(P, "pmu", 2)).name == "pmu2"
    assert unit_by_id(P, 37) is None
    for k, base, cnt, nregs in kind_ranges(P):
        assert 0 < nregs <= 256 and REGS_PER_KIND[k] == 64
        assert nregs == regs_per_kind(k)


def test_unit_map_odd_and_too_large_geometry():
    p = RduParams(grid_rows=3, grid_cols=3)
    assert len(units_of_kind(p, "pcu")) == 5 and len(units_of_kind(p, "pmu")) == 4
    with pytest.raises(ValueError, match="8-bit"):
        unit_map(RduParams(grid_rows=12, grid_cols=12))
    with pytest.raises(ValueError):
        unit_id(P, "pcu", 8)


# ---- round trip --------------------------------------------------------------------------------

def test_round_trip():
    bs = sample()
    data = bs.to_bytes()
    assert data[:4] == MAGIC and len(data) % 4 == 0
    assert int.from_bytes(data[8:12], "little") == len(data)
    assert zlib.crc32(data[:-4]) == int.from_bytes(data[-4:], "little")
    back = Bitstream.from_bytes(data, P)
    assert back == bs
    assert back.writes[0] == ConfigWrite(*sample().writes[0].__dict__.values())
    assert back.kernels[0] == Kernel(3, "layer", (4, 36), 5, 1)
    assert back.to_bytes() == data
    assert check(data, P) == ConfigStatus.OK
    # Layout rules: header is one beat, sections aligned, KERNELS on a beat.
    for s in back.sections:
        assert s.offset % 8 == 0 and s.offset >= HEADER_SIZE + 16 * len(back.sections)
        if s.type == SectionType.KERNELS:
            assert s.offset % 64 == 0 and s.length == 128


def test_empty_bitstream_and_exact_bytes():
    bs = Bitstream(P.digest())
    data = bs.to_bytes()
    back = Bitstream.from_bytes(data, P)
    assert back.writes == [] and back.kernels == [] and back.routes is None
    # Hand-check the header bytes of the spec.
    magic, ver, hs, total, flags, count = struct.unpack_from("<4sHHIIH", data)
    assert (magic, ver, hs, total, flags, count) == (b"RBIT", 1, 64, len(data), 0, 2)
    assert data[32:64] == P.digest()
    assert struct.unpack_from("<IIII", data, 64) == (1, 96, 0, 0)      # CONFIG, empty


def test_writer_rejects_out_of_range_fields():
    for w in [(256, 0, 0), (0, 256, 0), (0, 0, 2**32)]:
        with pytest.raises(ValueError):
            Bitstream(P.digest(), [w]).to_bytes()
    with pytest.raises(ValueError):
        Bitstream(P.digest(), kernels=[Kernel(0, "n" * 25)]).to_bytes()


# ---- every error code ----------------------------------------------------------------------------

def _sec(data, typ):
    n = int.from_bytes(data[16:18], "little")
    for i in range(n):
        t, o, ln, _ = struct.unpack_from("<IIII", data, 64 + 16 * i)
        if t == typ:
            return i, o, ln
    raise KeyError(typ)


def crafted():
    good = sample(n=20).to_bytes()
    ci, co, cl = _sec(good, SectionType.CONFIG)
    ki, ko, kl = _sec(good, SectionType.KERNELS)
    mi, mo, ml = _sec(good, SectionType.METADATA)
    n_units = len(unit_map(P))
    small = min(unit_map(P), key=lambda u: u.n_regs)
    assert small.n_regs < 256

    def patch(edits, sign=True):
        b = bytearray(good)
        for off, val in edits:
            b[off:off + len(val)] = val
        return resign(b) if sign else bytes(b)

    u32 = lambda v: v.to_bytes(4, "little")
    big = sample(n=20)
    big.metadata["pad"] = "z" * 20000
    geo = sample(n=20)
    geo.params_digest = P.replace(n_agcus=2).digest()
    empty = Bitstream(P.digest()).to_bytes()
    assert len(empty) < 64 + 16 * 3 + 4
    return {
        "too_large": (big.to_bytes(), ConfigStatus.TOO_LARGE),
        "empty": (b"", ConfigStatus.BAD_LENGTH),
        "short": (good[:67], ConfigStatus.BAD_LENGTH),
        "magic": (patch([(0, b"XBIT")]), ConfigStatus.BAD_MAGIC),
        "magic_unsigned": (patch([(3, b"U")], sign=False), ConfigStatus.BAD_MAGIC),
        "version": (patch([(4, b"\x02\x00")]), ConfigStatus.BAD_VERSION),
        "header_size": (patch([(6, b"\x80\x00")]), ConfigStatus.BAD_LENGTH),
        "truncated": (good[:-4], ConfigStatus.BAD_LENGTH),
        "extended": (good + b"\0" * 4, ConfigStatus.BAD_LENGTH),
        "odd_length": (patch([(8, u32(len(good) + 2))], sign=False) + b"\0\0",
                       ConfigStatus.BAD_LENGTH),
        "crc": (patch([(co + 5, b"\xff")], sign=False), ConfigStatus.BAD_CRC),
        "digest_flip": (patch([(40, b"\x00")], sign=False), ConfigStatus.BAD_CRC),
        "geometry": (geo.to_bytes(), ConfigStatus.BAD_GEOMETRY),
        "count": (patch([(16, b"\x09\x00")]), ConfigStatus.BAD_SECTION),
        "table_past_end": (resign(empty[:16] + b"\x03\x00" + empty[18:]),
                           ConfigStatus.BAD_SECTION),
        "type_zero": (patch([(64 + 16 * mi, u32(0))]), ConfigStatus.BAD_SECTION),
        "type_unknown": (patch([(64 + 16 * mi, u32(5))]), ConfigStatus.BAD_SECTION),
        "duplicate": (patch([(64 + 16 * mi, u32(SectionType.CONFIG))]), ConfigStatus.BAD_SECTION),
        "misaligned": (patch([(64 + 16 * mi + 4, u32(mo + 4))]), ConfigStatus.BAD_SECTION),
        "kernels_unaligned": (patch([(64 + 16 * ki + 4, u32(ko + 8))]), ConfigStatus.BAD_SECTION),
        "kernels_length": (patch([(64 + 16 * ki + 8, u32(kl - 8))]), ConfigStatus.BAD_SECTION),
        "config_length": (patch([(64 + 16 * ci + 8, u32(cl - 4))]), ConfigStatus.BAD_SECTION),
        "past_crc": (patch([(64 + 16 * mi + 8, u32(len(good) - mo))]), ConfigStatus.BAD_SECTION),
        "into_table": (patch([(64 + 16 * ci + 4, u32(64))]), ConfigStatus.BAD_SECTION),
        "offset_wrap": (patch([(64 + 16 * ci + 4, u32(0xFFFFFFF8))]), ConfigStatus.BAD_SECTION),
        "unknown_unit": (patch([(co + 8 * 7, bytes([n_units]))]), ConfigStatus.UNKNOWN_UNIT),
        "reg_range": (patch([(co + 8 * 3, bytes([small.id, small.n_regs]))]),
                      ConfigStatus.REG_OUT_OF_RANGE),
        "metadata_json": (patch([(mo, b"{{")]), ConfigStatus.BAD_SECTION),       # software-only
        "kernel_unit": (patch([(ko + 32 + 31, b"\x80")]), ConfigStatus.UNKNOWN_UNIT),  # sw-only
        "kernel_name": (patch([(ko + 8, b"\xff\xfe")]), ConfigStatus.BAD_SECTION),  # sw-only
    }


CRAFTED = crafted()
SOFTWARE_ONLY = {"metadata_json", "kernel_unit", "kernel_name"}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_error_codes(name):
    data, code = CRAFTED[name]
    with pytest.raises(BitstreamError) as ei:
        Bitstream.from_bytes(data, P)
    assert ei.value.code == code, str(ei.value)
    assert str(ei.value).startswith(code.name)
    assert check(data, P) == (ConfigStatus.OK if name in SOFTWARE_ONLY else code)


def test_all_codes_covered():
    assert {c for _, c in CRAFTED.values()} == set(ConfigStatus) - {ConfigStatus.OK}


def test_params_none_skips_geometry_and_units():
    data, _ = CRAFTED["geometry"]
    assert Bitstream.from_bytes(data, None).params_digest == P.replace(n_agcus=2).digest()


def test_buffer_size_from_argument():
    data = sample().to_bytes()
    assert check(data, P, buffer_bytes=len(data)) == ConfigStatus.OK
    assert check(data, P, buffer_bytes=len(data) - 1) == ConfigStatus.TOO_LARGE


# ---- fuzz ----------------------------------------------------------------------------------------

def test_fuzz_reader_only_raises_bitstream_error():
    rng = random.Random(20240601)
    bases = [sample(seed=s, n=n).to_bytes() for s, n in [(0, 50), (1, 3), (2, 0)]]
    bases.append(Bitstream(P.digest()).to_bytes())
    seen = set()
    for _ in range(2000):
        base = rng.choice(bases)
        data, _ = mutate(rng, base)
        for _ in range(rng.randint(0, 2)):
            if data:
                data, _ = mutate(rng, data)
        try:
            Bitstream.from_bytes(data, P)
            code = ConfigStatus.OK
        except BitstreamError as e:
            code = e.code
        seen.add(code)
        # check() agrees with from_bytes() except for software-only section contents.
        hw = check(data, P)
        assert hw == code or (hw == ConfigStatus.OK and code in (ConfigStatus.BAD_SECTION,
                                                                 ConfigStatus.UNKNOWN_UNIT))
    # The fuzz must reach deep checks, not only the CRC.
    for c in (ConfigStatus.BAD_LENGTH, ConfigStatus.BAD_CRC, ConfigStatus.BAD_SECTION,
              ConfigStatus.BAD_MAGIC, ConfigStatus.UNKNOWN_UNIT, ConfigStatus.REG_OUT_OF_RANGE):
        assert c in seen, (c, seen)


def test_fuzz_random_garbage():
    rng = random.Random(7)
    for _ in range(300):
        data = rng.randbytes(rng.randrange(0, 300))
        if rng.random() < 0.5 and len(data) >= 8:
            data = MAGIC + b"\x01\x00\x40\x00" + len(data).to_bytes(4, "little") + data[12:]
        try:
            Bitstream.from_bytes(data, P)
        except BitstreamError:
            pass
    with pytest.raises(TypeError):
        Bitstream.from_bytes("not bytes", P)


# ---- rdu inspect --------------------------------------------------------------------------------

def _rdu(capsys, *argv):
    from sw.cli import main
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_inspect_prints_everything(tmp_path, capsys):
    f = tmp_path / "k.rbit"
    bs = sample(n=6, flags=1)
    f.write_bytes(bs.to_bytes())
    rc, out, err = _rdu(capsys, "inspect", str(f))
    assert rc == 0 and err == ""
    assert "matches default RduParams" in out and "crc-32" in out and "ok" in out
    for t in ("CONFIG", "KERNELS", "METADATA", "ROUTES", "LOOPED"):
        assert t in out
    for w in bs.writes:
        u = unit_by_id(P, w.unit)
        assert f"{u.name:<10} id {w.unit:>3}" in out and f"0x{w.value:08x}" in out
    assert "'layer', looped x5" in out and "pmu0.out0 -> pcu0.in0" in out
    assert "gemv q" in out and "model: tiny" in out
    # Register names come from the unit module where it defines them.
    from hdl.unitmap import register_enum
    agcu_regs = register_enum("agcu")
    if agcu_regs is not None:
        g = Bitstream.for_params(P, [(unit_id(P, "agcu", 0), int(list(agcu_regs)[0]), 1)])
        f.write_bytes(g.to_bytes())
        rc, out, _ = _rdu(capsys, "inspect", str(f))
        assert rc == 0 and list(agcu_regs)[0].name in out


def test_inspect_other_geometry(tmp_path, capsys):
    p2 = RduParams(grid_rows=2, grid_cols=2)
    f = tmp_path / "g.rbit"
    f.write_bytes(sample(n=4, params=p2).to_bytes())
    rc, out, _ = _rdu(capsys, "inspect", str(f))
    assert rc == 0 and "does NOT match default RduParams" in out and "2x2 grid" in out
    rc, out, err = _rdu(capsys, "inspect", str(f), "--params-default")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("rdu: error:") and "BAD_GEOMETRY" in err
    # Without usable params in METADATA the geometry cannot be recovered.
    bs = sample(n=4, params=p2)
    bs.metadata.pop("params")
    f.write_bytes(bs.to_bytes())
    rc, _, err = _rdu(capsys, "inspect", str(f))
    assert rc == 2 and "BAD_GEOMETRY" in err and err.count("\n") == 1


@pytest.mark.parametrize("name", ["crc", "truncated", "magic", "unknown_unit", "metadata_json"])
def test_inspect_bad_files_one_line(tmp_path, capsys, name):
    data, code = CRAFTED[name]
    f = tmp_path / "bad.rbit"
    f.write_bytes(data)
    rc, out, err = _rdu(capsys, "inspect", str(f))
    assert rc == 2 and out == ""
    assert err.startswith("rdu: error:") and err.count("\n") == 1 and code.name in err


def test_inspect_fuzzed_files_never_traceback(tmp_path, capsys):
    rng = random.Random(3)
    base = sample(n=10).to_bytes()
    f = tmp_path / "f.rbit"
    for _ in range(60):
        data, _ = mutate(rng, base)
        f.write_bytes(data)
        rc, out, err = _rdu(capsys, "inspect", str(f))
        assert rc in (0, 2)
        if rc == 2:
            assert err.startswith("rdu: error:") and err.count("\n") == 1
    rc, _, err = _rdu(capsys, "inspect", str(tmp_path / "missing.rbit"))
    assert rc == 2 and "cannot read" in err

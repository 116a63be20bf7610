"""Config controller (hdl/config.py) in Amaranth's simulator, against the Python reader.

Small buffer (1 KiB) to keep the simulations short. Every case checks the status, the exact
sequence of config-bus writes (none at all for a refused bitstream) and the cycle contract.
"""

import random
import zlib

import pytest
from amaranth.lib import crc as amcrc
from amaranth.sim import Simulator

from hdl.config import ConfigController, crc32_matrix, crc32_step, crc32_step_int
from hdl.params import RduParams
from hdl.unitmap import unit_id, unit_map
from sw.bitstream import Bitstream, ConfigStatus, Kernel, check

P = RduParams(hbm_bytes=64 * 1024)
BUF = 1024


def beats_of(data: bytes, beat_bytes=64):
    padded = data + bytes(-len(data) % beat_bytes)
    return [int.from_bytes(padded[i:i + beat_bytes], "little")
            for i in range(0, len(padded), beat_bytes)]


def run_load(data: bytes, *, length=None, gaps=0.0, seed=0, kt_reads=(), timeout=5000,
             crc_style="mask"):
    """Load ``data`` into a fresh controller. Returns dict(status, writes, cycles, kernels)."""
    dut = ConfigController(P, buffer_bytes=BUF, crc_style=crc_style)
    rng = random.Random(seed)
    out = {}

    async def bench(ctx):
        L = len(data) if length is None else length
        ctx.set(dut.length, L)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        beats = beats_of(data)[:(L + 63) // 64]
        beats += [0] * ((L + 63) // 64 - len(beats))
        writes, cycles, i = [], 1, 0
        assert ctx.get(dut.busy)
        while True:
            present = i < len(beats) and rng.random() >= gaps
            ctx.set(dut.data.valid, present)
            if present:
                ctx.set(dut.data.payload, beats[i])
            _, _, ready, we, unit, addr, wdata, done, busy = await ctx.tick().sample(
                dut.data.ready, dut.cfg.we, dut.cfg.unit, dut.cfg.addr, dut.cfg.data,
                dut.done, dut.busy)
            cycles += 1
            if present and ready:
                i += 1
            if we:
                writes.append((unit, addr, wdata))
            if done:
                assert not busy, "busy must fall with done"
                break
            assert cycles < timeout, "controller hung"
        assert i == len(beats), f"controller accepted {i} of {len(beats)} beats"
        ctx.set(dut.data.valid, 0)
        out.update(status=ConfigStatus(ctx.get(dut.status)), writes=writes, cycles=cycles,
                   n_writes=ctx.get(dut.writes), kt_count=ctx.get(dut.kt_count))
        kts = []
        for k in kt_reads:
            ctx.set(dut.kt_addr, k)
            await ctx.tick()
            kts.append(ctx.get(dut.kt_data))
        out["kernels"] = kts

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    return out


def make(n_writes=20, seed=1, kernels=(), **kw):
    rng = random.Random(seed)
    units = unit_map(P)
    writes = []
    for _ in range(n_writes):
        u = rng.choice(units)
        writes.append((u.id, rng.randrange(u.n_regs), rng.getrandbits(32)))
    # No params dict in METADATA: keeps the files small whatever RduParams grows to.
    return Bitstream(P.digest(), writes, list(kernels), {"model": "t"}, **kw)


def resign(b: bytearray) -> bytes:
    """Recompute the CRC so that a crafted defect is seen by the checks after the CRC."""
    b[-4:] = (zlib.crc32(bytes(b[:-4])) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(b)


# ---- CRC networks ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [8, 32, 512])
def test_crc_network_matches_zlib_and_amaranth(n):
    rng = random.Random(n)
    ref = amcrc.catalog.CRC32_ETHERNET(n)
    for _ in range(5):
        words = [rng.getrandbits(n) for _ in range(3)]
        state = 0xFFFFFFFF
        for w in words:
            state = crc32_step_int(state, w, n)
        raw = b"".join(w.to_bytes(n // 8, "little") for w in words)
        assert state ^ 0xFFFFFFFF == zlib.crc32(raw) == ref.compute(raw if n == 8 else words)
    assert len(crc32_matrix(n)) == 32


@pytest.mark.parametrize("n", [32, 512])
def test_crc_netlists_match_model(n):
    """Both netlist styles of crc32_step compute crc32_step_int (hence zlib) in simulation."""
    from amaranth import Module, Signal
    state, data = Signal(32), Signal(n)
    outs = {s: Signal(32, name=f"out_{s}") for s in ("cat", "mask")}
    m = Module()
    for s, o in outs.items():
        m.d.comb += o.eq(crc32_step(state, data, s))
    rng = random.Random(n)

    async def bench(ctx):
        for _ in range(4):
            st, d = rng.getrandbits(32), rng.getrandbits(n)
            ctx.set(state, st)
            ctx.set(data, d)
            want = crc32_step_int(st, d, n)
            assert [ctx.get(o) for o in outs.values()] == [want, want]

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


# ---- good bitstreams ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_writes,gaps", [(0, 0.0), (1, 0.0), (37, 0.0), (37, 0.4)])
def test_valid_bitstream_replays_exact_writes(n_writes, gaps):
    bs = make(n_writes, seed=n_writes)
    data = bs.to_bytes()
    assert check(data, P, BUF) == ConfigStatus.OK
    r = run_load(data, gaps=gaps, seed=n_writes)
    assert r["status"] == ConfigStatus.OK
    assert r["writes"] == [(w.unit, w.reg, w.value) for w in bs.writes]
    assert r["n_writes"] == n_writes
    if gaps == 0.0:
        # Cycle contract of the docstring: B + R + C + 2S + ~25 from start to done.
        secs = Bitstream.from_bytes(data, P, buffer_bytes=BUF).sections
        cfg = next(s for s in secs if s.type == 1)
        C = (cfg.offset + cfg.length + 63) // 64 - cfg.offset // 64 if cfg.length else 0
        B, S = (len(data) + 63) // 64, len(secs)
        assert r["cycles"] <= B + n_writes + C + 2 * S + 25, r["cycles"]


def test_valid_bitstream_with_verilator_crc_netlist():
    bs = make(6, seed=6)
    r = run_load(bs.to_bytes(), crc_style="cat")
    assert r["status"] == ConfigStatus.OK
    assert r["writes"] == [(w.unit, w.reg, w.value) for w in bs.writes]


def test_kernel_table_read_port():
    ks = [Kernel(7, "layer", (unit_id(P, "pcu", 0), unit_id(P, "pmu", 1)), 5, 1),
          Kernel(8, "head", (unit_id(P, "agcu", 3),), 1, 0)]
    bs = make(5, kernels=ks)
    data = bs.to_bytes()
    r = run_load(data, kt_reads=[0, 1])
    assert r["status"] == ConfigStatus.OK and r["kt_count"] == 2
    sec = {s.type: s for s in Bitstream.from_bytes(data, P, buffer_bytes=BUF).sections}[2]
    for k in range(2):
        o = sec.offset + 64 * k
        assert r["kernels"][k] == int.from_bytes(data[o:o + 64], "little")


def test_bitstream_filling_buffer_exactly():
    # Pad METADATA until the file is exactly BUF bytes.
    bs = make(10)
    bs.metadata["pad"] = ""
    while len(bs.to_bytes()) < BUF:
        bs.metadata["pad"] += "x"
    data = bs.to_bytes()
    assert len(data) == BUF, len(data)
    r = run_load(data)
    assert r["status"] == ConfigStatus.OK and len(r["writes"]) == 10


# ---- refused bitstreams: right code, zero writes -----------------------------------------------

def _bad_cases():
    good = make(12, seed=3).to_bytes()
    units = unit_map(P)
    cfg_off = int.from_bytes(good[64 + 4:64 + 8], "little")   # section 0 is CONFIG
    cases = {}
    big = make(12, seed=3)
    big.metadata["pad"] = "y" * BUF
    cases["too_large"] = (big.to_bytes(), None, ConfigStatus.TOO_LARGE)
    cases["empty"] = (b"", None, ConfigStatus.BAD_LENGTH)
    cases["short"] = (good[:40], None, ConfigStatus.BAD_LENGTH)
    cases["magic"] = (b"RBIX" + good[4:], None, ConfigStatus.BAD_MAGIC)
    b = bytearray(good); b[4] = 2
    cases["version"] = (bytes(b), None, ConfigStatus.BAD_VERSION)
    cases["truncated"] = (good[:-8], None, ConfigStatus.BAD_LENGTH)
    cases["extended"] = (good + bytes(8), None, ConfigStatus.BAD_LENGTH)
    cases["host_length_short"] = (good, len(good) - 4, ConfigStatus.BAD_LENGTH)
    b = bytearray(good); b[6] = 48
    cases["header_size"] = (resign(b), None, ConfigStatus.BAD_LENGTH)
    b = bytearray(good); b[cfg_off + 4] ^= 1
    cases["crc_payload"] = (bytes(b), None, ConfigStatus.BAD_CRC)
    b = bytearray(good); b[-1] ^= 0x80
    cases["crc_field"] = (bytes(b), None, ConfigStatus.BAD_CRC)
    other = make(12, seed=3)
    other.params_digest = P.replace(grid_rows=2).digest()
    cases["geometry"] = (other.to_bytes(), None, ConfigStatus.BAD_GEOMETRY)
    b = bytearray(good); b[16] = 9
    cases["too_many_sections"] = (resign(b), None, ConfigStatus.BAD_SECTION)
    b = bytearray(good); b[64 + 16] = 9      # section 1 type
    cases["section_type"] = (resign(b), None, ConfigStatus.BAD_SECTION)
    b = bytearray(good); b[64 + 16] = 1      # second CONFIG
    cases["section_duplicate"] = (resign(b), None, ConfigStatus.BAD_SECTION)
    b = bytearray(good); b[64 + 4] += 4      # CONFIG offset misaligned
    cases["section_align"] = (resign(b), None, ConfigStatus.BAD_SECTION)
    b = bytearray(good); b[64 + 8:64 + 12] = (len(good)).to_bytes(4, "little")
    cases["section_past_end"] = (resign(b), None, ConfigStatus.BAD_SECTION)
    b = bytearray(good); b[64 + 8] -= 4
    cases["config_length"] = (resign(b), None, ConfigStatus.BAD_SECTION)
    b = bytearray(good); b[64 + 4:64 + 8] = (64).to_bytes(4, "little")
    cases["section_overlaps_table"] = (resign(b), None, ConfigStatus.BAD_SECTION)
    b = bytearray(good); b[cfg_off + 8 * 11] = len(units)
    cases["unknown_unit"] = (resign(b), None, ConfigStatus.UNKNOWN_UNIT)
    b = bytearray(good); b[cfg_off + 8 * 5] = 0; b[cfg_off + 8 * 5 + 1] = units[0].n_regs
    cases["reg_range"] = (resign(b), None, ConfigStatus.REG_OUT_OF_RANGE)
    b = bytearray(good); b[cfg_off] = 255; b[cfg_off + 8 + 1] = 255
    cases["first_bad_record_wins"] = (resign(b), None, ConfigStatus.UNKNOWN_UNIT)
    b = bytearray(good); b[cfg_off + 8 * 9] = 0; b[cfg_off + 8 * 9 + 1] = 255
    b[cfg_off + 8 * 10] = 255
    cases["first_bad_record_wins_reg"] = (resign(b), None, ConfigStatus.REG_OUT_OF_RANGE)
    b = bytearray(good); b[cfg_off + 8 * 11 + 1] = 255
    cases["last_record_bad"] = (resign(b), None, ConfigStatus.REG_OUT_OF_RANGE)
    return cases


BAD = _bad_cases()


@pytest.mark.parametrize("name", sorted(BAD))
def test_refused_bitstream_writes_nothing(name):
    data, length, code = BAD[name]
    if length is None:
        assert check(data, P, BUF) == code, "reader disagrees with the test's expectation"
    r = run_load(data, length=length)
    assert r["status"] == code
    assert r["writes"] == [] and r["n_writes"] == 0
    assert r["kt_count"] == 0


def test_every_status_code_is_exercised():
    assert {c for _, _, c in BAD.values()} == set(ConfigStatus) - {ConfigStatus.OK}

"""Config controller under cocotb + Verilator: ~100 fuzzed bitstreams, each judged by the
Python reader (sw.bitstream.check): same status, the exact writes for a good one, none for a bad
one, no hang. Also reports the cycle count of a full 4 KiB bitstream."""

import json
import random

import pytest

from hdl.config import ConfigController
from hdl.params import DEFAULT_PARAMS
from hdl.unitmap import unit_map
from sw.bitstream import Bitstream, ConfigStatus, check
from tb.bitfuzz import mutate, raw_config_writes
from tb.runner import build, check_results, run

P = DEFAULT_PARAMS
BUF = 4096
SEED = 20240611


def _bitstream(rng, n_writes, pad=0):
    units = unit_map(P)
    writes = [(u.id, rng.randrange(u.n_regs), rng.getrandbits(32))
              for u in (rng.choice(units) for _ in range(n_writes))]
    md = {"model": "fuzz"}
    if pad:
        md["pad"] = "p" * pad
    return Bitstream(P.digest(), writes, [], md).to_bytes()


def _full_4k(rng):
    """A valid bitstream of exactly 4096 bytes, almost all config records."""
    n = 300
    while len(_bitstream(random.Random(0), n + 1, pad=1)) <= BUF:
        n += 1
    pad = 1
    data = _bitstream(random.Random(0), n, pad)
    while len(data) < BUF:
        pad += 1
        data = _bitstream(random.Random(0), n, pad)
    assert len(data) == BUF
    return data


def make_cases(seed=SEED, n=100):
    rng = random.Random(seed)
    bases = [_bitstream(rng, k) for k in (0, 3, 40, 200)]
    full = _full_4k(rng)
    cases = [{"name": "full_4k", "data": full, "gaps": 0.0}]
    for k, b in enumerate(bases):
        cases.append({"name": f"good{k}", "data": b, "gaps": 0.3})
    cases.append({"name": "too_large", "data": full + bytes(64), "gaps": 0.0})
    while len(cases) < n:
        data, kind = mutate(rng, rng.choice(bases + [full]))
        if rng.random() < 0.2 and data:
            data, k2 = mutate(rng, data)
            kind += "+" + k2
        cases.append({"name": f"{len(cases)}:{kind}", "data": data, "gaps": rng.choice([0, 0.2])})
    out = []
    for c in cases:
        status = check(c["data"], P, buffer_bytes=BUF)
        writes = raw_config_writes(c["data"]) if status == ConfigStatus.OK else []
        out.append({"name": c["name"], "data": c["data"].hex(), "status": int(status),
                    "writes": writes, "gaps": c["gaps"]})
    return out


@pytest.mark.verilator
def test_config_controller_fuzz(tmp_path):
    cases = make_cases()
    codes = {c["status"] for c in cases}
    # The fuzz must reach the checks behind the CRC, not only the CRC itself.
    for code in (ConfigStatus.OK, ConfigStatus.BAD_CRC, ConfigStatus.BAD_LENGTH,
                 ConfigStatus.BAD_SECTION, ConfigStatus.UNKNOWN_UNIT,
                 ConfigStatus.REG_OUT_OF_RANGE, ConfigStatus.TOO_LARGE):
        assert code in codes, f"fuzz cases never produce {code.name}"
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    b = build(ConfigController(P, buffer_bytes=BUF), "config_ctrl")
    result = tmp_path / "result.json"
    xml = run(b, "tb.config_tb", test_dir=tmp_path, env={"MINIRDU_ARGS": json.dumps(
        {"cases": str(tmp_path / "cases.json"), "seed": SEED, "result": str(result)})})
    check_results(xml)
    r = json.loads(result.read_text())
    full = next(c for c in r["cases"] if c["name"] == "full_4k")
    # The cycle contract of hdl/config.py: B + R + C + 2S + 25 (C = beats of the CONFIG section).
    data = bytes.fromhex(cases[0]["data"])
    secs = Bitstream.from_bytes(data, P, buffer_bytes=BUF).sections
    cfg = next(s for s in secs if s.type == 1)
    n_rec = cfg.length // 8
    c_beats = (cfg.offset + cfg.length + 63) // 64 - cfg.offset // 64
    bound = len(data) // 64 + n_rec + c_beats + 2 * len(secs) + 25
    assert full["cycles"] <= bound, (full["cycles"], bound)
    print(f"\nconfig controller: build {b.build_seconds:.1f}s (cached={b.cached}); "
          f"4 KiB bitstream ({len(raw_config_writes(bytes.fromhex(cases[0]['data'])))} writes) "
          f"loads in {full['cycles']} cycles; {len(cases)} bitstreams, {r['sim_cycles']} cycles "
          f"in {r['wall_seconds']:.1f}s")

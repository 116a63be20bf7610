"""``rdu bench`` on the Verilator chip: the --quick smoke run (every file written, the figures
sane; never a speed assertion) and the launch-overhead sweep checked against real runs."""

import json

import pytest

from sw.bench.decode import LAUNCH_OVERHEAD, LAUNCH_SWEEP_CYCLES, MODES, launch_sweep
from sw.bench.plots import attribution_parts
from sw.cli import main
from sw.frontend.hf import save_hf
from sw.model import LlamaConfig, random_model
from sw.runtime.sim import run_decode

pytestmark = [pytest.mark.verilator, pytest.mark.slow]

PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_bench_writes_every_file(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    for name in ("modes.json", "launch_sweep.json", "sweeps.json", "simspeed.json",
                 "SUMMARY.md", "roofline.png", "attribution.png", "launch_sweep.png",
                 "sweeps.png"):
        assert (out / name).exists(), name
    for name in ("roofline.png", "attribution.png", "launch_sweep.png", "sweeps.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name

    modes = json.loads((out / "modes.json").read_text())
    (d,) = modes["shapes"]
    n_layers = d["config"]["n_layers"]
    want_launches = {"op": 1 + 17 * n_layers + 3, "layer": 1 + n_layers + 1, "looped": 3}
    for mode in MODES:
        r = d["modes"][mode]
        assert r["available"] and r["bit_exact"], mode
        assert r["launches_per_token"] == want_launches[mode]
        assert 0 < r["hbm_utilization"] <= r["hbm_utilization_chip_busy"] < 1
        assert r["attribution"]["launch"] == LAUNCH_OVERHEAD * r["launches_per_token"]
        parts = attribution_parts(r["attribution"])
        assert all(k != "other" for k, _, _ in parts), parts
        assert abs(sum(c for _, _, c in parts) - r["cycles_per_token"]) <= 1.0
        assert 0 < r["ops_per_token"] / r["cycles_per_token"] < modes[
            "compute_peak_ops_per_cycle"]
    cyc = {m: d["modes"][m]["cycles_per_token"] for m in MODES}
    assert d["speedup"]["looped_vs_op"] == pytest.approx(cyc["op"] / cyc["looped"], abs=1e-3)

    sweep = json.loads((out / "launch_sweep.json").read_text())
    rows = {r["launch_overhead_cycles"]: r for r in sweep["shapes"][0]["rows"]}
    assert sorted(rows) == sorted(LAUNCH_SWEEP_CYCLES)
    for mode in MODES:                  # the measured point is on the swept line
        assert rows[LAUNCH_OVERHEAD]["cycles_per_token"][mode] == cyc[mode]

    sweeps = json.loads((out / "sweeps.json").read_text())
    ctx = sweeps["context"]
    assert [r["cached_positions"] for r in ctx] == [0, 192]
    assert [r["positions_attended"] for r in ctx] == [1, 193]
    assert ctx[1]["hbm_bytes_per_token"] > ctx[0]["hbm_bytes_per_token"]   # K/V rows read
    assert {r["mode"] for r in sweeps["bandwidth"]} == set(MODES)

    sim = json.loads((out / "simspeed.json").read_text())
    assert sim["outputs_equal"] and sim["kernel"]["iterations"] == n_layers
    assert sim["verilator"]["kernel"]["cycles"] == sim["amaranth"]["kernel"]["cycles"] > 0
    assert sim["verilator"]["kernel"]["cycles_per_second"] > 0
    assert sim["amaranth"]["kernel"]["cycles_per_second"] > 0

    summary = (out / "SUMMARY.md").read_text()
    assert "| looped | 3 |" in summary and "![roofline](roofline.png)" in summary


@pytest.mark.parametrize("mode", ["op", "looped"])
def test_launch_sweep_matches_a_real_run(tmp_path, mode):
    """The sweep's arithmetic against a second real decode at another launch overhead: the
    launch wait is charged, not simulated, so the prediction must be exact."""
    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=4, hidden_dim=64,
                      vocab_size=256, max_seq_len=16)
    folder = save_hf(random_model(cfg, seed=7, name="tiny"), tmp_path / "tiny")
    runs = {}
    for L in (4000, 1000):
        res = run_decode(folder, prompt_ids=[1], tokens=1, mode=mode, out=tmp_path / f"L{L}",
                         launch_overhead_cycles=L, progress=False)
        assert res["bit_exact"]
        runs[L] = res
    rec = {"cycles_per_token": runs[4000]["cycles_per_token"],
           "launches_per_token": runs[4000]["kernel_launches_per_token"],
           "launch_overhead_cycles": 4000}
    assert launch_sweep(rec, (1000,))[1000] == runs[1000]["cycles_per_token"]

"""The HBM benchmark at reduced size: every pattern runs on the real memory system, data is
checked inside the testbench, and the figures are sane (not a speed assertion)."""

import json

import pytest

from sw.bench.hbm import format_table, run_bench

pytestmark = pytest.mark.verilator


def test_hbm_bench_quick(tmp_path):
    res = run_bench(tmp_path, scale=1 / 16, seed=5)
    data = json.loads((tmp_path / "hbm.json").read_text())
    assert set(data["patterns"]) == {"sequential", "sequential_interleaved", "sequential_2agcu", "strided", "kv_mixed"}
    for name, r in data["patterns"].items():
        for key in ("peak_bytes_per_cycle", "sustained_bytes_per_cycle", "utilization",
                    "latency_mean_cycles", "latency_p99_cycles", "sim_cycles_per_second"):
            assert r[key] is not None, (name, key)
        assert 0 < r["utilization"] <= 1.0, (name, r["utilization"])
        assert r["latency_mean_cycles"] >= data["params"]["hbm_read_latency"], name
        assert r["latency_p99_cycles"] >= r["latency_mean_cycles"] - 4, name
    # Single-beat strided bursts cannot beat full-burst sequential streaming.
    assert data["patterns"]["strided"]["utilization"] < data["patterns"]["sequential"]["utilization"]
    assert data["patterns"]["kv_mixed"]["write_beats"] > 0
    print(format_table(res))

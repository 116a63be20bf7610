"""HBM memory-system benchmark: the access patterns and the runner.

Patterns (each AGCU reads or writes through the real memory system; sinks and sources stand in
for the fabric):

- ``sequential``: the weight-streaming pattern. All AGCUs stream disjoint contiguous regions,
  which together cover ``span`` beats. This is what decode does with the weights.
- ``sequential_interleaved``: one sequential stream split across all AGCUs at burst
  granularity (how the compiler splits one weight matrix): all AGCUs walk the same rows.
- ``sequential_2agcu``: the same with only two AGCUs (one beat/cycle each = the peak of two
  channels only if both stay busy).
- ``strided``: every AGCU reads one beat every ``stride`` beats (a column walk): single-beat
  bursts, row misses every few accesses.
- ``kv_mixed``: the KV-cache pattern. Three AGCUs stream reads (weights and cached K/V) while
  the fourth appends sequential writes (new K/V rows) at a lower rate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from hdl.params import DEFAULT_PARAMS, RduParams

__all__ = ["patterns", "run_bench", "format_table"]


def patterns(p: RduParams, scale: float = 1.0) -> list[dict]:
    n = p.n_agcus
    span = max(n * p.hbm_burst_beats, int(p.hbm_beats * scale) // (n * 64) * (n * 64))
    q = span // n

    def rd(base, count, stride=1):
        return {"mode": "read", "base": base, "counts": [count], "strides": [stride]}

    seq = {"name": "sequential", "description": f"{n} AGCUs stream {span} contiguous beats",
           "agcus": [rd(i * q, q) for i in range(n)]}
    bb = p.hbm_burst_beats
    inter = {"name": "sequential_interleaved",
             "description": f"{n} AGCUs stream {span} contiguous beats, burst-interleaved "
                            f"(AGCU i takes bursts i, i+{n}, ...)",
             "agcus": [{"mode": "read", "base": i * bb, "counts": [bb, span // (n * bb)],
                        "strides": [1, n * bb]} for i in range(n)]}
    half = span // 2
    seq2 = {"name": "sequential_2agcu", "description": f"2 AGCUs stream {span} contiguous beats",
            "agcus": [rd(0, half), rd(half, half)]}
    stride = 8
    strided = {"name": "strided",
               "description": f"{n} AGCUs read 1 beat every {stride} beats",
               "agcus": [rd(i * q, q // stride, stride) for i in range(n)]}
    wq = q // 8
    kv = {"name": "kv_mixed",
          "description": f"{n - 1} AGCUs stream reads, 1 AGCU appends {wq} beats of writes",
          "agcus": [rd(i * q, q) for i in range(n - 1)]
          + [{"mode": "write", "base": (n - 1) * q, "counts": [wq], "strides": [1]}],
          "gap": 0}
    return [seq, inter, seq2, strided, kv]


def run_bench(out: Path, params: RduParams = DEFAULT_PARAMS, scale: float = 1.0,
              seed: int = 1, preload_beats: int = 512) -> dict:
    from tb.hbm_bench_top import HbmBenchTop
    from tb.runner import build, check_results, run

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    b = build(HbmBenchTop(params), "hbm_bench")
    build_s = time.monotonic() - t0
    raw = out / "hbm_raw.json"
    args = {"params": params.to_dict(), "patterns": patterns(params, scale), "seed": seed,
            "preload_beats": preload_beats, "result": str(raw.resolve())}
    t1 = time.monotonic()
    check_results(run(b, "tb.hbm_bench_tb", env={"MINIRDU_ARGS": json.dumps(args)},
                      test_dir=out))
    rows = json.loads(raw.read_text())
    raw.unlink()
    result = {
        "params": params.to_dict(),
        "verilator_build_seconds": round(build_s, 2),
        "build_cached": b.cached,
        "run_seconds": round(time.monotonic() - t1, 2),
        "scale": scale,
        "patterns": {r["name"]: r for r in rows},
    }
    (out / "hbm.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    head = (f"{'pattern':<22} {'MB':>6} {'cycles':>8} {'B/cycle':>8} {'peak':>5} {'util':>6} "
            f"{'lat mean':>8} {'lat p99':>7} {'row miss':>8} {'sim cyc/s':>9}")
    lines = [head]
    for r in result["patterns"].values():
        lines.append(
            f"{r['name']:<22} {r['bytes_moved'] / 1e6:>6.2f} {r['cycles']:>8d} "
            f"{r['sustained_bytes_per_cycle']:>8.1f} {r['peak_bytes_per_cycle']:>5d} "
            f"{r['utilization']:>6.1%} {r['latency_mean_cycles'] or 0:>8.1f} "
            f"{str(r['latency_p99_cycles']):>7} {r['row_misses']:>8d} "
            f"{r['sim_cycles_per_second'] or 0:>9.0f}")
    return "\n".join(lines)

"""pytest entry: build the whole fabric (4 x 4 grid: 8 PCUs, 8 PMUs, 16 switches) with
traffic hardware on its AGCU ports (:mod:`tb.fabric_top`) under Verilator and run
:mod:`tb.fabric_tb` on it. ``SEED`` (env) selects the random routes and back-pressure.

Prints the Verilator build time (0 when the cached build is reused) and the simulated
cycles per second of the run.
"""

import json
import os
import time

import pytest

from hdl.params import RduParams
from tb.fabric_top import FabricTop
from tb.runner import build, check_results, run

pytestmark = pytest.mark.verilator

# The regression runs a 2 x 2 grid of 4-lane units (every unit and network kind, AGCU ports on
# both edges): its Verilator build takes ~4.5 minutes here. The 16-lane PCU dominates bigger
# builds (about 1.8 MB of Verilog per PCU): a 4 x 4 grid of 4-lane, 2-stage units took ~20
# minutes to build and simulates at ~2,000 cycles/s, and the full default fabric is ~20 MB of
# Verilog, ~220 MB of C++ (over an hour to compile on 2 busy cores). FABRIC_GRID=4x4 runs the
# former, FABRIC_FULL=1 the exact default RduParams().
TB_PARAMS = RduParams(grid_rows=2, grid_cols=2, lanes=4, pmu_banks=4, hbm_bytes_per_cycle=16,
                      pmu_bytes=1024)
if os.environ.get("FABRIC_FULL"):
    TB_PARAMS = RduParams()
elif os.environ.get("FABRIC_GRID") == "4x4":
    TB_PARAMS = RduParams(lanes=4, pmu_banks=4, hbm_bytes_per_cycle=16, pcu_stages=2)


def test_fabric(tmp_path):
    seed = os.environ.get("SEED", "1")
    t0 = time.monotonic()
    b = build(FabricTop(TB_PARAMS), "fabric_top")
    print(f"fabric build: {time.monotonic() - t0:.1f} s total (Verilog + Verilator "
          f"{b.build_seconds:.1f} s, cached={b.cached})")
    result = tmp_path / "fabric.json"
    args = {"params": TB_PARAMS.to_dict(), "seed": int(seed), "rounds": 4, "beats": 400,
            "speed_beats": 20000,
            "result": str(result)}
    t1 = time.monotonic()
    check_results(run(b, "tb.fabric_tb", env={"MINIRDU_ARGS": json.dumps(args)}),
                  context=f"fabric_tb with SEED={seed}")
    wall = time.monotonic() - t1
    log = json.loads(result.read_text())
    print(f"fabric cocotb run: {wall:.1f} s")
    for r in log:
        print(f"  {r['what']}: {r['beats']} beats, {r['cycles']} cycles, "
              f"{r['cycles'] / max(r['wall_s'], 1e-9):,.0f} cycles/s")

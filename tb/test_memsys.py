"""pytest entry: build MemorySystem (default RduParams: 2 MiB HBM, 4 AGCUs, HBM3 timing) with
Verilator and run tb.memsys_tb on it. ``SEED`` (env) selects the random programs."""

import json
import os
import time

from hdl.memsys import MemorySystem
from hdl.params import RduParams
from tb.runner import build, check_results, run

TB_PARAMS = RduParams()


def test_memsys():
    seed = os.environ.get("SEED", "3")
    t0 = time.monotonic()
    b = build(MemorySystem(TB_PARAMS), "memsys_top")
    print(f"memsys build: {time.monotonic() - t0:.1f} s total, verilator {b.build_seconds:.1f} s"
          f" (cached={b.cached})")
    report = b.build_dir / "util_report.txt"
    env = {"SEED": seed, "MEMSYS_PARAMS": json.dumps(TB_PARAMS.to_dict()),
           "UTIL_REPORT": str(report)}
    t1 = time.monotonic()
    check_results(run(b, "tb.memsys_tb", env=env), context=f"memsys_tb with SEED={seed}")
    print(f"memsys cocotb run: {time.monotonic() - t1:.1f} s")
    if report.exists():
        print(report.read_text())

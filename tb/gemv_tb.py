"""cocotb testbench: GEMV kernels on the whole chip, through the host driver only.

Arguments in ``MINIRDU_ARGS`` (JSON): ``params`` (RduParams dict) and ``cases``, a list of
GEMV runs prepared by :func:`sw.kernels.cli.prepare_case` (files written by the host side):
``rbit`` (bitstream), ``w`` / ``x`` (HBM images), ``y_expected`` (golden int8 y), addresses
``w_addr`` / ``x_addr`` / ``y_addr``, ``rows``, ``units`` (ids to start), ``calls`` (the kernel
calls: iteration, count, dependences; one per layer or one looped call), ``watchdog``,
``result`` (JSON written per case).

Per case: DMA W and x into HBM, load the bitstream, clear the counters, start all units
together (RUN_START), sleep until ``run_done`` (watchdog naming the busy units), read the
counters, DMA y back and compare it exactly with the golden model. A mismatch fails the test
(after the result file is written, so the CLI can report it).
"""

import json
import os
import time

import cocotb
from cocotb.utils import get_sim_time

from hdl.params import RduParams
from sw.runtime.driver import ChipDriver


def _args():
    return json.loads(os.environ.get("MINIRDU_ARGS", "{}"))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@cocotb.test()
async def gemv(dut):
    args = _args()
    p = RduParams.from_dict(args["params"])
    drv = ChipDriver(dut, p)
    period = drv.period_ns
    wall0 = time.monotonic()
    sim0 = get_sim_time("ns")
    await drv.start()
    failures = []
    for case in args["cases"]:
        c_wall0 = time.monotonic()
        c_sim0 = get_sim_time("ns")
        await drv.dma_write(case["w_addr"], _read(case["w"]))
        await drv.dma_write(case["x_addr"], _read(case["x"]))
        # Clear y so that a kernel that writes nothing cannot pass on stale data.
        y_exp = _read(case["y_expected"])
        await drv.dma_write(case["y_addr"], bytes(len(y_exp)))
        n_writes = await drv.load_bitstream(_read(case["rbit"]))
        await drv.clear_counters()
        r_wall0 = time.monotonic()
        r_sim0 = get_sim_time("ns")
        for call in case.get("calls") or [{"iteration": 0, "count": 1, "deps": {}}]:
            await drv.run_units(case["units"], iteration=call["iteration"], count=call["count"],
                                deps=call["deps"], cycles=case["watchdog"],
                                what=case.get("name", "gemv"))
        r_wall = time.monotonic() - r_wall0
        r_sim_cycles = (get_sim_time("ns") - r_sim0) / period
        counters = await drv.read_counters()
        y = await drv.dma_read(case["y_addr"], len(y_exp))
        mism = [i for i in range(len(y_exp)) if y[i] != y_exp[i]]
        c_wall = time.monotonic() - c_wall0
        c_sim_cycles = (get_sim_time("ns") - c_sim0) / period
        res = {
            "bit_exact": not mism,
            "mismatches": len(mism),
            "first_mismatch": (None if not mism else
                               {"row": mism[0], "got": int.from_bytes(y[mism[0]:mism[0] + 1], "little", signed=True),
                                "expected": int.from_bytes(y_exp[mism[0]:mism[0] + 1], "little", signed=True)}),
            "config_writes": n_writes,
            "counters": counters,
            "y": y.hex(),
            "run_wall_seconds": r_wall,
            "run_sim_cycles": r_sim_cycles,
            "case_wall_seconds": c_wall,
            "case_sim_cycles": c_sim_cycles,
        }
        with open(case["result"], "w") as f:
            json.dump(res, f, indent=2)
        if mism:
            failures.append(f"{case.get('name', 'gemv')}: {len(mism)}/{len(y_exp)} rows differ, "
                            f"first row {mism[0]}: got {res['first_mismatch']['got']}, "
                            f"expected {res['first_mismatch']['expected']}")
    if "summary" in args:
        with open(args["summary"], "w") as f:
            json.dump({"wall_seconds": time.monotonic() - wall0,
                       "sim_cycles": (get_sim_time("ns") - sim0) / period}, f)
    assert not failures, "; ".join(failures)

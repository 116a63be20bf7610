"""cocotb testbench: GEMV kernels on the whole chip, through the host driver only.

Arguments in ``MINIRDU_ARGS`` (JSON): ``params`` (RduParams dict) and ``cases``, a list of
GEMV runs prepared by :func:`sw.kernels.cli.prepare_case` (files written by the host side):
``rbit`` (bitstream), ``w`` / ``x`` (HBM images), ``y_expected`` (golden int8 y), addresses
``w_addr`` / ``x_addr`` / ``y_addr``, ``rows``, ``units`` (ids to start), ``calls`` (the kernel
calls: iteration, count, dependences; one per layer or one looped call), ``watchdog``,
``result`` (JSON written per case).

Per case (:func:`tb.kernel_case.run_kernel_case`): DMA W and x into HBM, zero y, load the
bitstream, clear the counters, make the kernel calls, each until ``run_done`` (watchdog naming
the busy units), read the counters, DMA y back; then compare it exactly with the golden model. A mismatch fails the test
(after the result file is written, so the CLI can report it).
"""

import json
import time

import cocotb
from cocotb.utils import get_sim_time

from hdl.params import RduParams
from sw.runtime.driver import ChipDriver
from tb.kernel_case import read_args, read_file, run_kernel_case, write_summary


@cocotb.test()
async def gemv(dut):
    args = read_args()
    p = RduParams.from_dict(args["params"])
    drv = ChipDriver(dut, p)
    wall0 = time.monotonic()
    sim0 = get_sim_time("ns")
    await drv.start()
    failures = []
    for case in args["cases"]:
        c_wall0 = time.monotonic()
        c_sim0 = get_sim_time("ns")
        y_exp = read_file(case["y_expected"])
        # y is zeroed first, so a kernel that writes nothing cannot pass on stale data
        r = await run_kernel_case(
            drv, images=[(case["w_addr"], read_file(case["w"])),
                         (case["x_addr"], read_file(case["x"]))],
            rbit=read_file(case["rbit"]), units=case["units"], watchdog=case["watchdog"],
            name=case.get("name", "gemv"), out_addr=case["y_addr"], fill=bytes(len(y_exp)),
            calls=case.get("calls"))
        y = r.pop("output")
        mism = [i for i in range(len(y_exp)) if y[i] != y_exp[i]]
        res = {
            "bit_exact": not mism,
            "mismatches": len(mism),
            "first_mismatch": (None if not mism else
                               {"row": mism[0], "got": int.from_bytes(y[mism[0]:mism[0] + 1], "little", signed=True),
                                "expected": int.from_bytes(y_exp[mism[0]:mism[0] + 1], "little", signed=True)}),
            **r,
            "y": y.hex(),
            "case_wall_seconds": time.monotonic() - c_wall0,
            "case_sim_cycles": (get_sim_time("ns") - c_sim0) / drv.period_ns,
        }
        with open(case["result"], "w") as f:
            json.dump(res, f, indent=2)
        if mism:
            failures.append(f"{case.get('name', 'gemv')}: {len(mism)}/{len(y_exp)} rows differ, "
                            f"first row {mism[0]}: got {res['first_mismatch']['got']}, "
                            f"expected {res['first_mismatch']['expected']}")
    write_summary(args, drv, wall0, sim0)
    assert not failures, "; ".join(failures)

"""cocotb testbench: kernels that update an HBM region in place (the KV-cache append of
``sw/kernels/rope.py``: a read-modify-write that must preserve the rest of the cache), through
the host driver only.

Same arguments and case format as ``tb/pattern_tb.py`` (cases from
:func:`sw.kernels.patterns.write_case`), plus ``initial`` per case: a file with the starting
bytes of the output region. ``pattern_tb`` fills the output region with the complement of the
expected bytes, which would destroy exactly what an in-place kernel must keep; here the region
starts from ``initial`` instead, and the check covers the whole region (what changed and what
must not have). A kernel that writes nothing is caught as long as the expected bytes differ
from ``initial`` (the tests make sure they do).
"""

import json
import time

import cocotb
from cocotb.utils import get_sim_time

from hdl.params import RduParams
from sw.runtime.driver import ChipDriver
from tb.kernel_case import read_args, read_file, run_kernel_case, write_summary


def _elements(data: bytes, bits: int) -> list[int]:
    n = bits // 8
    return [int.from_bytes(data[i:i + n], "little", signed=True)
            for i in range(0, len(data) - len(data) % n, n)]


@cocotb.test()
async def inplace(dut):
    args = read_args()
    p = RduParams.from_dict(args["params"])
    drv = ChipDriver(dut, p)
    wall0 = time.monotonic()
    sim0 = get_sim_time("ns")
    await drv.start()
    failures = []
    for case in args["cases"]:
        name = case.get("name", "kernel")
        c_wall0 = time.monotonic()
        expected = read_file(case["expected"])
        initial = read_file(case["initial"])
        out = case["output"]
        assert len(expected) == len(initial) == out["nbytes"], \
            f"{name}: expected/initial images have the wrong size"
        r = await run_kernel_case(
            drv, images=[(im["addr"], read_file(im["file"])) for im in case["images"]],
            rbit=read_file(case["rbit"]), units=case["units"], watchdog=case["watchdog"],
            name=name, out_addr=out["addr"], fill=initial, calls=case.get("calls"))
        got = r.pop("output")
        counters_after = await drv.read_counters()
        bits = case["elem_bits"]
        g, e = _elements(got, bits), _elements(expected, bits)
        mism = [i for i in range(len(e)) if g[i] != e[i]]
        res = {
            "name": name,
            "bit_exact": not mism,
            "elements": len(e),
            "mismatches": len(mism),
            "first_mismatch": (None if not mism else
                               {"index": mism[0], "got": g[mism[0]], "expected": e[mism[0]]}),
            **r,
            "counters_after_readback": counters_after,
            "case_wall_seconds": time.monotonic() - c_wall0,
        }
        with open(case["result"], "w") as f:
            json.dump(res, f, indent=2)
        if mism:
            failures.append(f"{name}: {len(mism)}/{len(e)} elements differ, first element "
                            f"{mism[0]}: got {g[mism[0]]}, expected {e[mism[0]]}")
    write_summary(args, drv, wall0, sim0)
    assert not failures, "; ".join(failures)

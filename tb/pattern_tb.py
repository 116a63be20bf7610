"""cocotb testbench: pattern kernels (``sw/kernels/patterns.py``) on the whole chip, through the
host driver only.

Arguments in ``MINIRDU_ARGS`` (JSON): ``params`` (RduParams dict), ``summary`` (optional JSON
path: wall time and simulated cycles of the whole run) and ``cases``, a list of runs prepared
by :func:`sw.kernels.patterns.write_case`: ``name``, ``rbit`` (bitstream file), ``images``
(``{name, addr, file}``: HBM images to load), ``output`` (``{name, addr, nbytes}``: the region
the kernel writes), ``expected`` (file with the golden bytes of that region), ``elem_bits``
(8, 16 or 32: element width for the mismatch report), ``units`` (ids to start), ``watchdog``
(cycles), ``result`` (JSON written per case) and optionally ``calls`` (kernel calls as in
:func:`tb.kernel_case.run_kernel_case`, e.g. ``[{"iteration": 3, "count": 1, "deps": {}}]``
to run a layer kernel as layer 3) and ``initial`` (a file with the starting bytes of the output
region, for kernels that update a region in place, such as the KV-cache append's
read-modify-write: the check then covers what changed and what must not have).

Per case (:func:`tb.kernel_case.run_kernel_case`): DMA the images into HBM; fill the output
region with the bitwise complement of the expected bytes (so a kernel that writes nothing, or
only part of it, cannot pass on stale data), or with ``initial`` when given; load the bitstream; clear the counters; run the
units until ``run_done`` (they are done and HBM has performed their writes; watchdog naming the
busy units); read the counters; DMA the output back; read the counters again
(``counters_after_readback``: the kernel's traffic plus the read-back's own reads) and compare
the output with the golden bytes exactly, element by element. Every case runs and
writes its result file; then the test fails if any case was not bit-exact, naming each such
case, how many elements differ and the first one.
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
async def patterns(dut):
    args = read_args()
    p = RduParams.from_dict(args["params"])
    drv = ChipDriver(dut, p)
    wall0 = time.monotonic()
    sim0 = get_sim_time("ns")
    await drv.start()
    failures = []
    for case in args["cases"]:
        name = case.get("name", "pattern")
        c_wall0 = time.monotonic()
        expected = read_file(case["expected"])
        out = case["output"]
        assert len(expected) == out["nbytes"], f"{name}: expected image has the wrong size"
        if case.get("initial"):
            fill = read_file(case["initial"])
            assert len(fill) == out["nbytes"], f"{name}: initial image has the wrong size"
        else:
            fill = bytes(b ^ 0xFF for b in expected)
        r = await run_kernel_case(
            drv, images=[(im["addr"], read_file(im["file"])) for im in case["images"]],
            rbit=read_file(case["rbit"]), units=case["units"], watchdog=case["watchdog"],
            name=name, out_addr=out["addr"], fill=fill,
            calls=case.get("calls"))
        got = r.pop("output")
        # counters again after the read-back: they then also hold the read-back's own reads
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
            "output": got.hex(),
            "case_wall_seconds": time.monotonic() - c_wall0,
        }
        with open(case["result"], "w") as f:
            json.dump(res, f, indent=2)
        if mism:
            failures.append(f"{name}: {len(mism)}/{len(e)} elements differ, first element "
                            f"{mism[0]}: got {g[mism[0]]}, expected {e[mism[0]]}")
    write_summary(args, drv, wall0, sim0)
    assert not failures, "; ".join(failures)

"""cocotb testbench: pattern kernels (``sw/kernels/patterns.py``) on the whole chip, through the
host driver only.

Arguments in ``MINIRDU_ARGS`` (JSON): ``params`` (RduParams dict), ``summary`` (optional JSON
path: wall time and simulated cycles of the whole run) and ``cases``, a list of runs prepared
by :func:`sw.kernels.patterns.write_case`: ``name``, ``rbit`` (bitstream file), ``images``
(``{name, addr, file}``: HBM images to load), ``output`` (``{name, addr, nbytes}``: the region
the kernel writes), ``expected`` (file with the golden bytes of that region), ``elem_bits``
(8, 16 or 32: element width for the mismatch report), ``units`` (ids to start), ``watchdog``
(cycles) and ``result`` (JSON written per case).

Per case: DMA the images into HBM; fill the output region with the bitwise complement of the
expected bytes (so a kernel that writes nothing, or only part of it, cannot pass on stale
data); load the bitstream; clear the counters; start all units together and sleep until they
are done (watchdog naming the busy units); read the counters; DMA the output back, read the
counters again (``counters_after_readback``: they include every beat the kernel wrote, since
the read-back is ordered after the kernel's queued writes, and the read-back's own reads) and
compare the output with the golden bytes exactly, element by element. Every case runs and
writes its result file; then the test fails if any case was not bit-exact, naming each such
case, how many elements differ and the first one.
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


def _elements(data: bytes, bits: int) -> list[int]:
    n = bits // 8
    return [int.from_bytes(data[i:i + n], "little", signed=True)
            for i in range(0, len(data) - len(data) % n, n)]


@cocotb.test()
async def patterns(dut):
    args = _args()
    p = RduParams.from_dict(args["params"])
    drv = ChipDriver(dut, p)
    period = drv.period_ns
    wall0 = time.monotonic()
    sim0 = get_sim_time("ns")
    await drv.start()
    failures = []
    for case in args["cases"]:
        name = case.get("name", "pattern")
        c_wall0 = time.monotonic()
        for im in case["images"]:
            await drv.dma_write(im["addr"], _read(im["file"]))
        expected = _read(case["expected"])
        out = case["output"]
        assert len(expected) == out["nbytes"], f"{name}: expected image has the wrong size"
        await drv.dma_write(out["addr"], bytes(b ^ 0xFF for b in expected))
        n_writes = await drv.load_bitstream(_read(case["rbit"]))
        await drv.clear_counters()
        r_wall0 = time.monotonic()
        r_sim0 = get_sim_time("ns")
        await drv.run_units(case["units"], cycles=case["watchdog"], what=name)
        r_wall = time.monotonic() - r_wall0
        r_sim_cycles = (get_sim_time("ns") - r_sim0) / period
        counters = await drv.read_counters()
        got = await drv.dma_read(out["addr"], out["nbytes"])
        # A WRITE AGCU is done once the HBM port has accepted its last beat; the channel queues
        # may still hold writes then. The read-back is ordered after them, so counters read
        # after it include every beat the kernel wrote (and the read-back's own reads).
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
            "config_writes": n_writes,
            "counters": counters,
            "counters_after_readback": counters_after,
            "output": got.hex(),
            "run_wall_seconds": r_wall,
            "run_sim_cycles": r_sim_cycles,
            "case_wall_seconds": time.monotonic() - c_wall0,
        }
        with open(case["result"], "w") as f:
            json.dump(res, f, indent=2)
        if mism:
            failures.append(f"{name}: {len(mism)}/{len(e)} elements differ, first element "
                            f"{mism[0]}: got {g[mism[0]]}, expected {e[mism[0]]}")
    if "summary" in args:
        with open(args["summary"], "w") as f:
            json.dump({"wall_seconds": time.monotonic() - wall0,
                       "sim_cycles": (get_sim_time("ns") - sim0) / period}, f)
    assert not failures, "; ".join(failures)

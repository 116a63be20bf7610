"""What every kernel testbench does per case, through the host driver only (cocotb side).

``run_kernel_case`` loads the HBM images by DMA, fills the output region with ``fill`` (so a
kernel that writes nothing cannot pass on stale data), loads the bitstream (a refused one
raises), clears the counters, makes the kernel calls (``calls``: iteration, count,
dependences; one call of one iteration by default), each until ``run_done`` (the units are
done and HBM has performed their writes; the watchdog names busy units), reads the counters
and reads the output region back. The caller compares and reports.

``read_args``/``write_summary`` handle the ``MINIRDU_ARGS`` JSON the host side passes and the
optional whole-run summary (wall seconds, simulated cycles).
"""

import json
import os
import time

from cocotb.utils import get_sim_time

__all__ = ["read_args", "read_file", "run_kernel_case", "write_summary"]

ONE_CALL = [{"iteration": 0, "count": 1, "deps": {}}]


def read_args() -> dict:
    return json.loads(os.environ.get("MINIRDU_ARGS", "{}"))


def read_file(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def run_kernel_case(drv, *, images, rbit: bytes, units, watchdog: int, name: str,
                          out_addr: int, fill: bytes, calls=None) -> dict:
    """``images``: (byte address, bytes) pairs. Returns ``config_writes``, ``counters``,
    ``output`` (the bytes read back, ``len(fill)`` of them), ``run_wall_seconds`` and
    ``run_sim_cycles`` (first launch to the last call's done, host writes included)."""
    for addr, data in images:
        await drv.dma_write(addr, data)
    await drv.dma_write(out_addr, fill)
    n_writes = await drv.load_bitstream(rbit)
    await drv.clear_counters()
    r_wall0 = time.monotonic()
    r_sim0 = get_sim_time("ns")
    for call in calls or ONE_CALL:
        await drv.run_units(units, iteration=call["iteration"], count=call["count"],
                            deps=call["deps"], cycles=watchdog, what=name)
    r_wall = time.monotonic() - r_wall0
    r_sim_cycles = (get_sim_time("ns") - r_sim0) / drv.period_ns
    counters = await drv.read_counters()
    output = await drv.dma_read(out_addr, len(fill))
    return {"config_writes": n_writes, "counters": counters, "output": output,
            "run_wall_seconds": r_wall, "run_sim_cycles": r_sim_cycles}


def write_summary(args: dict, drv, wall0: float, sim0: float) -> None:
    if "summary" in args:
        with open(args["summary"], "w") as f:
            json.dump({"wall_seconds": time.monotonic() - wall0,
                       "sim_cycles": (get_sim_time("ns") - sim0) / drv.period_ns}, f)

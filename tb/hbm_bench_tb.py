"""cocotb side of the HBM benchmark (``rdu bench-hbm``): runs access patterns on the real
memory system through the chip's host ports and measures them with the chip's own counters.

Arguments (env ``MINIRDU_ARGS``, JSON): ``params``, ``patterns`` (see :mod:`sw.bench.hbm`),
``preload_beats``, ``seed``, ``result`` (path of the JSON to write).

Per pattern: program the AGCUs over the config bus (CSR ``CFG_*``), clear counters, start all of
them with one ``RUN_START`` (driver ``run_units``), sleep until ``run_done`` (the watchdog names
the busy AGCUs), then read the counters and latency monitors. Data is checked too: what each sink received is
compared (XOR and position-weighted sum) with a numpy model of HBM, and written regions are read
back by DMA and compared with what the sources sent.
"""

import json
import os
import random
import time

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles, RisingEdge

from hdl.agcu import AgcuReg, agcu_count_reg, agcu_stride_reg
from hdl.chip import LATENCY_BIN_CYCLES, LATENCY_BINS, ext_latency_base
from hdl.host import Csr
from hdl.params import RduParams
from hdl.unitmap import unit_id
from sw.runtime.driver import ChipDriver
from tb.traffic import source_beat


def program_addresses(prog, iteration=0):
    """The beat addresses an AGCU program yields, innermost counter fastest (numpy)."""
    counts, strides = prog["counts"], prog["strides"]
    addr = np.array([prog["base"] + iteration * prog.get("iter_stride", 0)], dtype=np.int64)
    for c, s in zip(reversed(counts), reversed(strides)):
        addr = (addr[:, None] + np.arange(c, dtype=np.int64)[None, :] * s).reshape(-1)
    return addr


async def configure_agcu(drv, index, prog, p):
    unit = unit_id(p, "agcu", index)
    await drv.csr_write(Csr.CFG_UNIT, unit)
    writes = [(AgcuReg.MODE, 1 if prog["mode"] == "write" else 0),
              (AgcuReg.REGION_BASE, prog.get("region_base", 0)),
              (AgcuReg.REGION_BEATS, prog.get("region_beats", p.hbm_beats)),
              (AgcuReg.BASE, prog["base"]),
              (AgcuReg.ITER_STRIDE, prog.get("iter_stride", 0) & 0xFFFFFFFF)]
    counts = list(prog["counts"]) + [1] * (p.agcu_counters - len(prog["counts"]))
    strides = list(prog["strides"]) + [0] * (p.agcu_counters - len(prog["strides"]))
    for k in range(p.agcu_counters):
        writes += [(agcu_count_reg(k), counts[k]), (agcu_stride_reg(k), strides[k] & 0xFFFFFFFF)]
    for reg, val in writes:
        await drv.csr_write(Csr.CFG_ADDR, int(reg))
        await drv.csr_write(Csr.CFG_DATA, int(val))


async def read_latency(drv, clients):
    count = total = 0
    lat_max = 0
    hist = np.zeros(LATENCY_BINS, dtype=np.int64)
    for c in clients:
        base = ext_latency_base(c)
        n = await drv.ext_read(base + 0)
        if n == 0:
            continue
        count += n
        total += (await drv.ext_read(base + 1)) | ((await drv.ext_read(base + 2)) << 32)
        lat_max = max(lat_max, await drv.ext_read(base + 3))
        for b in range(LATENCY_BINS):
            hist[b] += await drv.ext_read(base + 0x80 + b)
    p99 = None
    if count:
        cum = np.cumsum(hist)
        b = int(np.searchsorted(cum, 0.99 * count))
        p99 = min((b + 1) * LATENCY_BIN_CYCLES, lat_max)   # upper edge of the p99 bin
    return {"count": int(count), "mean": (total / count) if count else None,
            "p99": p99, "max": int(lat_max)}


@cocotb.test()
async def hbm_bench(dut):
    args = json.loads(os.environ["MINIRDU_ARGS"])
    p = RduParams.from_dict(args["params"])
    rng = np.random.default_rng(int(args.get("seed", 1)))
    drv = ChipDriver(dut, p)
    dut.stall.value = 0
    dut.gap.value = 0
    await drv.start()

    # Preload two regions with random data (start and end of HBM: both channels, many banks);
    # the rest of HBM is zero. `mem` is the numpy model.
    mem = np.zeros((p.hbm_beats, p.lanes), dtype=np.uint32)
    nb = int(args.get("preload_beats", 512))
    for start in (0, p.hbm_beats - nb):
        block = rng.integers(0, 2**32, size=(nb, p.lanes), dtype=np.uint32)
        mem[start:start + nb] = block
        await drv.dma_write(start * p.beat_bytes, block.tobytes())

    results = []
    for pat in args["patterns"]:
        dut.stall.value = int(pat.get("stall", 0))
        dut.gap.value = int(pat.get("gap", 0))
        progs = pat["agcus"]
        for i, prog in enumerate(progs):
            await configure_agcu(drv, i, prog, p)
        await drv.clear_counters()
        expect_beats = sum(int(np.prod(g["counts"])) for g in progs)
        limit = 50 * expect_beats + 20 * p.hbm_read_latency + 10_000
        t0 = time.monotonic()
        await drv.run_units([unit_id(p, "agcu", i) for i in range(len(progs))], cycles=limit,
                            what=f"pattern {pat['name']}")
        wall = time.monotonic() - t0
        ctr = await drv.read_counters()

        # ---- data checks ------------------------------------------------------------------
        for i, prog in enumerate(progs):
            addrs = program_addresses(prog)
            if prog["mode"] == "read":
                got_beats = int(getattr(dut, f"sink{i}_beats").value)
                assert got_beats == len(addrs), \
                    f"{pat['name']}: AGCU {i} delivered {got_beats} beats, program has {len(addrs)}"
                words = mem[addrs]
                want_xor = np.bitwise_xor.reduce(words, axis=0) if len(words) else np.zeros(p.lanes, np.uint32)
                got_xor = int(getattr(dut, f"sink{i}_xor").value)
                got_xor = np.array([(got_xor >> (32 * j)) & 0xFFFFFFFF for j in range(p.lanes)], np.uint32)
                assert np.array_equal(got_xor, want_xor), f"{pat['name']}: AGCU {i} read data differs (XOR)"
                want_sum = int(np.sum((np.arange(len(addrs), dtype=np.uint64) + 1)
                                      * words[:, 0].astype(np.uint64)) & 0xFFFFFFFF)
                got_sum = int(getattr(dut, f"sink{i}_sum").value)
                assert got_sum == want_sum, f"{pat['name']}: AGCU {i} read data out of order"
            else:
                for k, a in enumerate(addrs):
                    v = source_beat(i, k, p.lanes)
                    mem[a] = [(v >> (32 * j)) & 0xFFFFFFFF for j in range(p.lanes)]
                # Read back a sample of the written beats (first, last and some random ones).
                pick = sorted(set([0, len(addrs) - 1] + list(rng.integers(0, len(addrs), 6))))
                for k in pick:
                    a = int(addrs[k])
                    back = await drv.dma_read(a * p.beat_bytes, p.beat_bytes)
                    want = mem[a].tobytes()
                    assert back == want, f"{pat['name']}: AGCU {i} wrote wrong data at beat {a}"

        rd = sum(ctr[f"ch{c}_rd_beats"] for c in range(p.hbm_channels))
        wr = sum(ctr[f"ch{c}_wr_beats"] for c in range(p.hbm_channels))
        busy = ctr["run_busy_cycles"]
        moved = (rd + wr) * p.beat_bytes
        sustained = moved / busy if busy else 0.0
        lat = await read_latency(drv, [1 + i for i in range(len(progs))])
        results.append({
            "name": pat["name"],
            "description": pat.get("description", ""),
            "agcus": len(progs),
            "bytes_moved": moved,
            "read_beats": rd,
            "write_beats": wr,
            "cycles": busy,
            "peak_bytes_per_cycle": p.hbm_peak_bytes_per_cycle,
            "sustained_bytes_per_cycle": sustained,
            "utilization": sustained / p.hbm_peak_bytes_per_cycle,
            "latency_mean_cycles": lat["mean"],
            "latency_p99_cycles": lat["p99"],
            "latency_max_cycles": lat["max"],
            "latency_samples": lat["count"],
            "row_misses": sum(ctr[f"ch{c}_row_misses"] for c in range(p.hbm_channels)),
            "refresh_stall_cycles": sum(ctr[f"ch{c}_refresh_cycles"] for c in range(p.hbm_channels)),
            "sim_cycles_per_second": busy / wall if wall > 0 else None,
            "wall_seconds": wall,
        })
    with open(args["result"], "w") as f:
        json.dump(results, f, indent=2)

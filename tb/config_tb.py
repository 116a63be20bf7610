"""cocotb fuzz of the config controller (hdl/config.py) under Verilator.

Arguments in ``MINIRDU_ARGS`` (JSON): ``cases`` (path of a JSON list of
``{"name", "data" (hex), "status", "writes"}`` made by tb/test_config_fuzz.py from the Python
reader), ``seed``, ``result`` (path for a JSON summary).

For every case: pulse ``start`` with the length, feed the beats with random gaps, and check that
the controller accepts exactly ``ceil(L/64)`` beats, reports the predicted status, issues exactly
the predicted config writes (none for a refused bitstream) and never stays busy past a watchdog
of ``4 * (beats + 2 * bytes/8) + 200`` cycles (a stuck load is reported with its FSM inputs).
"""

import json
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


def _args():
    return json.loads(os.environ.get("MINIRDU_ARGS", "{}"))


def _beats(data: bytes):
    padded = data + bytes(-len(data) % 64)
    return [int.from_bytes(padded[i:i + 64], "little") for i in range(0, len(padded), 64)]


@cocotb.test()
async def config_fuzz(dut):
    args = _args()
    with open(args["cases"]) as f:
        cases = json.load(f)
    rng = random.Random(int(args.get("seed", 1)))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    dut.data__valid.value = 0
    dut.kt_addr.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    failures, summary = [], []
    t0 = time.monotonic()
    total_cycles = 0
    for case in cases:
        data = bytes.fromhex(case["data"])
        want_status, want_writes = case["status"], [tuple(w) for w in case["writes"]]
        beats = _beats(data)
        gaps = case.get("gaps", 0.0)
        limit = 4 * (len(beats) + 2 * (len(data) // 8)) + 200    # records <= bytes / 8
        dut.length.value = len(data)
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        writes, i, cycles, hung = [], 0, 1, False
        while True:
            present = i < len(beats) and rng.random() >= gaps
            dut.data__valid.value = int(present)
            if present:
                dut.data__payload.value = beats[i]
            await ReadOnly()
            accepted = present and int(dut.data__ready.value)
            if int(dut.cfg__we.value):
                writes.append((int(dut.cfg__unit.value), int(dut.cfg__addr.value),
                               int(dut.cfg__data.value)))
            done = int(dut.done.value)
            busy = int(dut.busy.value)
            await RisingEdge(dut.clk)
            if accepted:
                i += 1
            if done:
                break
            cycles += 1
            if cycles > limit:
                hung = True
                break
        dut.data__valid.value = 0
        total_cycles += cycles
        status = int(dut.status.value)
        errs = []
        if hung:
            errs.append(f"watchdog: still busy after {limit} cycles (beats accepted {i}/"
                        f"{len(beats)}, writes so far {len(writes)}, busy={busy})")
        if i != len(beats):
            errs.append(f"accepted {i} of {len(beats)} beats")
        if status != want_status:
            errs.append(f"status {status}, reader predicts {want_status}")
        if writes != want_writes:
            errs.append(f"{len(writes)} config writes, expected {len(want_writes)}"
                        + ("" if want_status == 0 else " (a refused bitstream wrote!)"))
        if errs:
            failures.append(f"{case['name']}: " + "; ".join(errs))
            if hung:   # the DUT is stuck: later cases would be meaningless
                break
        summary.append({"name": case["name"], "bytes": len(data), "status": status,
                        "cycles": cycles})
        for _ in range(rng.randrange(3)):
            await RisingEdge(dut.clk)

    if "result" in args:
        with open(args["result"], "w") as f:
            json.dump({"cases": summary, "failures": failures, "sim_cycles": total_cycles,
                       "wall_seconds": time.monotonic() - t0}, f, indent=1)
    assert not failures, f"{len(failures)}/{len(cases)} bitstreams mishandled:\n" + \
        "\n".join(failures[:20])

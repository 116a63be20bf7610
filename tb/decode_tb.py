"""cocotb testbench: greedy decode of a model on the whole chip (``sw/runtime/decode.py``).

Arguments in ``MINIRDU_ARGS`` (JSON): ``params``, ``model`` (path), ``mode``, ``context``
(optional), ``prompt_ids``, ``tokens`` (to generate), ``launch_overhead_cycles``, ``check``
(compare every kernel's output with the golden trace; op mode only), ``watchdog_cycles``
(optional cap on every kernel's watchdog budget: tests make a kernel "hang" with it),
``host_prefill`` (run all prompt tokens but the last on the host's golden model and DMA its KV
cache into HBM: the chip starts at position ``len(prompt) - 1``), ``corrupt_section`` (tests:
the name of a static section whose HBM slot gets one flipped byte after the load: the chip's
config controller must refuse it), ``progress`` (a JSON-lines file: one line per step, read by
the parent for its progress bar) and ``result`` (JSON written at the end, also when the run
fails: ``error`` then says why).

The golden decoder runs in lockstep: every step's next token must equal the golden one (the
run stops at the first difference and fails), and after the last step the chip's logits are
read back and compared with the golden logits element by element.
"""

import json
import time
import traceback

import cocotb
import numpy as np
from cocotb.utils import get_sim_time

from hdl.params import RduParams
from sw.runtime.driver import ChipDriver
from tb.kernel_case import read_args


@cocotb.test()
async def decode(dut):
    args = read_args()
    p = RduParams.from_dict(args["params"])
    from sw.compiler.program import compile_decode
    from sw.frontend import load_model
    from sw.golden import quantized
    from sw.runtime.decode import DecodeRunner

    wall0 = time.monotonic()
    res = {"steps": [], "tokens": [], "golden_tokens": [], "error": None}
    progress = open(args["progress"], "w") if args.get("progress") else None
    try:
        model = load_model(args["model"])
        qm = quantized(model)
        t0 = time.monotonic()
        prog = compile_decode(qm, p, mode=args["mode"], context=args.get("context"))
        res["compile_seconds"] = time.monotonic() - t0
        drv = ChipDriver(dut, p)
        await drv.start()
        runner = DecodeRunner(drv, prog, launch_overhead_cycles=args["launch_overhead_cycles"],
                              check=args.get("check", False),
                              watchdog_cycles=args.get("watchdog_cycles"))
        res["load"] = await runner.load()
        bad = args.get("corrupt_section")
        if bad is not None:
            sec = next((s for s in prog.sections if s.name == bad), None)
            if sec is None or sec.position_dependent:
                raise ValueError(f"corrupt_section {bad!r}: not a static section of mode "
                                 f"{prog.mode!r}")
            data = bytearray(prog.section_bitstream(sec.entry, 0))
            data[len(data) // 2] ^= 0x5A
            await drv.dma_write(sec.slot, bytes(data))
        prompt = [int(t) for t in args["prompt_ids"]]
        n_new = int(args["tokens"])
        seq = list(prompt)
        pos = 0
        if args.get("host_prefill") and len(prompt) > 1:
            w0 = time.monotonic()
            await runner.warm_start(prompt[:-1])
            pos = len(prompt) - 1
            res["host_prefill"] = {"positions": pos, "wall_seconds": time.monotonic() - w0}
        sim0 = get_sim_time("ns")
        run_wall0 = time.monotonic()
        while pos < len(seq) and len(res["tokens"]) < n_new:
            nxt, fig = await runner.step(pos, seq[pos])
            generated = pos >= len(prompt) - 1
            fig["generated"] = generated
            res["steps"].append(fig)
            if generated:
                res["tokens"].append(nxt)
                res["golden_tokens"].append(fig["golden_next"])
                if pos + 1 == len(seq):
                    seq.append(nxt)
            if progress:
                progress.write(json.dumps({"pos": pos, "next": nxt, "generated": generated,
                                           "cycles": fig["cycles"]}) + "\n")
                progress.flush()
            if nxt != fig["golden_next"]:
                raise AssertionError(f"pos {pos}: chip chose token {nxt}, golden model "
                                     f"{fig['golden_next']}")
            pos += 1
        logits = await runner.read_logits()
        want = runner.last_golden_logits.astype(np.int64)
        res["logits_bit_exact"] = bool(np.array_equal(logits, want))
        if not res["logits_bit_exact"]:
            bad = int(np.argmax(logits != want))
            raise AssertionError(f"last step's logits differ from the golden model at "
                                 f"{bad}: got {logits[bad]}, expected {want[bad]}")
        res["sim_cycles"] = (get_sim_time("ns") - sim0) / drv.period_ns
        res["run_wall_seconds"] = time.monotonic() - run_wall0
        res["kernels_built"] = len(prog._cache)
    except BaseException as e:
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()
        raise
    finally:
        res["wall_seconds"] = time.monotonic() - wall0
        if progress:
            progress.close()
        with open(args["result"], "w") as f:
            json.dump(res, f, indent=1, default=lambda o: o.tolist()
                      if isinstance(o, np.ndarray) else str(o))

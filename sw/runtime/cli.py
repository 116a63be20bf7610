"""``rdu sim``: run the chip on Verilator.

Today the chip has its memory system, host interface, config controller and compute fabric; the
compiler and the looping sequencer come in later issues. So ``rdu sim`` builds the chip RTL
(cached; memory system and host side at the default geometry), brings it up through its host
ports (ID, geometry hash, a DMA round trip through the HBM model,
counters, a refused transfer), reports what it measured, and then says plainly that decode on
the chip is not there yet. It exits 0 when the bring-up passed (the part that exists works) and
prints where the missing stages will live.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sw.cli import UserError, command

MISSING = ("decode on the chip needs the rest of the compiler (the RMSNorm, RoPE, attention and "
           "softmax patterns, the mapper that fuses a decoder layer into one kernel) and the "
           "runtime's decode loop; the fabric, the looping sequencer and the first pattern "
           "kernels run on the chip today (try `rdu kernel gemv --rows 256 --cols 256 --layers 4 "
           "--mode looped`)")


def default_out(kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("sim_results") / f"{kind}-{stamp}"


def bringup(out: Path, seed: int = 1, nbytes: int = 4096, waves: bool = False) -> dict:
    """Build the chip and run the cocotb bring-up test; returns its result dict."""
    from hdl.chip import Chip
    from hdl.params import DEFAULT_PARAMS
    from tb.runner import build, check_results, run

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # The default-geometry fabric takes over an hour to compile under Verilator (see
    # tb/geometries.py), so bring-up builds the full-size memory system and host side only.
    b = build(Chip(DEFAULT_PARAMS, fabric=False), "rdu_chip", key="fabric=False", waves=waves)
    build_s = time.monotonic() - t0
    result_file = out / "bringup.json"
    args = {"params": DEFAULT_PARAMS.to_dict(), "seed": seed, "bytes": nbytes,
            "result": str(result_file.resolve())}
    t1 = time.monotonic()
    xml = run(b, "tb.chip_bringup_tb", env={"MINIRDU_ARGS": json.dumps(args)}, waves=waves,
              test_dir=out)
    check_results(xml)
    res = json.loads(result_file.read_text())
    res.update({"build_seconds": round(build_s, 2), "build_cached": b.cached,
                "run_seconds": round(time.monotonic() - t1, 2)})
    result_file.write_text(json.dumps(res, indent=2))
    return res


@command("sim", "run a model on the Verilator chip (today: chip bring-up only)")
def _sim(parser):
    parser.add_argument("model", nargs="?", default=None, help="model path (default: shipped model)")
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--prompt-ids", default=None)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--mode", choices=["op", "layer", "looped"], default="looped")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--waves", action="store_true")
    parser.add_argument("--launch-overhead", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)

    def run(args):
        if args.tokens <= 0:
            raise UserError("--tokens must be positive")
        out = args.out or default_out("sim")
        print("building the chip RTL on Verilator (cached after the first build) ...", flush=True)
        try:
            res = bringup(out, seed=args.seed, waves=args.waves)
        except AssertionError as e:
            raise UserError(f"chip bring-up failed: {str(e).splitlines()[0]}") from None
        print(f"chip bring-up passed: ID and RduParams hash match, DMA round trip of "
              f"{2 * res['bytes']} bytes through HBM bit-exact, counters consistent "
              f"({res['cycles']} cycles; build {res['build_seconds']} s"
              f"{' (cached)' if res['build_cached'] else ''}, run {res['run_seconds']} s)")
        print(f"results: {out / 'bringup.json'}")
        print(f"not yet: {MISSING}; `rdu sim` will decode "
              f"{args.tokens} tokens in '{args.mode}' mode once they land.")
        return 0
    return run

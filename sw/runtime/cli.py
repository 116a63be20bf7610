"""``rdu sim``: greedy decode of a model on the Verilator chip, bit-exact with the golden model.

Builds the chip RTL (cached), compiles the model (``sw/compiler/program.py``) for ``--mode``
(default ``looped``: embedding, one launch of the on-chip layer program for every layer, the
head program; ``layer``: one layer-program launch per layer; ``op``: one launch per kernel),
runs the decode loop of ``sw/runtime/decode.py`` in cocotb with the golden model in lockstep,
shows a progress bar, prints the text, cycles/token, HBM utilisation, host launches and chip
sections per token and the cycle attribution, and writes ``result.json``
(``sw/runtime/sim.py``). ``--check`` (every kernel's output against the golden trace) needs
``--mode op``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sw.cli import UserError, command

DEFAULT_MODEL = "models/kjv-280k"
DEFAULT_PROMPT = "And God said,"


def default_out(kind: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("sim_results") / f"{kind}-{stamp}"


def print_attribution(att: dict) -> None:
    total = att.get("cycles") or 1
    print(f"  {'where the cycles of a token go':<36}{'cycles':>10}{'share':>8}")
    for k, label in (("hbm_busy", "HBM busy (moving beats)"),
                     ("run_hbm_idle", "kernels running, HBM idle"),
                     ("fill", "  before a call's first beat"),
                     ("after_fill", "  after it"),
                     ("config", "reconfiguration (not hidden)"),
                     ("config_host", "  bitstreams from the host"),
                     ("config_chip", "  sections loaded by the chip"),
                     ("launch", "host launch overhead"),
                     ("host", "host (CSRs, DMA set-up, read-back)")):
        v = att.get(k, 0)
        if k == "config_chip" and not v:
            continue
        print(f"  {label:<36}{v:>10,.0f}{100 * v / total:>7.1f}%")
    print(f"  {'total':<36}{total:>10,.0f}")


@command("sim", "decode a model on the Verilator chip, bit-exact with the golden model")
def _sim(parser):
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"model path (default: {DEFAULT_MODEL})")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--prompt", metavar="TEXT", default=None,
                   help=f"prompt text (default: {DEFAULT_PROMPT!r})")
    g.add_argument("--prompt-ids", metavar="IDS", default=None, help="prompt token ids")
    parser.add_argument("--tokens", type=int, default=32, metavar="N", help="tokens to generate")
    parser.add_argument("--mode", choices=["op", "layer", "looped"], default="looped",
                        help="looped (default): embedding, one launch of the on-chip layer "
                             "program for every layer, head program (3 launches/token); layer: "
                             "one layer-program launch per layer; op: one launch per kernel")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--waves", action="store_true", help="write a VCD of the run")
    parser.add_argument("--launch-overhead", type=int, default=None, metavar="C",
                        help="host launch latency in cycles per launch (default 4000 = 5 us "
                             "at 800 MHz)")
    parser.add_argument("--check", action="store_true",
                        help="compare every kernel's output with the golden trace (slower; "
                             "op mode only)")
    parser.add_argument("--context", type=int, default=None,
                        help="KV-cache positions to allocate (default: the model's max_seq_len)")

    def run(args):
        from sw.compiler.program import CompileError, compile_decode
        from sw.frontend import load_model
        from sw.frontend.cli import prompt_ids
        from sw.frontend.errors import ModelFormatError
        from sw.golden import quantized
        from sw.runtime.sim import LAUNCH_OVERHEAD_DEFAULT, DecodeFailed, run_decode

        if args.tokens < 1:
            raise UserError(f"--tokens must be at least 1, got {args.tokens}")
        if args.check and args.mode != "op":
            raise UserError(f"--check compares every kernel's output, which needs --mode op "
                            f"(mode {args.mode} runs a layer's kernels on chip with no host "
                            f"step in between)")
        try:
            m = load_model(args.model)
        except (OSError, ModelFormatError) as e:
            raise UserError(f"cannot load {args.model}: {e}") from None
        prompt = args.prompt
        if prompt is None and args.prompt_ids is None:
            prompt = DEFAULT_PROMPT
        ids = prompt_ids(m, prompt, args.prompt_ids, args.tokens)
        lo = LAUNCH_OVERHEAD_DEFAULT if args.launch_overhead is None else args.launch_overhead
        if lo < 0:
            raise UserError("--launch-overhead must be >= 0")
        try:       # fail on the compile here, before building anything
            compile_decode(quantized(m), mode=args.mode, context=args.context)
        except CompileError as e:
            raise UserError(str(e)) from None
        out = args.out or default_out("sim")
        print(f"model {m.name}: {m.config.n_layers} layers, dim {m.config.dim}; mode "
              f"{args.mode}; {len(ids)} prompt tokens, {args.tokens} to generate; building the "
              f"chip RTL (cached after the first build) ...", flush=True)
        try:
            res = run_decode(args.model, prompt_ids=ids, tokens=args.tokens, mode=args.mode,
                             out=out, launch_overhead_cycles=lo, check=args.check,
                             waves=args.waves, context=args.context, tokenizer=m.tokenizer)
        except DecodeFailed as e:
            raise UserError(f"decode on the chip failed: {str(e).splitlines()[0]}") from None
        if res["text"] is not None:
            print(f"\n{res['prompt']}{res['text']}\n")
        print(f"tokens:           {','.join(map(str, res['tokens']))}")
        print(f"bit-exact:        {res['bit_exact']} (tokens and the last step's logits vs the "
              f"golden model)")
        print(f"cycles/token:     {res['cycles_per_token']:,.0f}  (launch overhead "
              f"{lo} cycles x {res['kernel_launches_per_token']:.0f} launches included)")
        print(f"HBM utilisation:  {100 * res['hbm_utilization']:.1f}% of "
              f"{res['hbm_peak_bytes_per_cycle']} B/cycle ({res['hbm_bytes_per_token']:,.0f} "
              f"B/token)")
        print(f"launches/token:   {res['kernel_launches_per_token']:.0f} host launches, "
              f"{res['sections_per_token']:.0f} sections run by the chip's section sequencer")
        print_attribution(res["attribution"])
        print(f"simulation:       {res['sim_cycles']:,.0f} cycles at "
              f"{res['sim_cycles_per_second']:,.0f} cycles/s; build {res['build_seconds']} s"
              f"{' (cached)' if res['build_cached'] else ''}; wall {res['wall_seconds']} s")
        print(f"results:          {Path(out) / 'result.json'}")
        return 0 if res["bit_exact"] else 1
    return run

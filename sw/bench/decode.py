"""``rdu bench``: the decode benchmark on the Verilator chip -- op vs layer vs looped.

Every figure comes from a real decode on the RTL (``sw/runtime/sim.py``'s :func:`run_decode`,
bit-exact with the golden model; a run that is not bit-exact stops the bench), except the
launch-overhead sweep, which is exact arithmetic on those runs (below). Files in ``DIR``:

``modes.json``        per model shape (the shipped model and two random-weight shapes) and mode:
                      cycles/token, HBM bytes/token and utilisation, launches/token, the cycle
                      attribution, and the speedups over ``op`` mode.
``launch_sweep.json`` each mode's cycles/token and the speedups as the host's launch latency
                      goes from 0 to 8,000 cycles (10 us at 800 MHz; a GPU-like kernel launch
                      is ~5 us = 4,000 cycles, the default of ``rdu sim``).
``sweeps.json``       context sweep (the KV cache filled to N positions by the golden model on
                      the host, then one token decoded on the chip: KV bytes read per token
                      grow with N) and HBM bandwidth sweep (``RduParams.hbm_channels`` 1/2/4 =
                      64/128/256 B/cycle; each is its own Verilator build).
``simspeed.json``     the same kernel on Verilator and on Amaranth's simulator of the full chip
                      (:mod:`sw.bench.simspeed`).
``*.png``             roofline, cycle attribution per mode, launch-overhead sweep, sweeps
                      (:mod:`sw.bench.plots`).
``SUMMARY.md``        the tables.
``runs/``             each decode's own ``result.json`` (``rdu sim``'s format).

Plans. ``FULL`` (``rdu bench``): 3 tokens per (shape, mode), three shapes, contexts 0..255 in
every mode, 1/2/4 HBM channels; measured 14 min on 2 cores, 7 of them the two extra Verilator
builds. ``QUICK`` (``--quick``, the CI smoke run): the default model, 1 token per mode, contexts
0 and 192 in looped mode, the default chip only (no new build); 1.7 min with the build cached.

Launch overhead. The runtime charges ``launch_overhead_cycles`` per host launch without
simulating it: the host launches synchronously, so the chip is idle meanwhile, and nothing on
the chip depends on how long it waited. A run at overhead ``L0`` therefore gives every other
overhead exactly:  cycles_per_token(L) = cycles_per_token(L0) + launches_per_token * (L - L0).
``tb/test_bench.py`` checks this against a second real run, and the full bench against one
more run at overhead 0 (``launch_sweep.json`` ``verified``).

Ops per token (roofline x axis, with the measured HBM bytes): 2 x the multiply-accumulates of
the step's matrix-vector products and attention (Q/K/V/O, gate/up/down, LM head; q.k and the
weighted sum of V over the positions attended); element-wise work (norms, RoPE, softmax,
SwiGLU) is left out, so the op counts are a lower bound.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Plan", "QUICK", "FULL", "run_bench", "ops_per_token", "launch_sweep",
           "BenchError", "OTHER_SHAPES", "MODES", "summary_markdown", "headline_table"]

MODES = ("op", "layer", "looped")
DEFAULT_MODEL = "models/kjv-280k"
LAUNCH_OVERHEAD = 4000            # cycles per host launch in the mode runs (5 us at 800 MHz)
GPU_LAUNCH_US = 5.0               # a GPU kernel launch + synchronisation, microseconds
LAUNCH_SWEEP_CYCLES = (0, 250, 500, 1000, 2000, 4000, 6000, 8000)
CONTEXT_TEXT = ("In the beginning God created the heaven and the earth. And the earth was "
                "without form, and void; and darkness was upon the face of the deep. ")


def _other_shapes():
    from sw.model import LlamaConfig
    return {
        # deeper and narrower than the shipped model: more launches per token, less per launch
        "deep-d32-l8": LlamaConfig(dim=32, n_layers=8, n_heads=4, n_kv_heads=2, hidden_dim=96,
                                   vocab_size=256, max_seq_len=64),
        # wider and shallower: more bytes per launch
        "wide-d128-l2": LlamaConfig(dim=128, n_layers=2, n_heads=8, n_kv_heads=4,
                                    hidden_dim=352, vocab_size=512, max_seq_len=64,
                                    tie_embeddings=False),
    }


OTHER_SHAPES = ("deep-d32-l8", "wide-d128-l2")


class BenchError(RuntimeError):
    """A bench run failed (a decode that is not bit-exact, or the chip failing)."""


@dataclass(frozen=True)
class Plan:
    """What one bench run measures (``QUICK`` or ``FULL``)."""
    name: str
    tokens: int                       # tokens generated per (shape, mode) run
    shapes: tuple                     # OTHER_SHAPES measured besides the default model
    contexts: tuple                   # context sweep: positions in the KV cache before the token
    context_modes: tuple
    channels: tuple                   # bandwidth sweep: RduParams.hbm_channels
    channel_modes: tuple
    verify_launch_sweep: bool         # one more real run at launch overhead 0


QUICK = Plan("quick", tokens=1, shapes=(), contexts=(0, 192), context_modes=("looped",),
             channels=(2,), channel_modes=MODES, verify_launch_sweep=False)
FULL = Plan("full", tokens=3, shapes=OTHER_SHAPES, contexts=(0, 64, 128, 192, 255),
            context_modes=MODES, channels=(1, 2, 4), channel_modes=MODES,
            verify_launch_sweep=True)


# ---- analytic figures -------------------------------------------------------------------------
def macs_per_token(cfg, positions: int) -> int:
    """Multiply-accumulates of one decode step attending ``positions`` positions."""
    d, kv, h = cfg.dim, cfg.kv_dim, cfg.hidden_dim
    per_layer = d * d * 2 + d * kv * 2 + d * h * 3 + 2 * cfg.n_heads * cfg.head_dim * positions
    return cfg.n_layers * per_layer + d * cfg.vocab_size


def ops_per_token(cfg, positions: int) -> int:
    """2 x :func:`macs_per_token` (a multiply and an add per MAC)."""
    return 2 * macs_per_token(cfg, positions)


def compute_peak_ops_per_cycle(p) -> int:
    """Every FU stage of every PCU lane busy: PCUs x lanes x stages ALU ops per cycle."""
    from hdl.unitmap import units_of_kind
    return len(units_of_kind(p, "pcu")) * p.lanes * p.pcu_stages


def launch_sweep(record: dict, overheads=LAUNCH_SWEEP_CYCLES) -> dict:
    """Cycles/token of a measured run (``record``: cycles_per_token, launches_per_token,
    launch_overhead_cycles) at each launch overhead in ``overheads`` (exact; see the module
    docstring)."""
    base = record["cycles_per_token"] - record["launches_per_token"] * record[
        "launch_overhead_cycles"]
    return {int(L): round(base + record["launches_per_token"] * L, 1) for L in overheads}


# ---- runs -------------------------------------------------------------------------------------
def _supports_host_prefill() -> bool:
    from sw.runtime.sim import run_decode
    return "host_prefill" in inspect.signature(run_decode).parameters


def _mode_available(model_path, mode: str, params, context=None) -> str | None:
    """None if ``mode`` compiles for the model on this chip, else the compiler's reason."""
    from sw.compiler.program import CompileError, compile_decode
    from sw.frontend import load_model
    from sw.golden import quantized
    try:
        compile_decode(quantized(load_model(model_path)), params, mode=mode, context=context)
    except CompileError as e:
        return str(e).splitlines()[0]
    return None


def _record(res: dict, wall: float) -> dict:
    gen = [s for s in res["per_token"] if s["generated"]]
    launch = res["attribution"].get("launch", 0.0)
    cyc = res["cycles_per_token"]
    peak = res["hbm_peak_bytes_per_cycle"]
    chip = cyc - launch
    return {
        "cycles_per_token": cyc,
        "hbm_bytes_per_token": res["hbm_bytes_per_token"],
        "hbm_utilization": res["hbm_utilization"],
        "hbm_utilization_chip_busy": round(res["hbm_bytes_per_token"] / (chip * peak), 4)
        if chip > 0 else 0.0,
        "launches_per_token": res["kernel_launches_per_token"],
        "sections_per_token": res.get("sections_per_token", 0),
        "launch_overhead_cycles": res["launch_overhead_cycles"],
        "attribution": res["attribution"],
        "positions": [s["pos"] for s in gen],
        "tokens": res["tokens"],
        "bit_exact": res["bit_exact"],
        "sim_cycles": res["sim_cycles"],
        "sim_cycles_per_second": res["sim_cycles_per_second"],
        "build_seconds": res["build_seconds"],
        "build_cached": res["build_cached"],
        "wall_seconds": round(wall, 1),
    }


class _Runner:
    """Runs decodes into ``out/runs/<name>`` and keeps the log lines and wall times."""

    def __init__(self, out: Path, log):
        self.out, self.log = out, log
        self.host_prefill = _supports_host_prefill()
        self._programs: dict = {}

    def kernel_bytes(self, model_path, params, res: dict) -> float:
        """HBM bytes per generated token the step's kernels declare (reads + writes, the same
        kernels in every mode); the measured traffic adds host reads and, in the fused modes,
        the section bitstreams."""
        from hdl.params import DEFAULT_PARAMS
        from sw.compiler.program import compile_decode
        from sw.frontend import load_model
        from sw.golden import quantized
        p = params or DEFAULT_PARAMS
        key = (str(model_path), p.digest())
        prog = self._programs.get(key)
        if prog is None:
            prog = self._programs[key] = compile_decode(quantized(load_model(model_path)), p,
                                                        mode="op")
        gen = [s for s in res["per_token"] if s["generated"]]
        total = sum(c.kernel.hbm_bytes * c.count for s in gen
                    for c in prog.token_calls(s["pos"], s["token_in"]))
        return round(total / max(len(gen), 1), 1)

    def decode(self, name: str, model_path, mode: str, prompt_ids: list, tokens: int, *,
               params=None, launch_overhead: int = LAUNCH_OVERHEAD, context=None) -> dict:
        from sw.runtime.sim import DecodeFailed, run_decode
        kw = {}
        if self.host_prefill:
            kw["host_prefill"] = True
        elif len(prompt_ids) > 1:
            raise BenchError("run_decode cannot prefill the KV cache on the host (no "
                             "host_prefill): prompts longer than one token would be decoded "
                             "on the chip")
        t0 = time.monotonic()
        try:
            res = run_decode(model_path, prompt_ids=prompt_ids, tokens=tokens, mode=mode,
                             out=self.out / "runs" / name, launch_overhead_cycles=launch_overhead,
                             params=params, context=context, progress=True, **kw)
        except DecodeFailed as e:
            raise BenchError(f"{name}: decode on the chip failed: {str(e).splitlines()[0]}") \
                from None
        wall = time.monotonic() - t0
        if not res["bit_exact"]:
            raise BenchError(f"{name}: the chip's decode is not bit-exact with the golden "
                             f"model (tokens {res['tokens']}, golden {res['golden_tokens']})")
        rec = _record(res, wall)
        rec["kernel_bytes_per_token"] = self.kernel_bytes(model_path, params, res)
        if rec["hbm_bytes_per_token"] < rec["kernel_bytes_per_token"]:
            raise BenchError(f"{name}: the chip's HBM counters report "
                             f"{rec['hbm_bytes_per_token']:,.0f} bytes/token, fewer than the "
                             f"{rec['kernel_bytes_per_token']:,.0f} its kernels move (a Verilator "
                             f"build older than the sources it was keyed by?)")
        build = "" if res["build_cached"] else f", build {res['build_seconds']:.0f} s"
        self.log(f"  {name:<28} {rec['cycles_per_token']:>11,.0f} cycles/token  "
                 f"{100 * rec['hbm_utilization']:5.2f}% HBM  "
                 f"{rec['launches_per_token']:>5.0f} launches  ({wall:.0f} s{build})")
        return rec


def _shape_models(names, folder: Path) -> dict:
    """Random-weight models of the named shapes saved as Hugging Face folders (seeded)."""
    from sw.frontend.hf import save_hf
    from sw.model import random_model
    shapes = _other_shapes()
    out = {}
    for name in names:
        path = folder / name
        if not (path / "config.json").exists():
            save_hf(random_model(shapes[name], seed=7, name=name), path)
        out[name] = path
    return out


def _config_dict(cfg) -> dict:
    return {k: getattr(cfg, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads",
                                         "hidden_dim", "vocab_size", "max_seq_len",
                                         "tie_embeddings")}


def _speedups(modes: dict) -> dict:
    cyc = {m: r["cycles_per_token"] for m, r in modes.items() if "cycles_per_token" in r}
    out = {}
    for a, b in (("layer", "op"), ("looped", "op"), ("looped", "layer")):
        if a in cyc and b in cyc:
            out[f"{a}_vs_{b}"] = round(cyc[b] / cyc[a], 3)
    return out


def _bos(model) -> int:
    tok = getattr(model, "tokenizer", None)
    return int(tok.bos_id) if tok is not None and tok.bos_id is not None else 0


def _context_prompt(model, n_cached: int) -> list[int]:
    """``n_cached + 1`` token ids: BOS and text; the chip decodes the step after the first
    ``n_cached`` positions, which the host fills."""
    tok = getattr(model, "tokenizer", None)
    ids = [_bos(model)]
    if tok is not None:
        text = tok.encode(CONTEXT_TEXT)
        while len(ids) < n_cached + 1:
            ids += text
    else:
        ids += [(7 * i + 3) % model.config.vocab_size for i in range(n_cached)]
    return ids[:n_cached + 1]


# ---- the bench ------------------------------------------------------------------------------
def run_bench(out: Path, plan: Plan = FULL, model_path=DEFAULT_MODEL, log=print) -> dict:
    """Run ``plan``, write every file into ``out``; returns the figures (also in the JSONs)."""
    from hdl.params import DEFAULT_PARAMS
    from sw.frontend import load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    walls = {}
    runner = _Runner(out, log)
    p = DEFAULT_PARAMS

    # 1. modes on the default model and the other shapes
    t0 = time.monotonic()
    log(f"modes: {', '.join(MODES)} on {model_path}"
        f"{' and ' + ', '.join(plan.shapes) if plan.shapes else ''}, {plan.tokens} token(s) "
        f"each, launch overhead {LAUNCH_OVERHEAD} cycles")
    models = {Path(model_path).name: Path(model_path)}
    models.update(_shape_models(plan.shapes, out / "models"))
    shapes = []
    for name, path in models.items():
        m = load_model(path)
        bos = _bos(m)
        entry = {"name": name, "model": str(path), "config": _config_dict(m.config),
                 "default": name == Path(model_path).name, "modes": {}}
        for mode in MODES:
            why = _mode_available(path, mode, p)
            if why is not None:
                entry["modes"][mode] = {"available": False, "reason": why}
                log(f"  {name}-{mode}: not available: {why}")
                continue
            rec = runner.decode(f"{name}-{mode}", path, mode, [bos], plan.tokens)
            rec["available"] = True
            pos = rec["positions"]
            rec["ops_per_token"] = round(sum(ops_per_token(m.config, q + 1) for q in pos)
                                         / max(len(pos), 1))
            entry["modes"][mode] = rec
        entry["speedup"] = _speedups({k: v for k, v in entry["modes"].items()
                                      if v.get("available")})
        shapes.append(entry)
    modes_json = {"launch_overhead_cycles": LAUNCH_OVERHEAD, "clock_mhz": p.clock_mhz,
                  "tokens_per_run": plan.tokens, "params": p.to_dict(),
                  "hbm_peak_bytes_per_cycle": p.hbm_peak_bytes_per_cycle,
                  "compute_peak_ops_per_cycle": compute_peak_ops_per_cycle(p),
                  "ops_note": "ops = 2 x MACs of the matrix-vector products and attention; "
                              "element-wise work left out",
                  "shapes": shapes}
    (out / "modes.json").write_text(json.dumps(modes_json, indent=1))
    walls["modes"] = time.monotonic() - t0

    # 2. launch-overhead sweep (exact arithmetic on the runs above; one real run to confirm)
    t0 = time.monotonic()
    sweep = {"clock_mhz": p.clock_mhz, "gpu_like_launch_cycles": int(GPU_LAUNCH_US * p.clock_mhz),
             "gpu_like_launch_us": GPU_LAUNCH_US, "overheads_cycles": list(LAUNCH_SWEEP_CYCLES),
             "formula": "cycles_per_token(L) = cycles_per_token(L0) + launches_per_token * "
                        "(L - L0): the launch wait is charged per launch, not simulated",
             "shapes": []}
    for entry in shapes:
        avail = {m: r for m, r in entry["modes"].items() if r.get("available")}
        cyc = {m: launch_sweep(r) for m, r in avail.items()}
        rows = []
        for L in LAUNCH_SWEEP_CYCLES:
            row = {"launch_overhead_cycles": L, "launch_overhead_us": round(L / p.clock_mhz, 3),
                   "cycles_per_token": {m: c[L] for m, c in cyc.items()}}
            row["speedup"] = _speedups({m: {"cycles_per_token": c[L]} for m, c in cyc.items()})
            rows.append(row)
        sweep["shapes"].append({"name": entry["name"], "launches_per_token":
                                {m: r["launches_per_token"] for m, r in avail.items()},
                                "rows": rows})
    if plan.verify_launch_sweep and shapes[0]["modes"]:
        d = shapes[0]
        avail = [m for m in ("looped", "layer", "op") if d["modes"][m].get("available")]
        if avail:
            mode = avail[0]
            rec = runner.decode(f"{d['name']}-{mode}-launch0", d["model"], mode,
                                [_bos(load_model(d["model"]))], 1, launch_overhead=0)
            first = d["modes"][mode]
            pred = launch_sweep({**first, "cycles_per_token":
                                 _first_token_cycles(out / "runs" / f"{d['name']}-{mode}")},
                                (0,))[0]
            sweep["verified"] = {"shape": d["name"], "mode": mode, "tokens": 1,
                                 "predicted_cycles_at_0": pred,
                                 "measured_cycles_at_0": rec["cycles_per_token"],
                                 "difference": round(rec["cycles_per_token"] - pred, 1)}
    (out / "launch_sweep.json").write_text(json.dumps(sweep, indent=1))
    walls["launch_sweep"] = time.monotonic() - t0

    # 3. context and bandwidth sweeps on the default model
    t0 = time.monotonic()
    sweeps = {"model": str(model_path), "launch_overhead_cycles": LAUNCH_OVERHEAD}
    dm = load_model(model_path)
    if runner.host_prefill:
        ctx_rows = []
        log(f"context sweep: {', '.join(map(str, plan.contexts))} cached positions, "
            f"{'/'.join(plan.context_modes)}")
        for n in plan.contexts:
            if n >= dm.config.max_seq_len:
                raise BenchError(f"context {n} does not fit max_seq_len {dm.config.max_seq_len}")
            for mode in plan.context_modes:
                if shapes[0]["modes"][mode].get("available") is False:
                    continue
                rec = runner.decode(f"ctx{n}-{mode}", model_path, mode, _context_prompt(dm, n),
                                    1)
                ctx_rows.append({"cached_positions": n, "mode": mode,
                                 "positions_attended": rec["positions"][0] + 1,
                                 "ops_per_token": ops_per_token(dm.config,
                                                                rec["positions"][0] + 1),
                                 **{k: rec[k] for k in ("cycles_per_token", "hbm_bytes_per_token",
                                                        "kernel_bytes_per_token",
                                                        "hbm_utilization",
                                                        "hbm_utilization_chip_busy",
                                                        "launches_per_token", "attribution",
                                                        "wall_seconds")}})
        sweeps["context"] = ctx_rows
    else:
        sweeps["context"] = []
        sweeps["context_skipped"] = ("run_decode has no host_prefill: the KV cache cannot be "
                                     "filled on the host, and decoding long prompts on the chip "
                                     "would not fit the time budget")
        log(f"context sweep skipped: {sweeps['context_skipped']}")
    bw_rows = []
    log(f"bandwidth sweep: hbm_channels {', '.join(map(str, plan.channels))} "
        f"(new channel counts are new Verilator builds, ~4 min each)")
    bos = _bos(dm)
    for ch in plan.channels:
        pc = dataclasses.replace(p, hbm_channels=ch)
        for mode in plan.channel_modes:
            if shapes[0]["modes"][mode].get("available") is False:
                continue
            if ch == p.hbm_channels and plan.tokens >= 1:
                rec = shapes[0]["modes"][mode]          # the mode run above is this point
            else:
                rec = runner.decode(f"ch{ch}-{mode}", model_path, mode, [bos], 1, params=pc)
            bw_rows.append({"hbm_channels": ch,
                            "hbm_peak_bytes_per_cycle": pc.hbm_peak_bytes_per_cycle,
                            "mode": mode,
                            **{k: rec[k] for k in ("cycles_per_token", "hbm_bytes_per_token",
                                                   "hbm_utilization",
                                                   "hbm_utilization_chip_busy",
                                                   "launches_per_token", "build_seconds",
                                                   "build_cached")}})
    sweeps["bandwidth"] = bw_rows
    (out / "sweeps.json").write_text(json.dumps(sweeps, indent=1))
    walls["sweeps"] = time.monotonic() - t0

    # 4. simulator speed
    t0 = time.monotonic()
    from sw.bench.simspeed import run_simspeed
    log("simulator speed: one kernel on Verilator and on Amaranth's simulator of the full chip")
    try:
        simspeed = run_simspeed(model_path, out / "runs" / "simspeed", p)
    except AssertionError as e:
        raise BenchError(f"simulator speed: {str(e).splitlines()[0]}") from None
    simspeed["verilator_decode_cycles_per_second"] = {
        f"{s['name']}-{m}": r["sim_cycles_per_second"]
        for s in shapes for m, r in s["modes"].items() if r.get("available")}
    (out / "simspeed.json").write_text(json.dumps(simspeed, indent=1))
    log(f"  Verilator {simspeed['verilator']['kernel']['cycles_per_second']:,.0f} cycles/s, "
        f"Amaranth {simspeed['amaranth']['kernel']['cycles_per_second']:,.0f} cycles/s: "
        f"{simspeed['ratio_kernel']}x")
    walls["simspeed"] = time.monotonic() - t0

    # 5. plots and the summary
    t0 = time.monotonic()
    from sw.bench import plots
    figures = plots.write_all(out, modes_json, sweep, sweeps)
    walls["plots"] = time.monotonic() - t0
    walls["total"] = time.monotonic() - t_start
    result = {"plan": dataclasses.asdict(plan), "modes": modes_json, "launch_sweep": sweep,
              "sweeps": sweeps, "simspeed": simspeed, "figures": figures,
              "wall_seconds": {k: round(v, 1) for k, v in walls.items()}}
    (out / "SUMMARY.md").write_text(summary_markdown(result))
    (out / "bench.json").write_text(json.dumps({"plan": result["plan"],
                                                "wall_seconds": result["wall_seconds"],
                                                "figures": figures}, indent=1))
    return result


def _first_token_cycles(run_dir: Path) -> float:
    """Cycles of the first generated token of a saved run (``result.json``)."""
    res = json.loads((run_dir / "result.json").read_text())
    gen = [s for s in res["per_token"] if s["generated"]]
    return gen[0]["cycles"]


# ---- tables -----------------------------------------------------------------------------------
def _pct(v) -> str:
    return f"{100 * v:.1f}%" if v is not None else "-"


def headline_table(modes_json: dict) -> str:
    """Markdown table: the default model's modes (cycles/token, speedup, HBM, launches)."""
    d = next(s for s in modes_json["shapes"] if s["default"])
    op = d["modes"].get("op", {})
    lines = ["| mode | launches/token | cycles/token | speedup vs op | HBM utilisation | "
             "HBM util. while the chip works |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for mode in MODES:
        r = d["modes"].get(mode, {})
        if not r.get("available"):
            lines.append(f"| {mode} | - | not available | - | - | - |")
            continue
        sp = (op["cycles_per_token"] / r["cycles_per_token"]) if op.get("available") else None
        lines.append(f"| {mode} | {r['launches_per_token']:.0f} | {r['cycles_per_token']:,.0f} | "
                     f"{f'{sp:.2f}x' if sp else '-'} | {_pct(r['hbm_utilization'])} | "
                     f"{_pct(r['hbm_utilization_chip_busy'])} |")
    return "\n".join(lines)


def summary_markdown(r: dict) -> str:
    mj, sw, sp, sim = r["modes"], r["launch_sweep"], r["sweeps"], r["simspeed"]
    peak = mj["hbm_peak_bytes_per_cycle"]
    L = mj["launch_overhead_cycles"]
    out = [f"# rdu bench ({r['plan']['name']})", "",
           f"Decode on the Verilator chip (RTL), every run bit-exact with the golden model. "
           f"Chip: {mj['params']['grid_rows']}x{mj['params']['grid_cols']} tiles, "
           f"{mj['params']['hbm_channels']} HBM channels = {peak} B/cycle peak at "
           f"{mj['clock_mhz']} MHz. Launch overhead {L:,} cycles per host launch "
           f"({L / mj['clock_mhz']:.1f} us, GPU-like) unless swept. "
           f"{mj['tokens_per_run']} generated token(s) per run. Wall time "
           f"{r['wall_seconds']['total'] / 60:.1f} min.", "",
           "## Modes (default model)", "", headline_table(mj), "",
           "HBM utilisation = HBM bytes moved per token (the chip's beat counters) / (cycles "
           "per token x peak bytes per cycle); \"while the chip works\" leaves out the cycles "
           "charged for launch overhead. The measured bytes are the kernels' own traffic (the "
           "same kernels in every mode: \"kernels' B/token\" below) plus the host's token "
           "read-back and, in the fused modes, the chip's reads of the section bitstreams and "
           "the host's DMA of the position's section updates.", "",
           "## Modes (every shape)", "",
           "| shape | layers x dim | mode | launches/token | cycles/token | speedup vs op | "
           "HBM B/token | kernels' B/token | HBM util. | ops/cycle |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in mj["shapes"]:
        c = s["config"]
        op = s["modes"].get("op", {})
        for mode in MODES:
            rec = s["modes"].get(mode, {})
            if not rec.get("available"):
                out.append(f"| {s['name']} | {c['n_layers']} x {c['dim']} | {mode} | - | "
                           f"not available: {rec.get('reason', '')} | | | | | |")
                continue
            spd = (f"{op['cycles_per_token'] / rec['cycles_per_token']:.2f}x"
                   if op.get("available") else "-")
            out.append(f"| {s['name']} | {c['n_layers']} x {c['dim']} | {mode} | "
                       f"{rec['launches_per_token']:.0f} | {rec['cycles_per_token']:,.0f} | "
                       f"{spd} | {rec['hbm_bytes_per_token']:,.0f} | "
                       f"{rec['kernel_bytes_per_token']:,.0f} | {_pct(rec['hbm_utilization'])} | "
                       f"{rec['ops_per_token'] / rec['cycles_per_token']:.2f} |")
    from sw.bench.plots import PART_LABELS, attribution_parts
    d = next(s for s in mj["shapes"] if s["default"])
    avail = {m: r for m, r in d["modes"].items() if r.get("available")}
    keys = list(dict.fromkeys(k for r in avail.values()
                              for k, _, _ in attribution_parts(r["attribution"])))
    out += ["", "## Where the cycles of a token go (default model)", "",
            "| mode | " + " | ".join(PART_LABELS[k] for k in keys) + " | total |",
            "| --- |" + " ---: |" * (len(keys) + 1)]
    for mode, rec in avail.items():
        att = rec["attribution"]
        tot = att.get("cycles") or 1
        parts = {k: c for k, _, c in attribution_parts(att)}
        out.append(f"| {mode} | " + " | ".join(
            f"{parts[k]:,.0f} ({100 * parts[k] / tot:.0f}%)" if k in parts else "-"
            for k in keys) + f" | {tot:,.0f} |")
    out += ["", "![attribution](attribution.png)", "",
            "## Launch-overhead sweep", "",
            f"Exact, from the runs above: {sw['formula']}.", ""]
    if "verified" in sw:
        v = sw["verified"]
        out += [f"Checked with a real run of {v['shape']} in {v['mode']} mode at overhead 0: "
                f"predicted {v['predicted_cycles_at_0']:,.0f}, measured "
                f"{v['measured_cycles_at_0']:,.0f} cycles (difference {v['difference']:,.0f}).",
                ""]
    for s in sw["shapes"]:
        modes = list(s["launches_per_token"])
        out += [f"**{s['name']}** (launches/token: "
                + ", ".join(f"{m} {n:.0f}" for m, n in s["launches_per_token"].items()) + ")",
                "", "| launch overhead | " + " | ".join(f"{m} cycles/token" for m in modes)
                + " | " + " | ".join(k.replace("_", " ") for k in s["rows"][0]["speedup"])
                + " |",
                "| --- |" + " ---: |" * (len(modes) + len(s["rows"][0]["speedup"]))]
        for row in s["rows"]:
            out.append(f"| {row['launch_overhead_cycles']:,} ({row['launch_overhead_us']:g} us) | "
                       + " | ".join(f"{row['cycles_per_token'][m]:,.0f}" for m in modes) + " | "
                       + " | ".join(f"{v:.2f}x" for v in row["speedup"].values()) + " |")
        out.append("")
    out += ["![launch sweep](launch_sweep.png)", "", "## Context sweep (default model)", ""]
    if sp.get("context"):
        out += ["| cached positions | mode | cycles/token | HBM B/token | HBM util. | "
                "util. while working |", "| ---: | --- | ---: | ---: | ---: | ---: |"]
        for row in sp["context"]:
            out.append(f"| {row['cached_positions']} | {row['mode']} | "
                       f"{row['cycles_per_token']:,.0f} | {row['hbm_bytes_per_token']:,.0f} | "
                       f"{_pct(row['hbm_utilization'])} | "
                       f"{_pct(row['hbm_utilization_chip_busy'])} |")
    else:
        out.append(f"Skipped: {sp.get('context_skipped', 'no points')}.")
    out += ["", "## HBM bandwidth sweep (default model)", "",
            "| HBM channels | peak B/cycle | mode | cycles/token | HBM util. | "
            "util. while working | Verilator build |",
            "| ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for row in sp["bandwidth"]:
        b = "cached" if row["build_cached"] else f"{row['build_seconds']:.0f} s"
        out.append(f"| {row['hbm_channels']} | {row['hbm_peak_bytes_per_cycle']} | {row['mode']} | "
                   f"{row['cycles_per_token']:,.0f} | {_pct(row['hbm_utilization'])} | "
                   f"{_pct(row['hbm_utilization_chip_busy'])} | {b} |")
    out += ["", "![sweeps](sweeps.png)", "", "## Roofline", "",
            f"x = ops per HBM byte, y = ops per cycle ({mj['ops_note']}); memory roof "
            f"{peak} B/cycle, compute roof {mj['compute_peak_ops_per_cycle']} ops/cycle "
            f"(every FU stage of every PCU lane).", "", "![roofline](roofline.png)", "",
            "## Simulator speed", ""]
    v, a = sim["verilator"], sim["amaranth"]
    k = sim["kernel"]
    vb = ("cached build reused" if v["build_cached"] else f"built in {v['build_seconds']:.0f} s")
    out += [f"Kernel `{k['label']}` ({k['pattern']}, {k['units']} units, "
            f"{k['bitstream_bytes']:,}-byte bitstream) of the first decode step, run over "
            f"{k['iterations']} layer(s) in one launch on the full chip: the same host program "
            f"on both simulators (same cycle counts in every phase and same output bytes, "
            f"checked).", "",
            "| simulator | run (host asleep): cycles | wall s | cycles/s | bitstream load + run "
            "cycles/s | whole program cycles/s | set-up |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
            f"| Verilator | {v['kernel']['cycles']:,} | {v['kernel']['wall_seconds']:.3f} | "
            f"{v['kernel']['cycles_per_second']:,.0f} | "
            f"{v['config_and_run']['cycles_per_second']:,.0f} | "
            f"{v['total']['cycles_per_second']:,.0f} | "
            f"{vb}" + (f" (recorded build time {v['recorded_build_seconds']:.0f} s)"
                       if v["build_cached"] and v.get("recorded_build_seconds") else "") + " |",
            f"| Amaranth (Python) | {a['kernel']['cycles']:,} | {a['kernel']['wall_seconds']:.1f} | "
            f"{a['kernel']['cycles_per_second']:,.0f} | "
            f"{a['config_and_run']['cycles_per_second']:,.0f} | "
            f"{a['total']['cycles_per_second']:,.0f} | "
            f"elaboration {a['elaborate_seconds']:.0f} s |", "",
            f"Verilator is **{sim['ratio_kernel']}x** faster while the kernel runs "
            f"({sim['ratio_config_and_run']}x with the bitstream load, {sim['ratio_total']}x "
            f"over the whole program, where the Python testbench acts every cycle). Verilator "
            f"on whole "
            f"decodes: " + ", ".join(f"{n} {c:,.0f}" for n, c in
                                     sim["verilator_decode_cycles_per_second"].items())
            + " cycles/s.", "",
            "## Wall time", "",
            " | ".join(f"{k} {v / 60:.1f} min" for k, v in r["wall_seconds"].items()), ""]
    return "\n".join(out)

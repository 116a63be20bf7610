"""``rdu sim`` behind the CLI: build the chip, run a decode on Verilator, write ``result.json``.

:func:`run_decode` builds (or reuses) the chip's Verilator model, runs ``tb/decode_tb.py`` (the
decode loop of :mod:`sw.runtime.decode` with the golden model in lockstep) in a thread while
it draws a progress bar from the testbench's per-step progress file, and turns the
testbench's raw figures into the result (fields of DESIGN.md section 6) and the per-token
cycle attribution.

Attribution (per generated token, simulated cycles; the parts add up to ``cycles_per_token``).
The chip's counters (``hdl/host.py``) sort every cycle into exclusive classes, in this order,
and the step's counter deltas give the parts:

``hbm_busy``        HBM moving a beat (counter ``hbm_busy_cycles``): kernel traffic, and also the
                    DMA's beats (the section bitstreams the chip loads, the host's section
                    updates, the token read-back)
``config``          configuration not hidden under compute (``config_busy_cycles``: the config
                    controller loading or replaying while no unit runs and no beat moves).
                    ``config_chip``: its part inside programs (the chip's own section loads,
                    read around the programs); ``config_host``: the rest (the host's bitstream
                    loads: every kernel in op mode, the embedding in layer/looped). Not added
                    again: ``config = config_host + config_chip``
``run_hbm_idle``    units running with HBM idle (``fill_cycles + run_hbm_idle_cycles``):
                    ``fill`` before the first beat of a call (HBM latency exposed),
                    ``after_fill`` after it (compute, drain, bubbles); not added again
``launch``          the host's launch overhead (``launch_overhead_cycles`` per host launch:
                    every kernel in op mode; embed + program launches in layer/looped)
``host``            the rest of the step: CSR traffic and DMA set-up of the host, sequencing
                    gaps, reading the next token back
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

__all__ = ["run_decode", "attribution", "DecodeFailed"]

LAUNCH_OVERHEAD_DEFAULT = 4000


class DecodeFailed(RuntimeError):
    pass


def attribution(steps: list, peak: int) -> dict:
    """Average per-token cycle attribution over ``steps`` (testbench step figures)."""
    if not steps:
        return {}
    n = len(steps)

    def avg(get):
        return sum(get(s) for s in steps) / n
    cyc = avg(lambda s: s["cycles"])
    launch = avg(lambda s: s["phases"]["launch"])
    busy = avg(lambda s: s["counters"]["hbm_busy_cycles"])
    config = avg(lambda s: s["counters"]["config_busy_cycles"])
    chip = avg(lambda s: s["phases"].get("config_chip", 0.0))
    fill = avg(lambda s: s["counters"]["fill_cycles"])
    after = avg(lambda s: s["counters"]["run_hbm_idle_cycles"])
    out = {"cycles": cyc,
           "hbm_busy": busy,
           "run_hbm_idle": fill + after,
           "config": config,
           "launch": launch,
           "host": cyc - busy - fill - after - config - launch,
           # parts of "config" and of "run_hbm_idle" (not added again)
           "config_host": config - chip,
           "config_chip": chip,
           "fill": fill,
           "after_fill": after}
    return {k: round(v, 1) for k, v in out.items()}


def _bytes_moved(step: dict, p) -> int:
    c = step["counters"]
    beats = sum(c[f"ch{i}_rd_beats"] + c[f"ch{i}_wr_beats"] for i in range(p.hbm_channels))
    return beats * p.beat_bytes


def _progress(path: Path, total: int, prompt_len: int, stop: threading.Event, tok=None):
    """Draw a progress bar on stderr from the testbench's progress lines."""
    seen = -1
    last = ""
    while not stop.is_set():
        time.sleep(0.5)
        if not path.exists():
            continue
        steps = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if len(steps) == seen:
            continue
        seen = len(steps)
        gen = [g for g in steps if g["generated"]]
        width = 30
        fill = int(width * len(gen) / max(total, 1))
        text = ""
        if tok is not None and gen:
            text = tok.decode([g["next"] for g in gen]).replace("\n", " ")[-40:]
        prompt = f" (prompt {len(steps)}/{prompt_len})" if len(steps) < prompt_len else ""
        line = f"\r[{'#' * fill}{'.' * (width - fill)}] {len(gen)}/{total} tokens{prompt}  {text}"
        sys.stderr.write(line.ljust(len(last)))
        sys.stderr.flush()
        last = line
    if last:
        sys.stderr.write("\n")


def run_decode(model_path, *, prompt_ids: list[int], tokens: int, mode: str = "op", out: Path,
               launch_overhead_cycles: int = LAUNCH_OVERHEAD_DEFAULT, check: bool = False,
               waves: bool = False, params=None, context: int | None = None,
               progress: bool = True, tokenizer=None, watchdog_cycles: int | None = None,
               host_prefill: bool = False, corrupt_section: str | None = None) -> dict:
    """Decode ``tokens`` tokens after ``prompt_ids`` on the Verilator chip in ``mode`` and
    write ``out/result.json``; returns the result. ``check`` (op mode only) compares every
    kernel's output with the golden trace. ``host_prefill``: the prompt (all but its last
    token) runs on the host's golden model and its KV cache is DMA'd into HBM, so the chip
    only runs the generated tokens' steps (``DecodeRunner.warm_start``). ``corrupt_section``
    (tests): flip a byte of that static section's bitstream in HBM after the load. Raises
    :class:`DecodeFailed` (the testbench's error) or ``ValueError`` (bad arguments)."""
    from hdl.chip import Chip
    from hdl.params import DEFAULT_PARAMS
    from sw.frontend import load_model
    from tb.runner import build, check_results, run

    p = params or DEFAULT_PARAMS
    if check and mode != "op":
        raise ValueError(f"check (per-kernel trace compare) needs op mode, not {mode!r}: the "
                         f"fused modes run a layer's kernels with no host step in between")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_path)
    t0 = time.monotonic()
    b = build(Chip(p), "rdu_chip", waves=waves)
    build_s = time.monotonic() - t0
    prog_file, tb_file = out / "progress.jsonl", out / "tb_result.json"
    for f in (prog_file, tb_file):
        if f.exists():
            f.unlink()
    args = {"params": p.to_dict(), "model": str(Path(model_path).resolve()), "mode": mode,
            "context": context, "prompt_ids": prompt_ids, "tokens": tokens,
            "launch_overhead_cycles": launch_overhead_cycles, "check": check,
            "progress": str(prog_file), "result": str(tb_file),
            "watchdog_cycles": watchdog_cycles, "host_prefill": host_prefill,
            "corrupt_section": corrupt_section}
    stop = threading.Event()
    bar = None
    if progress:
        bar = threading.Thread(target=_progress, args=(prog_file, tokens, len(prompt_ids), stop,
                                                        tokenizer), daemon=True)
        bar.start()
    t1 = time.monotonic()
    err = None
    try:
        xml = run(b, "tb.decode_tb", env={"MINIRDU_ARGS": json.dumps(args)}, waves=waves,
                  test_dir=out, log_file=out / "sim.log" if progress else None)
        check_results(xml)
    except AssertionError as e:
        err = e
    finally:
        stop.set()
        if bar:
            bar.join()
    wall = time.monotonic() - t1
    if waves:                       # also after a failed run: its waves are the ones to look at
        from sw.runtime.waves import finish_waves
        finish_waves(out)
    if not tb_file.exists():
        raise DecodeFailed(f"the decode testbench wrote no result ({err})")
    tb = json.loads(tb_file.read_text())
    if tb.get("error") or err is not None:
        raise DecodeFailed(tb.get("error") or str(err))
    steps = tb["steps"]
    gen = [s for s in steps if s["generated"]]
    n = max(len(gen), 1)
    cyc = sum(s["cycles"] for s in gen) / n
    bytes_tok = sum(_bytes_moved(s, p) for s in gen) / n
    peak = p.hbm_peak_bytes_per_cycle
    launches = sum(s["launches"] for s in gen) / n
    sections = sum(s["counters"].get("sections", 0) for s in gen) / n
    sim_cycles = tb["sim_cycles"]
    text = tokenizer.decode(tb["tokens"]) if tokenizer is not None else None
    res = {
        "model": str(model_path),
        "model_name": model.name if hasattr(model, "name") else str(model_path),
        "mode": mode,
        "prompt": tokenizer.decode(prompt_ids) if tokenizer is not None else None,
        "prompt_ids": prompt_ids,
        "tokens": tb["tokens"],
        "text": text,
        "golden_tokens": tb["golden_tokens"],
        "bit_exact": tb["tokens"] == tb["golden_tokens"] and tb.get("logits_bit_exact", False),
        "logits_bit_exact": tb.get("logits_bit_exact", False),
        "cycles_per_token": round(cyc, 1),
        "hbm_bytes_per_token": round(bytes_tok, 1),
        "hbm_peak_bytes_per_cycle": peak,
        "hbm_utilization": round(bytes_tok / (cyc * peak), 4) if cyc else 0.0,
        "kernel_launches_per_token": launches,
        "sections_per_token": sections,
        "host_prefill": tb.get("host_prefill", {}).get("positions", 0),
        "launch_overhead_cycles": launch_overhead_cycles,
        "sim_cycles": sim_cycles,
        "sim_cycles_per_second": round(sim_cycles / tb["run_wall_seconds"], 1),
        "attribution": attribution(gen, peak),
        "counters_per_token": {k: round(sum(s["counters"][k] for s in gen) / n, 1)
                               for k in (gen[0]["counters"] if gen else {})},
        "check": check,
        "compile_seconds": round(tb["compile_seconds"], 3),
        "build_seconds": round(build_s, 1),
        "build_cached": b.cached,
        "wall_seconds": round(wall, 1),
        "params": p.to_dict(),
        "per_token": [{"pos": s["pos"], "token_in": s["token_in"], "next": s["next"],
                       "generated": s["generated"], "cycles": s["cycles"],
                       "phases": s["phases"], "launches": s["launches"],
                       "chip_launches": s["counters"].get("launches"),
                       "sections": s["counters"].get("sections", 0),
                       "hbm_bytes": _bytes_moved(s, p)} for s in steps],
        "kernel_cycles_last_token": steps[-1]["kernels"] if steps else [],
    }
    (out / "result.json").write_text(json.dumps(res, indent=1))
    return res

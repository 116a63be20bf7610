"""``rdu kernel gemv``: one GEMV kernel on the Verilator chip, checked against numpy.

``rdu kernel gemv --rows R --cols C --seed S [--pcus K] [--layers N --mode layer|looped]
[--out DIR] [--waves] [--reduced]``
builds the bitstream (``sw/kernels/gemv.py``), keeps it as ``DIR/kernel.rbit`` (decode it with
``rdu inspect``), runs it on the chip through the host driver (``tb/gemv_tb.py``), compares
``y`` with ``intops.requant(intops.gemv(W, x))`` bit for bit, prints a summary and writes
``DIR/result.json``. Exit 0 when bit-exact, 1 when not, 2 on bad input.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sw.cli import UserError, command

__all__ = ["prepare_case", "run_cases", "run_gemv"]


def prepare_case(kernel, w, x, out: Path, name: str = "gemv", mode: str = "looped") -> dict:
    """Write the files the testbench reads for one kernel run; return the case dict. ``mode``:
    how a multi-layer kernel is called (:meth:`sw.kernels.gemv.GemvKernel.calls`)."""
    from sw.kernels.gemv import golden
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"rbit": out / "kernel.rbit", "w": out / "w.bin", "x": out / "x.bin",
             "y_expected": out / "y_expected.bin"}
    files["rbit"].write_bytes(kernel.to_bytes())
    files["w"].write_bytes(kernel.w_image(w))
    files["x"].write_bytes(np.asarray(x, dtype=np.int8).tobytes())
    files["y_expected"].write_bytes(golden(w, x, kernel.m, kernel.s).tobytes())
    lay = kernel.layout
    return {"name": name, **{k: str(v.resolve()) for k, v in files.items()},
            "w_addr": lay.w, "x_addr": lay.x, "y_addr": lay.y, "rows": kernel.rows,
            "units": kernel.unit_ids, "watchdog": kernel.watchdog_cycles(),
            "calls": kernel.calls(mode),
            "result": str((out / "tb_result.json").resolve())}


def build_chip(p, waves: bool = False):
    from hdl.chip import Chip
    from tb.runner import build
    t0 = time.monotonic()
    b = build(Chip(p), "rdu_chip", waves=waves)
    return b, time.monotonic() - t0


def run_cases(p, cases, test_dir: Path, *, waves: bool = False, build=None):
    """Run GEMV cases in one simulation. Returns (per-case tb results, build, summary); raises
    AssertionError (naming the failing case) when a result is not bit-exact."""
    from tb.runner import check_results, run
    b = build or build_chip(p, waves)[0]
    test_dir = Path(test_dir)
    test_dir.mkdir(parents=True, exist_ok=True)
    summary = test_dir / "tb_summary.json"
    args = {"params": p.to_dict(), "cases": cases, "summary": str(summary.resolve())}
    xml = run(b, "tb.gemv_tb", env={"MINIRDU_ARGS": json.dumps(args)}, waves=waves,
              test_dir=test_dir)
    results = [json.loads(Path(c["result"]).read_text()) if Path(c["result"]).exists() else None
               for c in cases]
    try:
        check_results(xml)
    except AssertionError as e:
        if any(r is None for r in results):
            raise
        err = e
    else:
        err = None
    return results, b, (json.loads(summary.read_text()) if summary.exists() else {}), err


def run_gemv(p, rows: int, cols: int, seed: int, pcus: int, out: Path, waves: bool = False,
             layers: int = 1, mode: str = "looped"):
    """Build, run and check one GEMV (or a chain of ``layers`` square GEMVs called per
    ``mode``); returns the result dict (also written to result.json)."""
    from sw.kernels.gemv import build_gemv, choose_requant, make_data
    out = Path(out)
    w, x = make_data(rows, cols, seed)
    if layers > 1:
        rng = np.random.default_rng(seed + 1)
        w = np.stack([w] + [rng.integers(-128, 128, size=(rows, cols)).astype(np.int8)
                            for _ in range(layers - 1)])
    m, s = choose_requant(w if layers == 1 else w[0], x)
    kernel = build_gemv(p, rows, cols, pcus=pcus, m=m, s=s, layers=layers)
    case = prepare_case(kernel, w, x, out, mode=mode)
    (out / "kernel.txt").write_text(kernel.builder.describe() + "\n")
    b, build_s = build_chip(p, waves)
    t0 = time.monotonic()
    results, b, summary, err = run_cases(p, [case], out, waves=waves, build=b)
    tb = results[0]
    if tb is None:
        raise UserError(f"the simulation ended without a result: {err}")
    c = tb["counters"]
    beats = sum(c[f"ch{k}_rd_beats"] + c[f"ch{k}_wr_beats"] for k in range(p.hbm_channels))
    cycles = c["run_busy_cycles"]
    hbm_bytes = beats * p.beat_bytes
    res = {
        "pattern": "gemv", "rows": rows, "cols": cols, "pcus": pcus, "seed": seed,
        "layers": layers, "mode": mode, "launches": c["launches"],
        "cycles_first_launch_to_done": round(tb["run_sim_cycles"]),
        "dep_stall_cycles": c["dep_stall_cycles"],
        "bit_exact": tb["bit_exact"], "mismatches": tb["mismatches"],
        "first_mismatch": tb["first_mismatch"],
        "cycles": cycles,
        "hbm_bytes": hbm_bytes,
        "hbm_bytes_expected": kernel.hbm_bytes,
        "hbm_peak_bytes_per_cycle": p.hbm_peak_bytes_per_cycle,
        "hbm_utilization": hbm_bytes / (cycles * p.hbm_peak_bytes_per_cycle) if cycles else 0.0,
        "macs_per_cycle": rows * cols / cycles if cycles else 0.0,
        "sim_cycles_per_second": (tb["run_sim_cycles"] / tb["run_wall_seconds"]
                                  if tb["run_wall_seconds"] else 0.0),
        "sim_cycles_per_second_overall": (summary.get("sim_cycles", 0) / summary["wall_seconds"]
                                          if summary.get("wall_seconds") else 0.0),
        "requant": {"m": kernel.m, "s": kernel.s},
        "w_layout": kernel.w_layout,
        "hbm_addresses": {"w": kernel.layout.w, "x": kernel.layout.x, "y": kernel.layout.y},
        "mapping": kernel.roles,
        "routes": kernel.builder.routes_json()["routes"],
        "counters": c,
        "build_seconds": round(build_s, 2), "build_cached": b.cached,
        "sim_wall_seconds": round(time.monotonic() - t0, 2),
        "bitstream": str(out / "kernel.rbit"),
        "params": p.to_dict(),
    }
    if waves:
        vcds = sorted(str(v) for v in list(out.glob("*.vcd")) + list(b.build_dir.glob("*.vcd")))
        res["vcd"] = vcds
        if vcds:
            res["gtkw"] = str(write_gtkw(kernel, Path(vcds[0]), out / "gemv.gtkw"))
    (out / "result.json").write_text(json.dumps(res, indent=2))
    return res


def write_gtkw(kernel, vcd: Path, path: Path) -> Path:
    """A GTKWave save file for a GEMV run: run_done, HBM beats, then per unit of the kernel (in
    role order) its busy and stream valid/ready signals."""
    from vcd.gtkw import GTKWSave
    top = "rdu_chip"
    ports = {"pcu": ["busy", "running", "fire", "vin__0__valid", "vin__0__ready", "vin__1__valid",
                     "vin__1__ready", "sin__0__ready", "sout_valid", "sout__ready", "vout_valid",
                     "vout__ready"],
             "pmu": ["ctrl__busy", "win__valid", "win__ready", "rout__valid", "rout__ready"],
             "agcu": ["busy", "rd__valid", "rd__ready", "wr__valid", "wr__ready"]}
    with open(path, "w") as f:
        g = GTKWSave(f)
        g.dumpfile(str(vcd))
        g.zoom_markers(-20.0)
        with g.group("chip", closed=False):
            g.trace(f"{top}.clk")
            g.trace(f"{top}.run_done")
            g.trace(f"{top}.stats__rd_beat", datafmt="bin")
            g.trace(f"{top}.stats__wr_beat", datafmt="bin")
        for role, unit in kernel.roles.items():
            kind = unit.rstrip("0123456789")
            scope = f"{top}.memsys.{unit}" if kind == "agcu" else f"{top}.fabric.{unit}"
            with g.group(f"{role}: {unit}", closed=False):
                for sig in ports[kind]:
                    g.trace(f"{scope}.{sig}")
    return path


@command("kernel gemv", "run y = requant(W @ x) (int8) on the Verilator chip, check vs numpy")
def _gemv(parser):
    parser.add_argument("--rows", type=int, required=True, help="rows of W (= length of y)")
    parser.add_argument("--cols", type=int, required=True,
                        help="columns of W (= length of x), a multiple of 64")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--layers", type=int, default=1,
                        help="a chain of N square GEMVs x_{l+1} = requant(W_l x_l) (rows == cols)")
    parser.add_argument("--mode", choices=["layer", "looped"], default="looped",
                        help="with --layers: one kernel call per layer, or one looped call")
    parser.add_argument("--pcus", type=int, default=None,
                        help="weight-streaming PCUs: 1, or 2 (split-K; default when cols >= 128)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result directory (default sim_results/gemv-RxC-TIME)")
    parser.add_argument("--waves", action="store_true", help="trace a VCD (slower build and run)")
    parser.add_argument("--reduced", action="store_true",
                        help="the reduced test chip (2x3 grid, 2 PCU stages, 1 MiB HBM; faster build) "
                             "instead of the default chip")

    def run(args):
        from hdl.params import DEFAULT_PARAMS
        from sw.kernels.builder import KernelError
        from sw.kernels.gemv import REDUCED_PARAMS, GemvError, build_gemv, layout
        p = REDUCED_PARAMS if args.reduced else DEFAULT_PARAMS
        if args.rows < 1 or args.cols < 1:
            raise UserError("--rows and --cols must be positive")
        if args.cols % p.beat_bytes or args.rows % p.beat_bytes:
            raise UserError(f"--rows and --cols must be multiples of {p.beat_bytes}")
        pcus = args.pcus if args.pcus is not None else (2 if args.cols >= 2 * p.beat_bytes else 1)
        try:
            layout(p, args.rows, args.cols, args.layers)
            build_gemv(p, args.rows, args.cols, pcus=pcus, m=1, s=0,   # validate cheaply
                       layers=args.layers)
        except (GemvError, KernelError) as e:
            raise UserError(str(e)) from None
        out = args.out or Path("sim_results") / time.strftime(f"gemv-{args.rows}x{args.cols}-%Y%m%d-%H%M%S")
        print(f"gemv {args.rows}x{args.cols}, {pcus} PCU(s), seed {args.seed}, "
              f"{p.grid_rows}x{p.grid_cols} chip; building the chip RTL (cached) ...", flush=True)
        res = run_gemv(p, args.rows, args.cols, args.seed, pcus, out, waves=args.waves,
                       layers=args.layers, mode=args.mode)
        print((out / "kernel.txt").read_text().rstrip())
        print(f"bit_exact: {res['bit_exact']}"
              + ("" if res["bit_exact"] else f" ({res['mismatches']} rows differ, first "
                 f"{res['first_mismatch']})"))
        print(f"cycles: {res['cycles']}  HBM bytes: {res['hbm_bytes']}  utilisation: "
              f"{100 * res['hbm_utilization']:.1f}% of {p.hbm_peak_bytes_per_cycle} B/cycle  "
              f"sim: {res['sim_cycles_per_second']:.0f} cycles/s")
        if args.layers > 1:
            print(f"{args.layers} layers, mode {args.mode}: {res['launches']} launch(es), "
                  f"{res['cycles_first_launch_to_done']} cycles from the first launch to done "
                  f"({res['cycles_first_launch_to_done'] / args.layers:.0f} per layer), "
                  f"dependence stalls {res['dep_stall_cycles']} cycles")
        print(f"bitstream: {out / 'kernel.rbit'}  result: {out / 'result.json'}")
        if args.waves:
            print(f"waves: {', '.join(res.get('vcd') or ['(no VCD found)'])}"
                  + (f" (open with: gtkwave -a {res['gtkw']})" if res.get("gtkw") else ""))
        return 0 if res["bit_exact"] else 1
    return run

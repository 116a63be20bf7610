"""``rdu bench-hbm``: the memory-system benchmark (see :mod:`sw.bench.hbm`)."""

from pathlib import Path

from sw.cli import UserError, command


@command("bench-hbm", "benchmark the HBM memory system on Verilator (writes hbm.json)")
def _bench_hbm(parser):
    parser.add_argument("--out", type=Path, default=Path("sim_results/bench"))
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of HBM each pattern sweeps (default 1.0 = all 2 MiB)")
    parser.add_argument("--seed", type=int, default=1)

    def run(args):
        from sw.bench.hbm import format_table, run_bench
        if not 0 < args.scale <= 1:
            raise UserError("--scale must be in (0, 1]")
        print("building the benchmark toplevel on Verilator (cached after the first build) ...",
              flush=True)
        try:
            res = run_bench(args.out, scale=args.scale, seed=args.seed)
        except AssertionError as e:
            raise UserError(f"benchmark failed: {str(e).splitlines()[0]}") from None
        print(format_table(res))
        print(f"Verilator build {res['verilator_build_seconds']} s"
              f"{' (cached)' if res['build_cached'] else ''}, run {res['run_seconds']} s; "
              f"wrote {args.out / 'hbm.json'}")
        return 0
    return run


@command("bench", "decode benchmark on Verilator: op vs layer vs looped, sweeps, simulator "
                  "speed, plots (writes DIR/)")
def _bench(parser):
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 5 min): the default model, 1 token per mode, short "
                             "sweeps, no new Verilator builds")
    parser.add_argument("--out", type=Path, default=Path("sim_results/bench"),
                        help="results folder (default sim_results/bench)")

    def run(args):
        from sw.bench.decode import FULL, QUICK, BenchError, headline_table, run_bench
        plan = QUICK if args.quick else FULL
        if args.out.exists() and not args.out.is_dir():
            raise UserError(f"--out {args.out} is a file, not a folder")
        print(f"rdu bench ({plan.name}) -> {args.out}/  (the chip's Verilator build is cached "
              f"after the first one)", flush=True)
        try:
            res = run_bench(args.out, plan, log=lambda s: print(s, flush=True))
        except BenchError as e:
            raise UserError(f"bench failed: {e}") from None
        print()
        print(headline_table(res["modes"]))
        sim = res["simspeed"]
        print(f"\nsimulator speed: Verilator {sim['verilator']['kernel']['cycles_per_second']:,.0f}"
              f" cycles/s, Amaranth {sim['amaranth']['kernel']['cycles_per_second']:,.0f} "
              f"cycles/s ({sim['ratio_kernel']}x)")
        print(f"wall {res['wall_seconds']['total'] / 60:.1f} min; wrote {args.out}/: modes.json "
              f"launch_sweep.json sweeps.json simspeed.json {' '.join(res['figures'])} SUMMARY.md")
        return 0
    return run

"""The figures of ``rdu bench`` (PNG, matplotlib with the non-interactive Agg backend).

Inputs are the dicts written to ``modes.json``, ``launch_sweep.json`` and ``sweeps.json``
(:mod:`sw.bench.decode`); each function writes one file and returns its name.

- ``roofline.png``: x = ops per HBM byte, y = ops per cycle, log-log; the memory roof (peak HBM
  bytes/cycle x intensity) and the compute roof; one point per (shape, mode).
- ``attribution.png``: where the cycles of a token go, per mode, stacked (absolute cycles and
  shares) for the default model.
- ``launch_sweep.png``: cycles/token of each mode and the speedups over ``op`` as the launch
  overhead grows, the GPU-like latency marked.
- ``sweeps.png``: HBM utilisation against the cached context and against the HBM bandwidth.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_all", "roofline", "attribution", "launch_sweep_plot", "sweeps_plot"]

MODE_COLOURS = {"op": "#d62728", "layer": "#ff7f0e", "looped": "#2ca02c"}
SHAPE_MARKERS = ["o", "s", "^", "D", "v"]
PART_COLOURS = {"hbm_busy": "#1f77b4", "run_hbm_idle": "#aec7e8", "fill": "#6baed6",
                "after_fill": "#c6dbef", "config": "#9467bd", "config_host": "#9467bd",
                "config_chip": "#c5b0d5", "launch": "#d62728", "host": "#7f7f7f",
                "other": "#bcbd22"}
DARK_PARTS = {"hbm_busy", "config", "config_host", "launch", "host"}
PART_LABELS = {"hbm_busy": "HBM moving a beat",
               "run_hbm_idle": "units running, HBM idle",
               "fill": "units waiting for a call's first beat (HBM latency)",
               "after_fill": "units running, HBM idle after the first beat",
               "config": "reconfiguration", "config_host": "reconfiguration by the host",
               "config_chip": "reconfiguration by the chip (sections)",
               "launch": "host launch overhead", "host": "host (CSRs, DMA set-up, read-back)",
               "other": "other (see the run's result.json)"}


def _split(att: dict, whole: str, parts: tuple) -> list[str]:
    """``parts`` if the run reports them and they add up to ``whole``, else ``[whole]``."""
    if all(k in att for k in parts) and abs(sum(att[k] for k in parts) - att[whole]) <= 1.0:
        return list(parts)
    return [whole]


def attribution_parts(att: dict) -> list[tuple[str, str, float]]:
    """``(key, label, cycles)`` of a run's attribution (:func:`sw.runtime.sim.attribution`) in
    stacking order; the parts add up to ``att["cycles"]``. ``run_hbm_idle`` and ``config`` are
    shown as their parts (fill / after the first beat; by the host / by the chip) when the run
    reports them and they add up; a remainder no known part explains is shown as ``other``."""
    keys = ["hbm_busy", *_split(att, "run_hbm_idle", ("fill", "after_fill")),
            *_split(att, "config", ("config_host", "config_chip")), "launch", "host"]
    parts = [(k, PART_LABELS[k], float(att.get(k, 0.0))) for k in keys]
    rest = float(att.get("cycles", 0.0)) - sum(c for _, _, c in parts)
    if abs(rest) > 1.0:             # a part this module does not know yet: keep the sum honest
        parts.append(("other", PART_LABELS["other"], rest))
    return parts


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _available(modes: dict) -> dict:
    return {m: r for m, r in modes.items() if r.get("available")}


def roofline(modes_json: dict, path: Path) -> str:
    plt = _plt()
    peak_b = modes_json["hbm_peak_bytes_per_cycle"]
    peak_ops = modes_json["compute_peak_ops_per_cycle"]
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    pts = []
    for i, s in enumerate(modes_json["shapes"]):
        for mode, r in _available(s["modes"]).items():
            x = r["ops_per_token"] / r["hbm_bytes_per_token"]
            y = r["ops_per_token"] / r["cycles_per_token"]
            pts.append((x, y))
            ax.scatter([x], [y], s=70, color=MODE_COLOURS.get(mode, "k"),
                       marker=SHAPE_MARKERS[i % len(SHAPE_MARKERS)], edgecolor="black",
                       linewidth=0.6, zorder=3)
    xs = [p[0] for p in pts] or [1.0]
    ridge = peak_ops / peak_b
    lo, hi = min(xs) / 4, max(max(xs) * 4, 8 * ridge)
    ax.plot([lo, ridge, hi], [peak_b * lo, peak_ops, peak_ops], color="black", lw=1.5)
    ax.text(lo * 1.2, peak_b * lo * 1.6, f"HBM roof: {peak_b} B/cycle x intensity", fontsize=8)
    ax.text(hi / 1.15, peak_ops * 1.15, f"compute roof {peak_ops} ops/cycle\n(every PCU lane "
            f"and stage)", fontsize=8, ha="right", va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ys = [p[1] for p in pts] or [1.0]
    ax.set_ylim(min(ys) / 4, peak_ops * 3)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (ops per HBM byte)")
    ax.set_ylabel("achieved ops per cycle")
    ax.set_title(f"Decode roofline (launch overhead {modes_json['launch_overhead_cycles']:,} "
                 f"cycles/launch)")
    ax.grid(True, which="both", alpha=0.25)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, markeredgecolor="black",
                          label=f"{m} mode") for m, c in MODE_COLOURS.items()]
    handles += [plt.Line2D([], [], marker=SHAPE_MARKERS[i % len(SHAPE_MARKERS)], ls="",
                           color="white", markeredgecolor="black", label=s["name"])
                for i, s in enumerate(modes_json["shapes"])]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.text(0.01, 0.035, modes_json["ops_note"] + ".", fontsize=7, color="#555555")
    fig.text(0.01, 0.008, "HBM bytes as measured: in layer/looped mode they include the chip's "
             "reads of the section bitstreams, hence the lower intensity.", fontsize=7,
             color="#555555")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path).name


def attribution(modes_json: dict, path: Path) -> str:
    plt = _plt()
    d = next(s for s in modes_json["shapes"] if s["default"])
    modes = _available(d["modes"])
    names = list(modes)
    split = {m: attribution_parts(r["attribution"]) for m, r in modes.items()}
    present = {k for m in names for k, _, _ in split[m]}
    parts = [k for k in PART_LABELS if k in present]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, share in ((ax1, False), (ax2, True)):
        bottom = [0.0] * len(names)
        for part in parts:
            vals = []
            for m in names:
                v = {k: c for k, _, c in split[m]}.get(part, 0.0)
                tot = modes[m]["attribution"]["cycles"]
                vals.append(100 * v / tot if share else v / 1000)
            ax.bar(names, vals, bottom=bottom, color=PART_COLOURS.get(part),
                   label=PART_LABELS.get(part, part), edgecolor="white", linewidth=0.5)
            if share:
                for i, v in enumerate(vals):
                    if v >= 6:
                        ax.text(i, bottom[i] + v / 2, f"{v:.0f}%", ha="center", va="center",
                                fontsize=8, color="white" if part in DARK_PARTS else "black")
            bottom = [b + v for b, v in zip(bottom, vals)]
        if not share:
            for i, m in enumerate(names):
                ax.text(i, bottom[i], f"{modes[m]['attribution']['cycles']:,.0f}", ha="center",
                        va="bottom", fontsize=8)
            ax.set_ylabel("thousand cycles per token")
            ax.set_title("cycles per token")
            ax.set_ylim(0, max(bottom) * 1.12 if bottom else 1)
        else:
            ax.set_ylabel("share of the token's cycles (%)")
            ax.set_title("shares")
            ax.set_ylim(0, 100)
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(f"{d['name']}: where the cycles of a token go (launch overhead "
                 f"{modes_json['launch_overhead_cycles']:,} cycles/launch)")
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path).name


def launch_sweep_plot(sweep: dict, path: Path) -> str:
    plt = _plt()
    mhz = sweep["clock_mhz"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    d = sweep["shapes"][0]
    us = [r["launch_overhead_us"] for r in d["rows"]]
    for mode in d["launches_per_token"]:
        ax1.plot(us, [r["cycles_per_token"][mode] / 1000 for r in d["rows"]], marker="o",
                 color=MODE_COLOURS.get(mode), label=f"{mode} ({d['launches_per_token'][mode]:.0f}"
                                                      f" launches/token)")
    ax1.set_xlabel(f"host launch overhead (us at {mhz} MHz)")
    ax1.set_ylabel("thousand cycles per token")
    ax1.set_title(f"{d['name']}: cycles per token")
    ax1.set_ylim(bottom=0)
    styles = {"layer_vs_op": "--", "looped_vs_op": "-", "looped_vs_layer": ":"}
    for i, s in enumerate(sweep["shapes"]):
        for key, ls in styles.items():
            vals = [r["speedup"].get(key) for r in s["rows"]]
            if any(v is None for v in vals):
                continue
            ax2.plot([r["launch_overhead_us"] for r in s["rows"]], vals, ls=ls,
                     marker=SHAPE_MARKERS[i % len(SHAPE_MARKERS)], ms=4,
                     color=f"C{i}", label=f"{s['name']}: {key.replace('_', ' ')}")
    ax2.axhline(1.0, color="black", lw=0.8)
    ax2.set_xlabel(f"host launch overhead (us at {mhz} MHz)")
    ax2.set_ylabel("speedup (cycles/token ratio)")
    ax2.set_title("speedups")
    ax2.set_ylim(bottom=0)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7)
    gpu = sweep["gpu_like_launch_us"]
    for ax in (ax1, ax2):
        ax.axvline(gpu, color="#555555", ls=":", lw=1)
        ax.text(gpu, ax.get_ylim()[1] * 0.97, f" GPU-like launch\n ({gpu:g} us = "
                f"{sweep['gpu_like_launch_cycles']:,} cycles)", fontsize=7, va="top")
        ax.grid(True, alpha=0.25)
    ax1.legend(fontsize=8, loc="upper left")
    fig.suptitle("Launch-overhead sweep (exact: the launch wait is charged per launch)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path).name


def sweeps_plot(sweeps: dict, path: Path) -> str:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    ctx = sweeps.get("context") or []
    if ctx:
        labelled: set = set()
        for mode in dict.fromkeys(r["mode"] for r in ctx):
            rows = [r for r in ctx if r["mode"] == mode]
            ax1.plot([r["cached_positions"] for r in rows],
                     [100 * r["hbm_utilization"] for r in rows], marker="o",
                     color=MODE_COLOURS.get(mode), label=f"{mode}")
            for r in rows:
                key = (r["cached_positions"], r["hbm_bytes_per_token"])
                if key in labelled:        # the same bytes as a mode already labelled here
                    continue
                labelled.add(key)
                ax1.annotate(f"{r['hbm_bytes_per_token'] / 1000:.0f} kB", (r["cached_positions"],
                             100 * r["hbm_utilization"]), textcoords="offset points",
                             xytext=(0, 6), ha="center", fontsize=6,
                             color=MODE_COLOURS.get(mode))
            ax1.plot([r["cached_positions"] for r in rows],
                     [100 * r["hbm_utilization_chip_busy"] for r in rows], marker=".", ls=":",
                     color=MODE_COLOURS.get(mode), label=f"{mode}, launch wait left out")
        ax1.set_xlabel("positions in the KV cache before the token")
        ax1.set_ylabel("HBM utilisation (% of peak)")
        top = max(100 * max(r["hbm_utilization"], r["hbm_utilization_chip_busy"]) for r in ctx)
        ax1.set_ylim(0, top * 1.45)
        ax1.legend(fontsize=7, loc="upper left", ncol=2)
    else:
        ax1.text(0.5, 0.5, "context sweep skipped\n" + sweeps.get("context_skipped", ""),
                 ha="center", va="center", fontsize=8, wrap=True, transform=ax1.transAxes)
    ax1.set_title("context sweep (labels: HBM bytes per token)")
    bw = sweeps.get("bandwidth") or []
    chans = sorted({r["hbm_channels"] for r in bw})
    modes = list(dict.fromkeys(r["mode"] for r in bw))
    width = 0.8 / max(len(modes), 1)
    for j, mode in enumerate(modes):
        vals, cyc = [], []
        for c in chans:
            row = next((r for r in bw if r["hbm_channels"] == c and r["mode"] == mode), None)
            vals.append(100 * row["hbm_utilization"] if row else 0)
            cyc.append(row["cycles_per_token"] if row else 0)
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(chans))]
        ax2.bar(xs, vals, width, color=MODE_COLOURS.get(mode), label=mode)
        for x, v, cy in zip(xs, vals, cyc):
            ax2.text(x, v, f"{v:.1f}%\n{cy / 1000:.0f}k", ha="center", va="bottom", fontsize=6)
    peaks = {r["hbm_channels"]: r["hbm_peak_bytes_per_cycle"] for r in bw}
    ax2.set_xticks(range(len(chans)), [f"{c} ch\n{peaks[c]} B/cycle" for c in chans])
    ax2.set_ylabel("HBM utilisation (% of peak)")
    ax2.set_title("HBM bandwidth sweep (labels: utilisation, cycles/token)")
    if bw:
        ax2.set_ylim(0, 100 * max(r["hbm_utilization"] for r in bw) * 1.25)
    if modes:
        ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.25)
    fig.suptitle(f"Default model, launch overhead {sweeps['launch_overhead_cycles']:,} "
                 f"cycles/launch")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path).name


def write_all(out: Path, modes_json: dict, sweep: dict, sweeps: dict) -> list[str]:
    out = Path(out)
    return [roofline(modes_json, out / "roofline.png"),
            attribution(modes_json, out / "attribution.png"),
            launch_sweep_plot(sweep, out / "launch_sweep.png"),
            sweeps_plot(sweeps, out / "sweeps.png")]

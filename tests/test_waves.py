"""The waves save-file writer (sw/runtime/waves.py) on synthetic VCDs with the chip's real
signal names (no Verilator), and ``make waves``."""

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sw.runtime.waves import (GTKW_NAME, VCD_NAME, WavesError, collect_vcd,
                              find_chip, finish_waves, latest_waves, scan_first_events,
                              scan_header, write_gtkw)

REPO = Path(__file__).resolve().parent.parent

CODES = [chr(c) for c in range(33, 127)]


def _code(i: int) -> str:
    s = ""
    while True:
        s = CODES[i % len(CODES)] + s
        i //= len(CODES)
        if i == 0:
            return s
        i -= 1


def chip_signals(n_agcus=2, n_pcus=2, n_pmus=2, n_ch=2, root=""):
    """(scope, name, width) of a Verilator trace of the chip, the way ``tb/runner.py``'s waves
    build names them (a subset: what the save file may use plus some it must not). Verilator
    puts the toplevel's ports in a ``$rootio`` scope and the design under ``rdu_chip``; other
    versions/mains wrap everything in ``TOP`` (``root="TOP."``)."""
    top = f"{root}rdu_chip"
    dut = f"{top}.dut"
    sig = [(top, "clk", 1), (top, "rst", 1), (top, "run_done", 1), (top, "csr__w_en", 1),
           (top, "csr__r_en", 1), (top, "csr__addr", 12), (top, "h2c__valid", 1),
           (top, "h2c__ready", 1), (top, "c2h__valid", 1), (top, "c2h__ready", 1),
           (top, "h2c__payload", 512), (f"{root}$rootio", "clk", 1),
           (f"{root}$rootio", "run_done", 1)]
    seq = f"{dut}.host.sequencer"
    sig += [(seq, n, w) for n, w in (("launch", 1), ("busy", 1), ("done", 1), ("active", 1),
                                     ("dep_stall", 1), ("base", 16), ("count", 16),
                                     ("unit_iteration", 16), ("mask", 37), ("running", 37),
                                     ("unit_start", 37), ("unit_done", 37), ("dep3", 16))]
    sig += [(f"{dut}.host", n, w) for n, w in (("run_start", 1), ("run_done", 1),
                                               ("unit_busy", 37), ("$12", 1))]
    sig += [(f"{dut}.host.dma", n, w) for n, w in (("start", 1), ("busy", 1), ("done", 1),
                                                   ("to_hbm", 1))]
    sig += [(f"{dut}.config", n, w) for n, w in (("start", 1), ("busy", 1), ("done", 1),
                                                 ("status", 4), ("fsm_state", 4), ("writes", 16),
                                                 ("data__valid", 1), ("data__ready", 1),
                                                 ("cfg__we", 1), ("cfg__unit", 8),
                                                 ("cfg__addr", 8))]
    hbm = f"{dut}.memsys.hbm"
    for c in range(n_ch):
        sig += [(f"{hbm}.ch{c}", n, 1) for n in ("space", "push", "busy", "act", "rd_beat",
                                                  "wr_beat", "row_miss", "refresh_stall",
                                                  "refresh_cmd")]
        sig += [(hbm, f"c{c}_want", n_agcus + 1)]
    for p in range(n_agcus + 1):
        sig += [(hbm, f"ports__{p}__req__valid", 1), (hbm, f"ports__{p}__req__ready", 1),
                (hbm, f"p{p}_granted", 1), (hbm, f"ports__{p}__rdata__valid", 1)]
    for a in range(n_agcus):
        s = f"{dut}.memsys.agcu{a}"
        sig += [(s, n, w) for n, w in (("start", 1), ("busy", 1), ("done", 1), ("status", 4),
                                       ("fsm_state", 2), ("iteration", 16), ("rd__valid", 1),
                                       ("rd__ready", 1), ("wr__valid", 1), ("wr__ready", 1),
                                       ("mem__req__valid", 1), ("mem__req__ready", 1),
                                       ("mem__rdata__valid", 1), ("rd__payload", 512))]
        sig += [(f"{s}.rbuf", "r_rdy", 1)]
    for i in range(n_pcus):
        s = f"{dut}.fabric.pcu{i}"
        sig += [(s, n, w) for n, w in (("ctrl__start", 1), ("ctrl__busy", 1), ("ctrl__done", 1),
                                       ("ctrl__status", 4), ("ctrl__iteration", 16))]
        for st in ("vin__0", "vin__1", "vin__2", "sin__0", "sin__1", "vout", "sout",
                   "ctl_in__0", "ctl_out__0"):
            sig += [(s, f"{st}__valid", 1), (s, f"{st}__ready", 1)]
        sig += [(s, "vin__0__payload", 512), (f"{s}.shared", "stage0_valid", 1)]
    for i in range(n_pmus):
        s = f"{dut}.fabric.pmu{i}"
        sig += [(s, n, w) for n, w in (("ctrl__start", 1), ("ctrl__busy", 1), ("ctrl__done", 1),
                                       ("ctrl__status", 4), ("ctrl__iteration", 16))]
        for st in ("win", "waddr", "gidx", "rout", "sout", "ctl_in__1"):
            sig += [(s, f"{st}__valid", 1), (s, f"{st}__ready", 1)]
    sig += [(f"{dut}.fabric.sw_0_0", "vec_in_W0__valid", 1)]
    return sig


def write_vcd(path: Path, signals, *, period=10_000, launch_cycle=40, done_cycle=300,
              cycles=400, timescale="1ps", extra_after_header: str = "", more_launches=()) -> dict:
    """A Verilator-style VCD: nested ``$scope`` blocks, vectors with a separate ``[msb:0]``
    token; clk toggles, a sequencer launch pulse at ``launch_cycle`` (and ``more_launches``)
    and its done rising at ``done_cycle``."""
    launches = {launch_cycle, *more_launches}
    tree: dict = {}
    codes = {}
    for i, (scope, name, w) in enumerate(signals):
        node = tree
        for part in scope.split("."):
            node = node.setdefault(part, {})
        node.setdefault("__vars__", []).append((name, w, _code(i)))
        codes[f"{scope}.{name}"] = _code(i)
    out = ["$version Generated by VerilatedVcd $end",
           "$timescale " + timescale + " $end", ""]

    def emit(node, name, depth):
        out.append(" " * depth + f"$scope module {name} $end")
        for v, w, c in node.get("__vars__", []):
            rng = f" [{w - 1}:0]" if w > 1 else ""
            out.append(" " * (depth + 1) + f"$var wire {w:>2} {c} {v}{rng} $end")
        for k, sub in node.items():
            if k != "__vars__":
                emit(sub, k, depth + 1)
        out.append(" " * depth + "$upscope $end")
    for k, sub in tree.items():
        emit(sub, k, 0)
    out += ["$enddefinitions $end", extra_after_header, "", "#0"]
    top = next(k for k in codes if k.endswith("rdu_chip.clk"))[:-len(".clk")]
    clk = codes[f"{top}.clk"]
    seq = f"{top}.dut.host.sequencer"
    lc, dc = codes.get(f"{seq}.launch"), codes.get(f"{seq}.done")
    out += [f"0{c}" for c in codes.values()]
    for cyc in range(cycles):
        t = cyc * period
        out.append(f"#{t}")
        out.append(f"1{clk}")
        if lc and cyc in launches:
            out.append(f"1{lc}")
        if lc and cyc - 1 in launches:
            out.append(f"0{lc}")
        if dc and cyc == done_cycle:
            out.append(f"1{dc}")
        out.append(f"#{t + period // 2}")
        out.append(f"0{clk}")
    path.write_text("\n".join(out) + "\n")
    return codes


def gtkw_traces(text: str) -> list[str]:
    """Signal names a .gtkw references (lines that are neither directives nor flags)."""
    names = []
    for ln in text.splitlines():
        ln = ln.strip()
        if not ln or ln[0] in "[*@-#":
            continue
        ln = re.sub(r"^\+\{[^}]*\}\s*", "", ln)
        names.append(ln)
    return names


def gtkw_aliases(text: str) -> dict:
    return {m.group(2): m.group(1) for m in re.finditer(r"^\+\{([^}]*)\} (\S+)$", text, re.M)}


def vcd_names(path: Path) -> set:
    h = scan_header(path)
    return {v.gtkw_name for v in h.vars.values()}


def test_scan_header_reads_declarations_only(tmp_path):
    sig = chip_signals()
    vcd = tmp_path / "a.vcd"
    # after the header: text that would add a variable if the scanner read on
    write_vcd(vcd, sig, extra_after_header="$scope module bogus $end $var wire 1 ~~ late $end "
                                           "$upscope $end")
    h = scan_header(vcd)
    assert h.timescale == (1, "ps")
    assert len(h.vars) == len({(s, n) for s, n, _ in sig})
    v = h.get("rdu_chip.dut.host.sequencer.count")
    assert (v.width, v.range, v.gtkw_name) == (16, "[15:0]",
                                              "rdu_chip.dut.host.sequencer.count[15:0]")
    assert h.get("rdu_chip.clk").gtkw_name == "rdu_chip.clk"
    assert not any("late" in p for p in h.vars)
    assert vcd.read_bytes()[h.header_bytes - len(b"$end"):h.header_bytes] == b"$end"
    assert "rdu_chip.dut.fabric.pcu1" in h.scopes
    assert h.children("rdu_chip.dut.fabric") == ["pcu0", "pcu1", "pmu0", "pmu1", "sw_0_0"]
    cs = find_chip(h)
    assert (cs.top, cs.dut) == ("rdu_chip", "rdu_chip.dut")


def test_scan_header_tiny_chunks_and_inline_range(tmp_path):
    """Tokens split across read chunks, and a range written inside the reference."""
    vcd = tmp_path / "b.vcd"
    vcd.write_text("$date today $end\n$timescale\n 10 ns\n$end\n$scope module t $end\n"
                   "$var reg 8 ! cnt[7:0] $end\n$var wire 1 \" x $end\n$upscope $end\n"
                   "$enddefinitions $end\n#0\n1\"\n")
    import sw.runtime.waves as w
    with open(vcd, "rb") as f:
        toks = [t for t, _ in w._tokens(f, chunk=3)]
    assert toks[:4] == ["$date", "today", "$end", "$timescale"]
    h = scan_header(vcd)
    assert h.timescale == (10, "ns")
    assert h.get("t.cnt").gtkw_name == "t.cnt[7:0]" and h.get("t.x").width == 1


def test_scan_header_not_a_vcd(tmp_path):
    p = tmp_path / "x.vcd"
    p.write_text("hello world\n")
    with pytest.raises(WavesError, match="no VCD header"):
        scan_header(p)


def test_gtkw_groups_aliases_and_names_exist(tmp_path):
    sig = chip_signals(n_agcus=4, n_pcus=3, n_pmus=2)
    vcd = tmp_path / "waves.vcd"
    write_vcd(vcd, sig)
    info = write_gtkw(vcd, tmp_path / "waves.gtkw")
    text = (tmp_path / "waves.gtkw").read_text()
    names = gtkw_traces(text)
    have = vcd_names(vcd)
    assert names and set(names) <= have, set(names) - have
    assert len(names) == len(info["signals"])
    assert list(info["groups"]) == ["overview", "host / run control", "config controller", "HBM",
                                    "AGCU0", "AGCU1", "AGCU2", "AGCU3", "PCU0", "PCU1", "PCU2",
                                    "PMU0", "PMU1"]
    # group markers: one begin (-name) and one end per group and sub-group
    for g in info["groups"]:
        assert f"-{g}" in text.splitlines()
    assert "-HBM ch0" in text.splitlines() and "-HBM port 4 (dma)" in text.splitlines()
    al = gtkw_aliases(text)
    seq = "rdu_chip.dut.host.sequencer"
    assert al[f"{seq}.busy"] == "seq busy"
    assert al[f"{seq}.count[15:0]"] == "seq count"
    assert al["rdu_chip.dut.memsys.hbm.ch1.rd_beat"] == "ch1 read beat"
    assert al["rdu_chip.dut.memsys.hbm.c1_want[4:0]"] == "ch1 req valid (ports)"
    assert al["rdu_chip.dut.memsys.agcu2.rd__ready"] == "agcu2 rd ready"
    assert al["rdu_chip.dut.fabric.pcu2.vin__1__valid"] == "pcu2 vin1 valid"
    assert al["rdu_chip.dut.fabric.pmu1.ctl_in__1__ready"] == "pmu1 ctl_in1 ready"
    # every unit's busy in the overview, the PCU/PMU detail groups closed
    ov = text.split("-overview")[1]
    for u in ("agcu3", "pcu2", "pmu1"):
        assert f"{u} busy" in ov
    # not traced: payloads, internals of the shared units, other toplevel copies
    for bad in ("payload", ".shared.", ".rbuf.", "sw_0_0", "$12", "dep3"):
        assert not any(bad in n for n in names), bad
    assert not any(n.startswith("$rootio") for n in names)
    # PCU streams in a fixed order: inputs (vector, scalar, control) then outputs
    pcu = [al[n] for n in names if ".pcu0." in n and n.endswith("valid")]
    assert pcu == ["pcu0 vin0 valid", "pcu0 vin1 valid", "pcu0 vin2 valid", "pcu0 sin0 valid",
                   "pcu0 sin1 valid", "pcu0 ctl_in0 valid", "pcu0 vout valid",
                   "pcu0 sout valid", "pcu0 ctl_out0 valid"]


def test_gtkw_formats_and_colors(tmp_path):
    vcd = tmp_path / "w.vcd"
    write_vcd(vcd, chip_signals())
    write_gtkw(vcd, tmp_path / "w.gtkw")
    lines = (tmp_path / "w.gtkw").read_text().splitlines()

    def flags_color(name):
        i = next(k for k, ln in enumerate(lines) if ln.endswith(" " + name))
        flags = color = None
        for ln in reversed(lines[:i]):
            if flags is None and ln.startswith("@"):
                flags = int(ln[1:], 16)
            if color is None and ln.startswith("[color]"):
                color = int(ln.split()[1])
            if flags is not None and color is not None:
                break
        return flags, color
    from vcd.gtkw import GTKWFlag
    f, c = flags_color("rdu_chip.dut.host.sequencer.count[15:0]")
    assert f & GTKWFlag.dec.value and not f & GTKWFlag.hex.value
    f, c = flags_color("rdu_chip.dut.memsys.agcu0.rd__valid")
    assert c == 4                                               # green
    f, c = flags_color("rdu_chip.dut.memsys.agcu0.rd__ready")
    assert c == 5                                               # blue
    f, c = flags_color("rdu_chip.dut.fabric.pcu1.ctrl__busy")
    assert c == 2                                               # orange
    f, c = flags_color("rdu_chip.dut.memsys.hbm.ch0.refresh_stall")
    assert c == 1                                               # red


def test_missing_signals_are_skipped(tmp_path):
    """Drop a whole unit's streams, the config FSM, a channel and the sequencer: no error,
    nothing missing referenced, empty groups dropped."""
    sig = [s for s in chip_signals()
           if not (s[0].endswith("pmu1") and "__" in s[1] and s[1] != "ctrl__busy")
           and s[1] != "fsm_state" and not s[0].endswith(".ch1")
           and not s[0].endswith("host.sequencer") and not s[0].endswith("config")]
    vcd = tmp_path / "m.vcd"
    write_vcd(vcd, sig)
    info = write_gtkw(vcd, tmp_path / "m.gtkw")
    names = gtkw_traces((tmp_path / "m.gtkw").read_text())
    assert set(names) <= vcd_names(vcd)
    assert "config controller" not in info["groups"]
    assert "PMU1" in info["groups"] and info["groups"]["PMU1"] == 1      # only its busy
    assert not any(".ch1." in n or "fsm_state" in n or ".sequencer." in n for n in names)
    assert info["first_launch"] is None and info["marker"] == -1         # no sequencer


def test_not_the_chip_gives_an_empty_but_valid_save_file(tmp_path):
    vcd = tmp_path / "o.vcd"
    write_vcd(vcd, [("TOP.other", "clk", 1), ("TOP.rdu_chip", "clk", 1)], cycles=5)
    info = write_gtkw(vcd, tmp_path / "o.gtkw")
    assert info["groups"] == {} and info["signals"] == []
    assert "[dumpfile]" in (tmp_path / "o.gtkw").read_text()
    # a toplevel with run_done but no chip below: its clock and run_done
    write_vcd(vcd, [("TOP.x", "clk", 1), ("TOP.rdu_chip", "clk", 1),
                    ("TOP.rdu_chip", "run_done", 1)], cycles=5)
    info = write_gtkw(vcd, tmp_path / "o.gtkw")
    assert info["signals"] == ["TOP.rdu_chip.clk", "TOP.rdu_chip.run_done"]


def test_chip_under_a_top_scope(tmp_path):
    """The same chip one level deeper (a ``TOP`` wrapper): found, same groups."""
    a, b = tmp_path / "a.vcd", tmp_path / "b.vcd"
    write_vcd(a, chip_signals())
    write_vcd(b, chip_signals(root="TOP."))
    ia, ib = write_gtkw(a, tmp_path / "a.gtkw"), write_gtkw(b, tmp_path / "b.gtkw")
    assert ia["groups"] == ib["groups"]
    assert ib["signals"] == ["TOP." + n for n in ia["signals"]]
    assert ib["first_launch"] == ia["first_launch"] is not None


def test_zoom_and_marker_on_first_kernel_call(tmp_path):
    vcd = tmp_path / "z.vcd"
    period = 10_000
    later = [1200 + 10 * k for k in range(30)]
    write_vcd(vcd, chip_signals(), period=period, launch_cycle=100, done_cycle=1100,
              cycles=1600, more_launches=later)
    h = scan_header(vcd)
    ev = scan_first_events(vcd, h)
    assert (ev.period, ev.launch, ev.call_done) == (period, 100 * period, 1100 * period)
    info = write_gtkw(vcd, tmp_path / "z.gtkw", header=h, events=ev)
    text = (tmp_path / "z.gtkw").read_text()
    assert info["marker"] == 100 * period
    assert 0 <= info["timestart"] < 100 * period
    m = re.search(r"^\*(-?[\d.]+) (-?\d+)((?: -?\d+)*)$", text, re.M)
    zoom, marker = float(m.group(1)), int(m.group(2))
    assert marker == 100 * period
    # named markers a..z on the first 26 launches
    assert [int(x) for x in m.group(3).split()] == [c * period for c in [100] + later[:25]]
    assert ev.launches == [c * period for c in [100] + later[:25]]
    # GTKWave shows 2**-zoom time units per 200 pixels: the call (1000 cycles) must fit in a
    # wave pane of ~1100 px and fill most of it
    shown = 2 ** -zoom / 200 * 1100
    assert 1000 * period <= shown <= 1.5 * 1000 * period
    assert f"[timestart] {info['timestart']}" in text
    assert f"[dumpfile] \"{vcd.resolve()}\"" in text


def test_scan_first_events_without_launch_is_bounded(tmp_path):
    vcd = tmp_path / "n.vcd"
    sig = [s for s in chip_signals() if s[1] != "launch"]
    write_vcd(vcd, sig, cycles=2000)
    h = scan_header(vcd)
    ev = scan_first_events(vcd, h, max_bytes=4096)
    assert ev.launch is None and ev.period == 10_000
    assert ev.end is not None and ev.end < 1000 * 10_000       # stopped early
    info = write_gtkw(vcd, tmp_path / "n.gtkw", header=h, events=ev)
    assert info["marker"] == -1 and info["timestart"] == 0
    assert math.isclose(2 ** -info["zoom"] / 200 * 1100, 2000 * 10_000, rel_tol=1e-3)


def test_collect_and_finish(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(WavesError, match="no VCD"):
        collect_vcd(out)
    with pytest.raises(WavesError, match="no VCD"):
        finish_waves(out, strict=True)
    assert "no VCD" in finish_waves(out)["error"]
    assert "waves:            none (no VCD" in capsys.readouterr().err
    write_vcd(out / "dump.vcd", chip_signals())
    info = finish_waves(out)
    assert not (out / "dump.vcd").exists()
    assert (out / VCD_NAME).is_file() and (out / GTKW_NAME).is_file()
    assert info["vcd_bytes"] == (out / VCD_NAME).stat().st_size
    assert "make waves" in capsys.readouterr().err
    # again (no new dump): keeps the VCD, rewrites the save file
    info2 = finish_waves(out, quiet=True)
    assert info2["signals"] == info["signals"]


def test_latest_waves(tmp_path):
    assert latest_waves(tmp_path) is None
    for i, name in enumerate(("a", "b", "c")):
        d = tmp_path / name
        d.mkdir()
        if name != "c":
            (d / GTKW_NAME).write_text("x")
            os.utime(d / GTKW_NAME, (1000 + i, 1000 + i))
    assert latest_waves(tmp_path) == tmp_path / "b" / GTKW_NAME


def _make_waves(tmp_path, results, gtkwave):
    env = dict(os.environ)
    return subprocess.run(["make", "-s", "--no-print-directory", "waves",
                           f"WAVES_DIR={results}", f"GTKWAVE={gtkwave}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_waves(tmp_path):
    results = tmp_path / "sim_results"
    results.mkdir()
    r = _make_waves(tmp_path, results, "gtkwave-not-installed-here")
    assert r.returncode != 0 and "no run with waves" in r.stderr
    for name in ("old", "new"):
        d = results / name
        d.mkdir()
        write_vcd(d / VCD_NAME, chip_signals(), cycles=5)
        write_gtkw(d / VCD_NAME, d / GTKW_NAME)
    os.utime(results / "old" / GTKW_NAME, (1000, 1000))
    r = _make_waves(tmp_path, results, "gtkwave-not-installed-here")
    assert r.returncode == 0, r.stderr
    assert "sudo apt-get install gtkwave" in r.stdout
    assert str(results / "new" / GTKW_NAME) in r.stdout
    assert str(results / "new" / VCD_NAME) in r.stdout
    assert "old" not in r.stdout


def test_lean_trace_config():
    """The waves build's Verilator lines (tb/runner.py): shared-unit internals off, and one
    line range per run of Amaranth ``$N`` declarations, named signals untouched."""
    from tb.runner import _lean_trace_config
    v = "\n".join([
        "module \\top.dut (a, b);",           # 1
        "  wire [12:0] \\$1 ;",               # 2
        "  wire \\$10 ;",                     # 3
        "  reg signed [3:0] \\$11 ;",         # 4
        "  reg \\$auto$verilog_backend.cc:2355:dump_module$3  = 0;",   # 5
        "  wire busy;",                       # 6
        "  wire \\c2h__payload$26 ;",         # 7  (a named signal with a suffix: kept)
        "  input [3:0] a;",                   # 8
        "  wire \\$7 ;",                      # 9
        "  assign \\$1 = 0;",                 # 10 (a use, not a declaration)
        "endmodule"])
    lines = _lean_trace_config(v, Path("/x/build/rdu_chip.v"))
    assert lines == ['tracing_off -scope "*.shared"', 'tracing_off -scope "*.latency*"',
                     'tracing_off -file "*/rdu_chip.v" -lines 2-5',
                     'tracing_off -file "*/rdu_chip.v" -lines 9-9']


@pytest.mark.parametrize("scope", ["sections", "sections$216"])
def test_section_sequencer_group_under_either_scope_name(tmp_path, scope):
    """Amaranth names the host's section sequencer ``sections`` or ``sections$N``: the group
    finds it under either, with the signals a person follows in a looped decode."""
    sec = f"rdu_chip.dut.host.{scope}"
    sig = chip_signals() + [(sec, n, w) for n, w in (("busy", 1), ("phase", 3), ("entry", 8),
                                                     ("iteration", 16), ("cc_held", 1))]
    vcd = tmp_path / "s.vcd"
    write_vcd(vcd, sig)
    info = write_gtkw(vcd, tmp_path / "s.gtkw")
    names = gtkw_traces((tmp_path / "s.gtkw").read_text())
    assert info["groups"].get("section sequencer") == 5
    assert f"{sec}.entry[7:0]" in names and f"{sec}.iteration[15:0]" in names
    assert set(names) <= vcd_names(vcd)

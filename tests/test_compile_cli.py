"""``rdu compile`` (sw/compiler/cli.py, sw/compiler/report.py): bitstreams, mapping report and
manifest for the shipped model and two random shapes, checked against the compiled program and
against the written bitstreams decoded independently; one-line errors (exit 2) for bad input."""

import json
import re
from pathlib import Path

import pytest

from hdl.agcu import AgcuMode, AgcuReg, agcu_count_reg
from hdl.params import DEFAULT_PARAMS
from hdl.unitmap import unit_map
from sw.bitstream import Bitstream
from sw.bitstream_cli import inspect_text
from sw.cli import main
from sw.compiler.program import compile_decode
from sw.frontend import load_model
from sw.frontend.hf import save_hf
from sw.golden import quantized
from sw.model import random_model

from compiler_shapes import DEFAULT_MODEL, RANDOM_CONFIGS

REPORT_SECTIONS = [
    "minirdu mapping report", "\nmodel ", "\nshape ", "\nmode       op", "\nchip ", "\ncompile ",
    "Kernels of the step", "Call order of a token", "  units:", "  grid (", "  routes (",
    "  PMU buffer map", "  AGCU programs", "  HBM/launch", "HBM layout", "  layer block",
    "  KV cache:", "Per token (decode step at position ", "  launches ", "  HBM bytes ",
    "    weights ", "    KV cache ", "    activations ", "at the last position of the context",
]


def _rdu(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _agcu_bytes(bs: Bitstream) -> int:
    """HBM bytes per launch from the bitstream's own AGCU writes (not from the compiler)."""
    agcus = {u.id for u in unit_map(DEFAULT_PARAMS) if u.kind == "agcu"}
    regs = {}
    for w in bs.writes:
        if w.unit in agcus:
            regs.setdefault(w.unit, {})[w.reg] = w.value
    total = 0
    for r in regs.values():
        assert r[AgcuReg.MODE] in (AgcuMode.READ, AgcuMode.WRITE)
        beats = 1
        for k in range(DEFAULT_PARAMS.agcu_counters):
            beats *= r.get(agcu_count_reg(k), 1)
        total += beats * DEFAULT_PARAMS.beat_bytes
    return total


def _check(model_path, stem: Path, out: str, pos: int = 0, token: int = 0):
    """Everything written for ``model_path`` under ``stem`` against an independent compile."""
    man = json.loads(stem.with_name(stem.name + ".json").read_text())
    qm = quantized(load_model(model_path))
    L = qm.config.n_layers
    prog = compile_decode(qm, DEFAULT_PARAMS, mode="op", context=man["context"])
    calls = prog.token_calls(pos, token)

    assert man["mode"] == "op"
    assert man["params_digest"] == DEFAULT_PARAMS.digest().hex()
    assert man["report"] == stem.name + ".map.txt"
    assert man["hbm"]["regions"] == [{"name": n, "group": g, "addr": a, "bytes": b}
                                     for n, g, a, b in prog.regions]
    # the call order of a token: 1 embedding + 17 per layer + 3 final
    assert len(man["calls"]) == 1 + 17 * L + 3
    assert [c["label"] for c in man["calls"]] == [c.label for c in calls]
    assert [c["iteration"] for c in man["calls"]] == [c.iteration for c in calls]
    # one file per distinct kernel; per-layer kernels once
    distinct = {id(c.kernel): c.kernel for c in calls}
    assert len(man["kernels"]) == len(distinct)
    files = {k["file"] for k in man["kernels"]}
    assert len(files) == len(distinct)
    written = {p.name for p in stem.parent.iterdir() if p.name.startswith(stem.name + ".")}
    assert written == files | {stem.name + ".map.txt", stem.name + ".json"}
    by_label = {k["label"]: k for k in man["kernels"]}
    for c_man, c in zip(man["calls"], calls):
        k = by_label[c_man["kernel"]]
        assert c_man["file"] == k["file"]
        assert c_man["hbm_bytes"] == c.kernel.hbm_bytes
        assert k["unit_ids"] == c.kernel.unit_ids
        assert k["hbm_bytes_per_launch"] == c.kernel.hbm_bytes
        assert c.iteration in k["iterations"]
        # the file holds exactly this kernel's bitstream
        assert (stem.parent / k["file"]).read_bytes() == c.kernel.to_bytes()
    for k in man["kernels"]:
        assert k["file"] == f"{stem.name}.{k['label']}.rbit"
        data = (stem.parent / k["file"]).read_bytes()
        bs = Bitstream.from_bytes(data, DEFAULT_PARAMS)
        assert bs.params_digest == DEFAULT_PARAMS.digest()
        assert [sorted(kk.units) for kk in bs.kernels] == [k["unit_ids"]]
        assert _agcu_bytes(bs) == k["hbm_bytes_per_launch"]
        text = inspect_text(data, name=k["file"])
        assert "crc-32" in text and "matches default RduParams" in text
        if k["pattern"] in ("rope", "kv_append", "attn_softmax", "attn_wsum"):
            assert k["position"] == pos and f".pos{pos}." in k["file"]
        if k["pattern"] == "embed":
            assert k["token"] == token and f".tok{token}." in k["file"]
    # per-layer kernels: one file, launched at iteration l for layer l
    for k in man["kernels"]:
        if k["calls"][0].startswith("l0."):
            assert k["iterations"] == list(range(L))
            assert len(k["calls"]) == L * (2 if k["pattern"] == "residual" else 1)
        else:
            assert k["iterations"] == [0] and len(k["calls"]) == 1
    # totals
    total = sum(c.kernel.hbm_bytes for c in calls)
    pt = man["per_token"]
    assert pt["launches"] == len(calls) and pt["hbm_bytes"] == total
    assert sum(pt["by_category"].values()) == total
    assert pt["by_category"]["weights"] > 0 and pt["by_category"]["KV cache"] > 0
    assert pt["bitstream_bytes"] == sum(len(c.kernel.to_bytes()) for c in calls)
    # the report
    rep = stem.with_name(stem.name + ".map.txt").read_text()
    for s in REPORT_SECTIONS + [f"Per token (decode step at position {pos})"]:
        assert s in rep, f"report lacks {s!r}"
    for k in man["kernels"]:
        assert f": {k['label']}   (pattern {k['pattern']}" in rep
    assert f"{total:,} B per token" in rep
    assert "WARNING" not in rep and not man["warnings"]
    for n in man["notes"]:          # beats moved past a region's size stay in its own padding
        assert "in the burst padding it owns" in n and n in rep
    assert f"{total:,} B of HBM traffic" in out and "compile time:" in out
    return man, rep


def test_default_model(tmp_path, capsys):
    rc, out, err = _rdu(capsys, "compile", DEFAULT_MODEL, "-o", tmp_path / "kjv.rbit")
    assert rc == 0, err
    man, rep = _check(DEFAULT_MODEL, tmp_path / "kjv", out)
    assert len(man["calls"]) == 1 + 17 * 5 + 3
    assert len(man["kernels"]) == 20
    t = float(re.search(r"compile time:\s+([0-9.]+) s", out).group(1))
    assert 0 < t < 5, f"compile time {t} s"
    # every activation/constant/weight access of the step lands in a named region
    assert "outside every region" not in rep
    # the report's grid shows the configured units with their roles (the GEMV's row-split
    # PCUs A and B, the RMSNorm's sum-of-squares PCU P1)
    for role in ("A", "B", "P1"):
        assert re.search(rf"\[pcu\d {role}\]", rep), role


@pytest.mark.parametrize("name", ["mha-d32-l1-tied", "gqa-d64-l2-untied"])
def test_random_shapes(tmp_path, capsys, name):
    cfg = RANDOM_CONFIGS[name]
    assert cfg.vocab_size % 16 == 0
    folder = tmp_path / name
    save_hf(random_model(cfg, seed=5, name=name), folder)
    out_dir = tmp_path / "out"
    rc, out, err = _rdu(capsys, "compile", folder, "-o", str(out_dir) + "/")
    assert rc == 0, err
    # a folder as output: the stem is the model's name
    man, _ = _check(folder, out_dir / name, out)
    assert man["model"]["name"] == name


def test_position_and_context(tmp_path, capsys):
    rc, out, err = _rdu(capsys, "compile", DEFAULT_MODEL, "-o", tmp_path / "k", "--context", 16,
                        "--pos", 5, "--token", 3)
    assert rc == 0, err
    man, rep = _check(DEFAULT_MODEL, tmp_path / "k", out, pos=5, token=3)
    assert man["context"] == 16 and man["position"] == 5
    assert "Per token (decode step at position 5)" in rep


def _bad_model(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text("{")
    return d


@pytest.mark.parametrize("args, msg", [
    (["--mode", "fast"], r"unknown mode 'fast': choose one of op, layer, looped"),
    (["--mode", "looped", "--context", "0"], r"--context must be at least 1"),
    (["--context", "1000"], r"context 1000 must be in 1\.\.256"),
    (["--pos", "300"], r"--pos 300 is outside the context"),
    (["--token", "512"], r"--token 512 is outside the vocabulary"),
])
def test_errors(tmp_path, capsys, args, msg):
    rc, out, err = _rdu(capsys, "compile", DEFAULT_MODEL, "-o", tmp_path / "o" / "x.rbit", *args)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("rdu: error: ")
    assert re.search(msg, err), err
    assert not (tmp_path / "o").exists()          # nothing written


def test_input_output_errors(tmp_path, capsys):
    cases = [
        (["compile", tmp_path / "nope", "-o", tmp_path / "x.rbit"], "no such file or folder"),
        (["compile", _bad_model(tmp_path), "-o", tmp_path / "x.rbit"], "not valid JSON"),
        (["compile", DEFAULT_MODEL], "give the output with -o"),
    ]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases.append((["compile", DEFAULT_MODEL, "-o", blocker / "x.rbit"], "is a file, not a folder"))
    (tmp_path / "d.map.txt").mkdir()                # a report path that cannot be written
    cases.append((["compile", DEFAULT_MODEL, "-o", tmp_path / "d.rbit"], "cannot write"))
    for argv, msg in cases:
        rc, out, err = _rdu(capsys, *argv)
        assert rc == 2, (argv, out, err)
        assert err.count("\n") == 1 and err.startswith("rdu: error: "), err
        assert msg in err, (argv, err)


# ---- layer and looped modes ----------------------------------------------------------------

FUSED_REPORT_SECTIONS = [
    "Programs of sections", "  layer program: entries 0..16 (17 sections",
    "  head program: entries 17..19 (3 sections", "  section table (20 of ",
    "  launches of a token in mode ", "  config region: 0x", "    config ", "  sections        ",
]


def _check_fused(model_path, stem: Path, out: str, mode: str, pos: int = 0, token: int = 0):
    """The files of a layer/looped compile against an independent compile: one .rbit per
    distinct section (the op kernels' bitstreams), the section table with its slots, the
    launches of a token, the config bytes per token; the report's program sections."""
    man = json.loads(stem.with_name(stem.name + ".json").read_text())
    qm = quantized(load_model(model_path))
    L = qm.config.n_layers
    prog = compile_decode(qm, DEFAULT_PARAMS, mode=mode, context=man["context"])
    assert man["mode"] == mode
    assert man["hbm"]["regions"] == [{"name": n, "group": g, "addr": a, "bytes": b}
                                     for n, g, a, b in prog.regions]
    pr = man["programs"]
    assert pr["programs"] == {"layer": {"first": 0, "sections": 17},
                              "head": {"first": 17, "sections": 3}}
    assert pr["config_region"] == {"addr": prog.config_base, "bytes": prog.config_bytes}
    assert pr["delta"] is True
    kernels = prog.section_kernels(pos)
    images = prog.section_images(pos)
    written = {p.name for p in stem.parent.iterdir() if p.name.startswith(stem.name + ".")}
    files = {k["file"] for k in man["kernels"]} | {s["file"] for s in pr["sections"]}
    assert len(files) == len(man["kernels"]) + 20
    assert written == files | {stem.name + ".map.txt", stem.name + ".json"}
    regions = [(r["addr"], r["addr"] + r["bytes"]) for r in man["hbm"]["regions"]
               if not r["name"].startswith("section ")]
    for s, sec in zip(pr["sections"], prog.sections):
        assert (s["entry"], s["name"], s["program"], s["slot"], s["slot_bytes"]) == \
            (sec.entry, sec.name, sec.program, sec.slot, sec.slot_bytes)
        assert s["file"] == f"{stem.name}.s{sec.entry:02d}.{sec.name}" + \
            (f".pos{pos}" if sec.position_dependent else "") + ".rbit"
        # the section's file holds what its slot holds at pos (a delta bitstream: the kernel's
        # kernel table, at most its records); the kernel's own file its whole bitstream
        data = (stem.parent / s["file"]).read_bytes()
        assert data == images[sec.entry]
        assert (stem.parent / s["kernel_file"]).read_bytes() == kernels[sec.entry].to_bytes()
        assert s["bitstream_bytes"] == len(data) <= s["slot_bytes"]
        assert s["kernel_bytes"] == len(kernels[sec.entry].to_bytes())
        bs = Bitstream.from_bytes(data, DEFAULT_PARAMS)
        full = Bitstream.from_bytes(kernels[sec.entry].to_bytes(), DEFAULT_PARAMS)
        assert bs.params_digest == DEFAULT_PARAMS.digest() and bs.kernels == full.kernels
        assert s["records"] == len(bs.writes) <= len(full.writes)
        assert "crc-32" in inspect_text(data, name=s["file"])
        for a, e in regions:                   # the slot overlaps no data region
            assert s["slot"] + s["slot_bytes"] <= a or e <= s["slot"]
    la = pr["launches"]
    assert len(la) == {"layer": 1 + L + 1, "looped": 3}[mode]
    assert la[0]["kind"] == "call" and la[0]["label"] == "embed"
    assert [(x["first"], x["sections"], x["iteration"], x["count"]) for x in la[1:]] == (
        [(0, 17, l, 1) for l in range(L)] if mode == "layer" else [(0, 17, 0, L)]) + \
        [(17, 3, 0, 1)]
    dep = [s for s in prog.sections if s.position_dependent]
    assert la[1]["updates"] == [{"addr": s.slot,
                                 "bytes": len(prog.section_bitstream(s.entry, pos))}
                                for s in dep]
    pt = man["per_token"]
    assert pt["launches"] == len(la) and pt["sections"] == 17 * L + 3
    section_reads = L * sum(len(b) for b in images[:17]) + sum(len(b) for b in images[17:])
    assert pt["config_bytes"] == {"section reads": section_reads,
                                  "host updates": sum(u["bytes"] for u in la[1]["updates"])}
    assert pt["by_category"]["config"] == sum(pt["config_bytes"].values())
    assert pt["hbm_bytes"] == pt["kernel_hbm_bytes"] + pt["by_category"]["config"]
    assert sum(pt["by_category"].values()) == pt["hbm_bytes"]
    # the kernels' traffic is op mode's
    op = compile_decode(qm, DEFAULT_PARAMS, mode="op", context=man["context"])
    assert pt["kernel_hbm_bytes"] == sum(c.kernel.hbm_bytes for c in op.token_calls(pos, token))
    rep = stem.with_name(stem.name + ".map.txt").read_text()
    for s in REPORT_SECTIONS[:2] + FUSED_REPORT_SECTIONS + [f"\nmode       {mode}"]:
        assert s in rep, f"report lacks {s!r}"
    assert f"{pt['hbm_bytes']:,} B per token" in rep
    assert f"{len(la)} host launches, {17 * L + 3} sections run on the chip" in rep
    for s in pr["sections"]:
        assert f"0x{s['slot']:06x}" in rep
    assert "WARNING" not in rep and not man["warnings"]
    assert f"{len(la)} launches ({17 * L + 3} sections on the chip)" in out
    assert "compile time:" in out
    return man, rep


@pytest.mark.parametrize("mode", ["layer", "looped"])
def test_default_model_fused(tmp_path, capsys, mode):
    rc, out, err = _rdu(capsys, "compile", DEFAULT_MODEL, "--mode", mode, "-o",
                        tmp_path / "kjv.rbit")
    assert rc == 0, err
    man, rep = _check_fused(DEFAULT_MODEL, tmp_path / "kjv", out, mode)
    assert len(man["kernels"]) == 20              # the same distinct kernels as op mode
    t = float(re.search(r"compile time:\s+([0-9.]+) s", out).group(1))
    assert 0 < t < 5, f"compile time {t} s"


@pytest.mark.parametrize("name", ["mha-d32-l1-tied", "gqa-d128-l4-untied"])
def test_random_shapes_fused(tmp_path, capsys, name):
    cfg = RANDOM_CONFIGS[name]
    folder = tmp_path / name
    save_hf(random_model(cfg, seed=5, name=name), folder)
    for mode in ("layer", "looped"):
        out_dir = tmp_path / mode
        rc, out, err = _rdu(capsys, "compile", folder, "--mode", mode, "-o", str(out_dir) + "/",
                            "--pos", 3, "--token", 7)
        assert rc == 0, err
        _check_fused(folder, out_dir / name, out, mode, pos=3, token=7)


def test_fused_compile_error_is_one_line(tmp_path, capsys):
    """A model the chip cannot run (vocab not a multiple of the lanes) fails in every mode
    with the same one-line message, and nothing is written."""
    name = "mqa-d48-l3-untied"
    folder = tmp_path / name
    save_hf(random_model(RANDOM_CONFIGS[name], seed=5, name=name), folder)
    for mode in ("op", "layer", "looped"):
        rc, out, err = _rdu(capsys, "compile", folder, "--mode", mode, "-o",
                            tmp_path / "o" / "x.rbit")
        assert rc == 2
        assert err.count("\n") == 1 and err.startswith("rdu: error: ")
        assert "not a multiple of the 16 lanes" in err
        assert not (tmp_path / "o").exists()


def test_no_delta(tmp_path, capsys):
    """--no-delta: every slot holds its kernel's whole bitstream (what op mode loads)."""
    rc, out, err = _rdu(capsys, "compile", DEFAULT_MODEL, "--mode", "layer", "--no-delta",
                        "-o", tmp_path / "kjv.rbit")
    assert rc == 0, err
    man = json.loads((tmp_path / "kjv.json").read_text())
    assert man["programs"]["delta"] is False
    for s in man["programs"]["sections"]:
        assert (tmp_path / s["file"]).read_bytes() == (tmp_path / s["kernel_file"]).read_bytes()
    assert "whole bitstreams" in out

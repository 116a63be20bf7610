"""End-to-end greedy decode on the Verilator chip (``rdu sim``'s path: ``sw/runtime/sim.py`` ->
``tb/decode_tb.py`` -> ``sw/runtime/decode.py``), bit-exact with the golden model, in the three
modes: ``op`` (one host launch per kernel), ``layer`` (one launch of the on-chip layer program
per layer) and ``looped`` (one launch of the layer program for every layer).

The testbench runs the golden decoder in lockstep: every generated token must equal the golden
one and the last step's logits must be equal element by element; with ``check`` (op mode)
every kernel's output (h, q, k, v, RoPE'd q and k, attention output, x after each residual,
gate, up, mid, final h, logits) is read back and compared with the golden trace as well, so a
failure names the kernel and layer that diverged first. Launches per token are checked from the
chip's own ``launches`` counter (host RUN_START and PROG_START writes) and sections from its
``sections`` counter (sections the section sequencer ran).
"""

import json

import pytest

from sw.frontend import load_model
from sw.frontend.hf import save_hf
from sw.golden import generate
from sw.model import LlamaConfig, random_model
from sw.runtime.sim import DecodeFailed, run_decode

pytestmark = pytest.mark.verilator

MODEL = "models/kjv-280k"


def _check(res, n_tokens, mode=None, n_layers=None):
    assert res["bit_exact"] and res["logits_bit_exact"], res
    assert len(res["tokens"]) == n_tokens
    assert res["tokens"] == res["golden_tokens"]
    for key in ("model", "mode", "prompt", "tokens", "text", "golden_tokens", "bit_exact",
                "cycles_per_token", "hbm_bytes_per_token", "hbm_peak_bytes_per_cycle",
                "hbm_utilization", "kernel_launches_per_token", "sections_per_token",
                "launch_overhead_cycles", "sim_cycles_per_second", "params", "attribution"):
        assert key in res, key
    att = res["attribution"]
    parts = sum(att[k] for k in ("hbm_busy", "run_hbm_idle", "config", "launch", "host"))
    assert abs(parts - att["cycles"]) < 1.0, att
    assert abs(att["config_host"] + att["config_chip"] - att["config"]) < 1.0, att
    assert abs(att["fill"] + att["after_fill"] - att["run_hbm_idle"]) < 1.0, att
    assert min(att[k] for k in ("hbm_busy", "run_hbm_idle", "config", "launch", "host",
                                "config_host", "config_chip", "fill", "after_fill")) >= 0, att
    assert 0 < res["hbm_utilization"] < 1
    if mode is not None:
        launches = {"op": 1 + 17 * n_layers + 3, "layer": 1 + n_layers + 1, "looped": 3}[mode]
        sections = 0 if mode == "op" else 17 * n_layers + 3
        assert res["mode"] == mode
        assert res["kernel_launches_per_token"] == launches
        assert res["sections_per_token"] == sections
        for step in res["per_token"]:          # the chip's own counters, every step
            assert step["launches"] == step["chip_launches"] == launches, step
            assert step["sections"] == sections, step
        if mode == "op":
            assert att["config_chip"] == 0
        else:
            assert att["config_chip"] > 0


def test_decode_default_model_op(tmp_path):
    m = load_model(MODEL)
    tok = m.tokenizer
    ids = [tok.bos_id] + tok.encode("And God")
    res = run_decode(MODEL, prompt_ids=ids, tokens=2, mode="op", out=tmp_path, check=True,
                     progress=False, tokenizer=tok, launch_overhead_cycles=4000)
    _check(res, 2, "op", m.config.n_layers)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["tokens"] == res["tokens"] and saved["text"] == tok.decode(res["tokens"])
    assert res["attribution"]["launch"] == 4000 * res["kernel_launches_per_token"]


@pytest.mark.parametrize("mode", ["layer", "looped"])
def test_decode_default_model_fused(tmp_path, mode):
    """The same decode as op mode, with the layer kernels as on-chip programs of sections:
    the same tokens and logits as the golden model; 1 + L + 1 (layer) or 3 (looped) host
    launches per token and 17 L + 3 sections, from the chip's counters."""
    m = load_model(MODEL)
    tok = m.tokenizer
    ids = [tok.bos_id] + tok.encode("And God")
    res = run_decode(MODEL, prompt_ids=ids, tokens=2, mode=mode, out=tmp_path, progress=False,
                     tokenizer=tok, launch_overhead_cycles=4000)
    _check(res, 2, mode, m.config.n_layers)
    assert res["tokens"] == generate(m, ids, 2)
    assert res["attribution"]["launch"] == 4000 * res["kernel_launches_per_token"]


SHAPES = [
    ("mha-d32-l1", LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=4, hidden_dim=64,
                               vocab_size=256, max_seq_len=16)),
    ("gqa-d96-l2-untied", LlamaConfig(dim=96, n_layers=2, n_heads=6, n_kv_heads=3,
                                      hidden_dim=256, vocab_size=512, max_seq_len=16,
                                      tie_embeddings=False)),
]


@pytest.mark.parametrize("name,config", SHAPES)
def test_decode_other_shapes_op(tmp_path, name, config):
    folder = save_hf(random_model(config, seed=7, name=name), tmp_path / name)
    res = run_decode(folder, prompt_ids=[1, 5, 9], tokens=2, mode="op", out=tmp_path / "run",
                     check=True, progress=False, launch_overhead_cycles=0)
    _check(res, 2, "op", config.n_layers)


@pytest.mark.parametrize("name,config", SHAPES)
@pytest.mark.parametrize("mode", ["layer", "looped"])
def test_decode_other_shapes_fused(tmp_path, name, config, mode):
    """Rows sharing a KV beat (d32) and whole-beat rows with GQA, untied (d96), in both fused
    modes: one generated token after a two-token prompt run on the chip."""
    model = random_model(config, seed=7, name=name)
    folder = save_hf(model, tmp_path / name)
    res = run_decode(folder, prompt_ids=[1, 5], tokens=1, mode=mode, out=tmp_path / "run",
                     progress=False, launch_overhead_cycles=0)
    _check(res, 1, mode, config.n_layers)
    assert res["tokens"] == generate(model, [1, 5], 1)


def test_decode_host_prefill(tmp_path):
    """Host prefill: the golden model runs the prompt (but its last token) on the host and its
    KV cache is DMA'd into HBM in the chip's layout; the chip starts at position len(prompt) - 1
    and generates the same tokens as a golden decode of the whole prompt, bit for bit."""
    m = load_model(MODEL)
    tok = m.tokenizer
    ids = [tok.bos_id] + tok.encode("And God said, Let there be")
    res = run_decode(MODEL, prompt_ids=ids, tokens=2, mode="looped", out=tmp_path,
                     progress=False, tokenizer=tok, host_prefill=True)
    _check(res, 2, "looped", m.config.n_layers)
    assert res["host_prefill"] == len(ids) - 1
    assert [s["pos"] for s in res["per_token"]] == [len(ids) - 1, len(ids)]
    assert res["tokens"] == generate(m, ids, 2)


def test_decode_watchdog_names_stuck_units(tmp_path):
    """A kernel that does not finish within its budget fails the decode with a message naming
    the kernel and the units still busy (budget capped at 40 cycles: the first kernel, the
    embedding gather, waits ~150 cycles for HBM alone)."""
    with pytest.raises(DecodeFailed, match=r"watchdog: pos 0 kernel embed not done after 40 "
                                           r"cycles: .*(pcu|agcu)\d+ busy"):
        run_decode(MODEL, prompt_ids=[1], tokens=1, mode="op", out=tmp_path, progress=False,
                   watchdog_cycles=40)
    res = json.loads((tmp_path / "tb_result.json").read_text())
    assert "HangError" in res["error"]


def test_decode_corrupt_section_is_refused(tmp_path):
    """A section bitstream corrupted in HBM (one byte of the wq section's slot flipped after the
    load): the chip's config controller refuses it, the program stops, and the decode fails
    with a message naming the program, the section and the refusal."""
    with pytest.raises(DecodeFailed, match=r"pos 0 program layer \(layers\): section 1 \(wq\), "
                                           r"iteration 0: config controller refused the "
                                           r"bitstream: \w+"):
        run_decode(MODEL, prompt_ids=[1], tokens=1, mode="looped", out=tmp_path,
                   progress=False, corrupt_section="wq")
    res = json.loads((tmp_path / "tb_result.json").read_text())
    assert "ProgramError" in res["error"]


def test_check_needs_op_mode(tmp_path):
    with pytest.raises(ValueError, match="check .* needs op mode"):
        run_decode(MODEL, prompt_ids=[1], tokens=1, mode="looped", out=tmp_path,
                   progress=False, check=True)


def test_decode_watchdog_names_stuck_section(tmp_path):
    """looped: a program that does not finish within its budget (capped at 3,000 cycles: the
    embedding call finishes, the 5-layer program needs ~30,000) fails naming the program, the
    section and iteration in progress, its phase and the units still busy."""
    with pytest.raises(DecodeFailed, match=r"watchdog: pos 0 program layer \(layers\) not done "
                                           r"after 3000 cycles: section \d+ \(\w+\), iteration "
                                           r"0, phase [A-Z]+: "):
        run_decode(MODEL, prompt_ids=[1], tokens=1, mode="looped", out=tmp_path,
                   progress=False, watchdog_cycles=3000)
    res = json.loads((tmp_path / "tb_result.json").read_text())
    assert "HangError" in res["error"]

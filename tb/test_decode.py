"""End-to-end greedy decode on the Verilator chip (``rdu sim``'s path: ``sw/runtime/sim.py`` ->
``tb/decode_tb.py`` -> ``sw/runtime/decode.py``), bit-exact with the golden model.

The testbench runs the golden decoder in lockstep: every generated token must equal the golden
one and the last step's logits must be equal element by element; with ``check`` every kernel's
output (h, q, k, v, RoPE'd q and k, attention output, x after each residual, gate, up, mid,
final h, logits) is read back and compared with the golden trace as well, so a failure names
the kernel and layer that diverged first.
"""

import json

import pytest

from sw.frontend import load_model
from sw.frontend.hf import save_hf
from sw.model import LlamaConfig, random_model
from sw.runtime.sim import DecodeFailed, run_decode

pytestmark = pytest.mark.verilator

MODEL = "models/kjv-280k"


def _check(res, n_tokens):
    assert res["bit_exact"] and res["logits_bit_exact"], res
    assert len(res["tokens"]) == n_tokens
    assert res["tokens"] == res["golden_tokens"]
    for key in ("model", "mode", "prompt", "tokens", "text", "golden_tokens", "bit_exact",
                "cycles_per_token", "hbm_bytes_per_token", "hbm_peak_bytes_per_cycle",
                "hbm_utilization", "kernel_launches_per_token", "launch_overhead_cycles",
                "sim_cycles_per_second", "params", "attribution"):
        assert key in res, key
    att = res["attribution"]
    parts = sum(att[k] for k in ("hbm_busy", "run_hbm_idle", "config", "launch", "host"))
    assert abs(parts - att["cycles"]) < 1.0, att
    assert 0 < res["hbm_utilization"] < 1


def test_decode_default_model_op(tmp_path):
    m = load_model(MODEL)
    tok = m.tokenizer
    ids = [tok.bos_id] + tok.encode("And God")
    res = run_decode(MODEL, prompt_ids=ids, tokens=2, mode="op", out=tmp_path, check=True,
                     progress=False, tokenizer=tok, launch_overhead_cycles=4000)
    _check(res, 2)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["tokens"] == res["tokens"] and saved["text"] == tok.decode(res["tokens"])
    # op mode: embed + 17 kernels per layer + final norm, LM head, argmax
    assert res["kernel_launches_per_token"] == 1 + 17 * m.config.n_layers + 3
    assert res["attribution"]["launch"] == 4000 * res["kernel_launches_per_token"]


@pytest.mark.parametrize("name,config", [
    ("mha-d32-l1", LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=4, hidden_dim=64,
                               vocab_size=256, max_seq_len=16)),
    ("gqa-d96-l2-untied", LlamaConfig(dim=96, n_layers=2, n_heads=6, n_kv_heads=3,
                                      hidden_dim=256, vocab_size=512, max_seq_len=16,
                                      tie_embeddings=False)),
])
def test_decode_other_shapes_op(tmp_path, name, config):
    folder = save_hf(random_model(config, seed=7, name=name), tmp_path / name)
    res = run_decode(folder, prompt_ids=[1, 5, 9], tokens=2, mode="op", out=tmp_path / "run",
                     check=True, progress=False, launch_overhead_cycles=0)
    _check(res, 2)


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

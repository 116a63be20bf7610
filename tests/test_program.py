"""The decode program (``sw/compiler/program.py``): HBM map and op-mode kernel calls for the
shipped model and a range of shapes, and the errors for what cannot be compiled."""

import numpy as np
import pytest

from hdl.params import DEFAULT_PARAMS
from sw.compiler.program import CompileError, compile_decode
from sw.golden import quantized
from sw.model import LlamaConfig, random_model
from sw.frontend import load_model

from compiler_shapes import DEFAULT_MODEL, RANDOM_CONFIGS


@pytest.fixture(scope="module")
def qm_default():
    return quantized(load_model(DEFAULT_MODEL))


def _qm(config, seed=3):
    return quantized(random_model(config, seed=seed))


def _check_map(prog):
    p = prog.params
    spans = sorted((a, a + len(d)) for a, d in prog.images())
    for (a0, e0), (a1, e1) in zip(spans, spans[1:]):
        assert e0 <= a1, f"images overlap: [{a0:#x}, {e0:#x}) and [{a1:#x}, {e1:#x})"
    assert spans[-1][1] <= p.hbm_bytes
    acts = sorted((a, a + prog.act_bytes[n]) for n, a in prog.act.items())
    for (a0, e0), (a1, _) in zip(acts, acts[1:]):
        assert e0 <= a1
    assert acts[-1][1] <= spans[0][0]
    assert prog.layer_stride % (p.beat_bytes * p.hbm_burst_beats * p.hbm_channels) == 0
    for a, _ in spans:
        assert a % p.beat_bytes == 0


def test_default_model_map_and_calls(qm_default):
    prog = compile_decode(qm_default, DEFAULT_PARAMS, mode="op")
    _check_map(prog)
    assert prog.compile_seconds < 5
    c = qm_default.config
    calls = prog.token_calls(3, 17)
    assert len(calls) == 1 + 17 * c.n_layers + 3
    assert [k.iteration for k in calls if k.label.startswith("l2.")] == [2] * 17
    # per-layer kernels are built once and launched per layer at iteration = layer
    assert calls[1].kernel is calls[1 + 17].kernel
    # every kernel's bitstream is valid and names only units the chip has
    for call in calls:
        assert call.kernel.unit_ids
        assert len(call.bitstream) > 0
    assert "HBM map" in prog.report()


@pytest.mark.parametrize("name", ["mha-d32-l1-tied", "gqa-d64-l2-untied", "gqa-d96-l3-tied",
                                  "gqa-d128-l4-untied"])
def test_shapes_compile(name):
    prog = compile_decode(_qm(RANDOM_CONFIGS[name]), DEFAULT_PARAMS, mode="op")
    _check_map(prog)
    calls = prog.token_calls(0, 1)
    assert len(calls) == 1 + 17 * RANDOM_CONFIGS[name].n_layers + 3


def test_eight_layers_mqa_untied_compiles():
    """The top of the issue's shape range: 8 layers, MQA (one KV head), untied embeddings."""
    c = LlamaConfig(dim=64, n_layers=8, n_heads=4, n_kv_heads=1, hidden_dim=128,
                    vocab_size=320, max_seq_len=24, tie_embeddings=False)
    prog = compile_decode(_qm(c), DEFAULT_PARAMS, mode="op")
    _check_map(prog)
    calls = prog.token_calls(23, 5)
    assert len(calls) == 1 + 17 * 8 + 3
    assert {k.iteration for k in calls if k.label.startswith("l7.")} == {7}


def test_errors(qm_default):
    with pytest.raises(CompileError, match="unknown mode"):
        compile_decode(qm_default, mode="fast")
    with pytest.raises(CompileError, match="context"):
        compile_decode(qm_default, context=10_000)
    small = DEFAULT_PARAMS.replace(hbm_bytes=256 * 1024)
    with pytest.raises(CompileError, match="HBM"):
        compile_decode(qm_default, small)
    with pytest.raises(CompileError, match="multiple of the 16 lanes.*304"):
        compile_decode(_qm(RANDOM_CONFIGS["mqa-d48-l3-untied"]))
    many = LlamaConfig(dim=64, n_layers=1, n_heads=32, n_kv_heads=32, hidden_dim=64,
                       vocab_size=256, max_seq_len=8)
    with pytest.raises(CompileError, match="32 heads"):
        compile_decode(_qm(many))
    hd12 = LlamaConfig(dim=48, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64,
                       vocab_size=256, max_seq_len=8)
    with pytest.raises(CompileError, match=r"head_dim 12.*\[4, 8, 16, 32\]"):
        compile_decode(_qm(hd12))
    prog = compile_decode(qm_default)
    with pytest.raises(ValueError):
        prog.token_calls(0, qm_default.config.vocab_size)        # token outside the vocabulary

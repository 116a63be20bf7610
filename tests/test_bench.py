"""``rdu bench`` pieces that need no simulator: the op counts behind the roofline, the launch
sweep's arithmetic, the simulator-speed kernel's operands, CLI errors. The bench itself runs in
``tb/test_bench.py``."""

import pytest

from hdl.params import DEFAULT_PARAMS
from sw.bench.decode import QUICK, _other_shapes, launch_sweep, macs_per_token, ops_per_token
from sw.cli import main
from sw.frontend import load_model
from sw.model import random_model

MODEL = "models/kjv-280k"


@pytest.mark.parametrize("shape", ["kjv-280k", *_other_shapes()])
def test_macs_are_the_weight_matrices_plus_attention(shape):
    """Per token every weight matrix element is one MAC (Q/K/V/O, gate/up/down, LM head; not
    the embedding, which is a gather), plus q.k and the weighted sum of V: head_dim MACs per
    head and position each."""
    m = load_model(MODEL) if shape == "kjv-280k" else random_model(_other_shapes()[shape])
    c = m.config
    mats = sum(getattr(layer, k).size for layer in m.layers
               for k in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"))
    for positions in (1, 17):
        attn = c.n_layers * 2 * c.n_heads * c.head_dim * positions
        assert macs_per_token(c, positions) == mats + m.lm_head.size + attn
        assert ops_per_token(c, positions) == 2 * macs_per_token(c, positions)


def test_launch_sweep_moves_by_launches_times_overhead():
    rec = {"cycles_per_token": 56_128.0, "launches_per_token": 3, "launch_overhead_cycles": 4000}
    sweep = launch_sweep(rec, (0, 1000, 4000, 8000))
    assert sweep[4000] == rec["cycles_per_token"]
    assert sweep[0] == 56_128 - 3 * 4000
    assert sweep[8000] - sweep[1000] == 3 * 7000


def test_simspeed_kernel_dma_is_exactly_what_the_gemv_reads():
    """The Q projection over every layer: the W halves of every layer and x, as the kernel's
    declared reads (bytes per launch x layers), nothing more."""
    from sw.bench.simspeed import kernel_case
    from sw.compiler.program import compile_decode
    from sw.golden import quantized
    case = kernel_case(MODEL, DEFAULT_PARAMS, "l0.wq")
    m = load_model(MODEL)
    call = next(c for c in compile_decode(quantized(m)).token_calls(0, 256) if c.label == "l0.wq")
    assert case.count == m.config.n_layers and case.iteration == 0
    assert sum(len(d) for _, d in case.dma) == (call.kernel.reads["w"] * m.config.n_layers
                                               + call.kernel.reads["x"])
    assert case.bitstream == call.bitstream
    with pytest.raises(ValueError, match="no call 'l9.nope'.*embed, l0.norm1"):
        kernel_case(MODEL, DEFAULT_PARAMS, "l9.nope")


def test_quick_plan_fits_the_default_build():
    """--quick must not need a new Verilator build: only the default HBM channel count."""
    assert QUICK.channels == (DEFAULT_PARAMS.hbm_channels,) and QUICK.shapes == ()


def test_cli_refuses_a_file_as_out(tmp_path, capsys):
    f = tmp_path / "x"
    f.write_text("")
    assert main(["bench", "--quick", "--out", str(f)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err

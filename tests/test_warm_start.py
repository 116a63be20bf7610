"""Host prefill's KV image (``sw/runtime/decode.py`` ``kv_image``): every cached K and V row
lands exactly where the chip's KV-append kernel of that position and layer writes it (the
beats its write AGCU addresses, read from the kernel's own AGCU program), for whole-beat rows
and for rows that share a beat; nothing else is written. The chip test
(``tb/test_decode.py::test_decode_host_prefill``) runs a decode from such an image."""

import numpy as np
import pytest

from hdl.params import DEFAULT_PARAMS
from sw.compiler.program import compile_decode
from sw.compiler.report import agcu_programs
from sw.golden import quantized
from sw.model import LlamaConfig, random_model
from sw.runtime.decode import kv_image

SHAPES = {
    # kv_dim 32 B: two rows per beat (read-modify-write append)
    "rows-share-beats": LlamaConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, hidden_dim=128,
                                    vocab_size=256, max_seq_len=12),
    # kv_dim 128 B: two beats per row
    "whole-beat-rows": LlamaConfig(dim=128, n_layers=3, n_heads=8, n_kv_heads=4,
                                   hidden_dim=128, vocab_size=256, max_seq_len=10,
                                   tie_embeddings=False),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_kv_image_matches_the_append_kernel(name):
    cfg = SHAPES[name]
    prog = compile_decode(quantized(random_model(cfg, seed=1)), DEFAULT_PARAMS, mode="looped")
    rng = np.random.default_rng(4)
    shape = (cfg.n_layers, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)
    K = rng.integers(-128, 128, shape).astype(np.int8)
    V = rng.integers(-128, 128, shape).astype(np.int8)
    n_pos = prog.context - 2
    img = np.frombuffer(kv_image(prog, K, V, n_pos), np.uint8)
    assert len(img) == cfg.n_layers * prog.kv_layer_stride
    bb = DEFAULT_PARAMS.beat_bytes
    kv_dim = cfg.n_kv_heads * cfg.head_dim
    covered = np.zeros(len(img), bool)
    for t in range(n_pos):
        kern = prog.section_kernels(t)[6]
        assert kern.pattern == "kv_append"
        (wr,) = [a for a in agcu_programs(kern) if a.mode == "write"]
        for l in range(cfg.n_layers):
            beats = wr.beat_addrs(l) * bb - prog.kv_base      # K beat(s), then V beat(s)
            half = len(beats) // 2
            for cache, beat0 in ((K, beats[0]), (V, beats[half])):
                at = int(beat0) + (t * prog.kv_row_bytes) % bb
                want = cache[l, :, t, :].reshape(-1).view(np.uint8)
                assert np.array_equal(img[at:at + kv_dim], want), (t, l)
                covered[at:at + kv_dim] = True
    assert not img[~covered].any()            # padding and positions >= n_pos stay zero
    # positions past n_pos are not written, whatever the caches hold there
    assert K[:, :, n_pos:].any()


def test_kv_image_refuses_too_many_positions():
    cfg = SHAPES["rows-share-beats"]
    prog = compile_decode(quantized(random_model(cfg, seed=1)), DEFAULT_PARAMS, mode="op",
                          context=6)
    shape = (cfg.n_layers, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)
    z = np.zeros(shape, np.int8)
    with pytest.raises(ValueError, match="7 positions do not fit the compiled context"):
        kv_image(prog, z, z, 7)

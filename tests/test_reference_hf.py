"""Float reference vs Hugging Face ``LlamaForCausalLM`` (optional: needs torch + transformers).

Install with ``pip install -e .[hf]``; without it the test is skipped with a visible reason.
"""

import numpy as np
import pytest

from sw.model import LlamaConfig, random_model
from sw.reference import FloatDecoder, forward_logits

torch = pytest.importorskip("torch", reason="torch not installed (pip install -e .[hf])")
transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install -e .[hf])")


def hf_model(m):
    c = m.config
    cfg = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads, max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings,
        hidden_act="silu", attention_bias=False, mlp_bias=False, torch_dtype="float32")
    try:
        cfg._attn_implementation = "eager"
    except Exception:
        pass
    sd = {"model.embed_tokens.weight": m.tok_embeddings, "model.norm.weight": m.norm,
          "lm_head.weight": m.lm_head}
    names = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
             "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
             "w_down": "mlp.down_proj"}
    for i, L in enumerate(m.layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = L.attn_norm
        sd[p + "post_attention_layernorm.weight"] = L.ffn_norm
        for ours, theirs in names.items():
            sd[p + theirs + ".weight"] = getattr(L, ours)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                                             strict=False)
    assert not unexpected, unexpected
    assert all("rotary" in k for k in missing), missing
    return hf


SHAPES = [
    # (config, description)
    (LlamaConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, hidden_dim=192, vocab_size=97,
                 max_seq_len=32, tie_embeddings=True), "GQA tied"),
    (LlamaConfig(dim=48, n_layers=3, n_heads=4, n_kv_heads=4, hidden_dim=128, vocab_size=61,
                 max_seq_len=24, tie_embeddings=False, rope_theta=500.0, norm_eps=1e-6), "MHA untied"),
    (LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=1, hidden_dim=80, vocab_size=50,
                 max_seq_len=16, tie_embeddings=False), "MQA untied"),
]


@pytest.mark.parametrize("config,desc", SHAPES, ids=[d for _, d in SHAPES])
def test_reference_matches_hf(config, desc):
    m = random_model(config, seed=7)
    ids = np.random.default_rng(1).integers(0, config.vocab_size, size=min(12, config.max_seq_len))
    ours = forward_logits(m, ids)
    hf = hf_model(m)
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids[None, :].astype(np.int64))).logits[0].numpy()
    diff = float(np.max(np.abs(ours - theirs)))
    print(f"{desc}: max abs logit diff {diff:.3g}")
    assert diff <= 1e-4, diff
    # and the incremental decoder gives the same thing step by step
    dec = FloatDecoder(m)
    assert np.array_equal(dec.step(ids[0]), ours[0])

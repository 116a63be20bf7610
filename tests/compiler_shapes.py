"""Model shapes and the shipped model shared by the compiler tests."""

import os

from sw.model import LlamaConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "models", "kjv-280k")

# Random shapes: dim 32..128, 1..4 layers, MHA / GQA / MQA, vocab 256..1024, tied and untied.
RANDOM_CONFIGS = {
    "mha-d32-l1-tied": LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=4, hidden_dim=64,
                                   vocab_size=256, max_seq_len=16),
    "gqa-d64-l2-untied": LlamaConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, hidden_dim=160,
                                     vocab_size=384, max_seq_len=20, tie_embeddings=False),
    "mqa-d48-l3-untied": LlamaConfig(dim=48, n_layers=3, n_heads=4, n_kv_heads=1, hidden_dim=128,
                                     vocab_size=300, max_seq_len=12, tie_embeddings=False),
    "gqa-d96-l3-tied": LlamaConfig(dim=96, n_layers=3, n_heads=6, n_kv_heads=3, hidden_dim=256,
                                   vocab_size=512, max_seq_len=16),
    "gqa-d128-l4-untied": LlamaConfig(dim=128, n_layers=4, n_heads=8, n_kv_heads=4,
                                      hidden_dim=352, vocab_size=1024, max_seq_len=16,
                                      tie_embeddings=False),
}

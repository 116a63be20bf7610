"""The in-memory form of a LLaMA-family decoder model, shared by every part of the software stack.

Frontends (``sw/frontend``) produce a :class:`LlamaModel`; the float reference, the quantiser,
the golden model, the compiler and the training script all consume it.

Conventions (one set for the whole project):
- Linear weights are stored as in Hugging Face / PyTorch: ``W`` has shape ``(out, in)`` and a
  layer computes ``y = W @ x``.
- RoPE uses the Hugging Face "rotate_half" layout: within a head of size ``hd`` the pair
  rotated by frequency ``j`` is ``(x[j], x[j + hd/2])``. llama2.c checkpoints use interleaved
  pairs ``(x[2j], x[2j+1])``; their frontend permutes the rows of ``wq``/``wk`` at load time (as
  Hugging Face's conversion script does), so everything downstream sees one layout.
- All float tensors are ``numpy.float32``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LlamaConfig", "LayerWeights", "LlamaModel", "random_model"]


@dataclass(frozen=True)
class LlamaConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int           # SwiGLU inner size
    vocab_size: int
    max_seq_len: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "vocab_size",
                     "max_seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"model config: {name} must be a positive integer, got {v!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"model config: dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"model config: n_heads {self.n_heads} is not a multiple of "
                             f"n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"model config: head_dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def check_step(self, pos: int, token_id) -> int:
        """Refuse a decode step at ``pos`` past the context or of a token outside the
        vocabulary; return the token id as an int."""
        if pos >= self.max_seq_len:
            raise ValueError(f"context overflow: position {pos} >= max_seq_len {self.max_seq_len}")
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} outside vocabulary of size {self.vocab_size}")
        return token_id


@dataclass
class LayerWeights:
    attn_norm: np.ndarray     # (dim,)
    wq: np.ndarray            # (n_heads*hd, dim)
    wk: np.ndarray            # (n_kv_heads*hd, dim)
    wv: np.ndarray            # (n_kv_heads*hd, dim)
    wo: np.ndarray            # (dim, n_heads*hd)
    ffn_norm: np.ndarray      # (dim,)
    w_gate: np.ndarray        # (hidden, dim)   HF gate_proj, llama2.c w1
    w_up: np.ndarray          # (hidden, dim)   HF up_proj,   llama2.c w3
    w_down: np.ndarray        # (dim, hidden)   HF down_proj, llama2.c w2

    def expected_shapes(self, c: LlamaConfig) -> dict:
        return {
            "attn_norm": (c.dim,), "wq": (c.n_heads * c.head_dim, c.dim),
            "wk": (c.kv_dim, c.dim), "wv": (c.kv_dim, c.dim), "wo": (c.dim, c.n_heads * c.head_dim),
            "ffn_norm": (c.dim,), "w_gate": (c.hidden_dim, c.dim), "w_up": (c.hidden_dim, c.dim),
            "w_down": (c.dim, c.hidden_dim),
        }


@dataclass
class LlamaModel:
    config: LlamaConfig
    tok_embeddings: np.ndarray             # (vocab, dim)
    layers: list[LayerWeights]
    norm: np.ndarray                       # (dim,)
    lm_head: np.ndarray                    # (vocab, dim); the same array object when tied
    name: str = "model"
    tokenizer: object | None = None        # sw.tokenizer-like: encode/decode/bos_id/eos_id
    meta: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first tensor whose shape or dtype is wrong."""
        c = self.config
        def check(name, arr, shape):
            if not isinstance(arr, np.ndarray):
                raise ValueError(f"{self.name}: {name} is not an array")
            if arr.shape != tuple(shape):
                raise ValueError(f"{self.name}: {name} has shape {arr.shape}, expected {tuple(shape)}")
            if arr.dtype != np.float32:
                raise ValueError(f"{self.name}: {name} has dtype {arr.dtype}, expected float32")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{self.name}: {name} contains NaN or infinity")
        check("tok_embeddings", self.tok_embeddings, (c.vocab_size, c.dim))
        check("norm", self.norm, (c.dim,))
        check("lm_head", self.lm_head, (c.vocab_size, c.dim))
        if len(self.layers) != c.n_layers:
            raise ValueError(f"{self.name}: {len(self.layers)} layers, config says {c.n_layers}")
        for i, layer in enumerate(self.layers):
            for name, shape in layer.expected_shapes(c).items():
                check(f"layers.{i}.{name}", getattr(layer, name), shape)

    def n_params(self) -> int:
        n = self.tok_embeddings.size + self.norm.size
        if not self.config.tie_embeddings:
            n += self.lm_head.size
        for layer in self.layers:
            n += sum(getattr(layer, k).size for k in layer.expected_shapes(self.config))
        return int(n)


def random_model(config: LlamaConfig, seed: int = 0, name: str = "random") -> LlamaModel:
    """A model with random weights of realistic scale, for tests of any stage."""
    rng = np.random.default_rng(seed)
    c = config

    def lin(out, inp):
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def norm_w(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    layers = [LayerWeights(
        attn_norm=norm_w(c.dim), wq=lin(c.n_heads * c.head_dim, c.dim), wk=lin(c.kv_dim, c.dim),
        wv=lin(c.kv_dim, c.dim), wo=lin(c.dim, c.n_heads * c.head_dim), ffn_norm=norm_w(c.dim),
        w_gate=lin(c.hidden_dim, c.dim), w_up=lin(c.hidden_dim, c.dim),
        w_down=lin(c.dim, c.hidden_dim)) for _ in range(c.n_layers)]
    emb = (rng.standard_normal((c.vocab_size, c.dim)) * 0.5).astype(np.float32)
    head = emb if c.tie_embeddings else lin(c.vocab_size, c.dim)
    m = LlamaModel(config=c, tok_embeddings=emb, layers=layers, norm=norm_w(c.dim), lm_head=head,
                   name=name)
    m.validate()
    return m

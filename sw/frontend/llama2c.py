"""Karpathy's llama2.c checkpoints (``.bin``) and tokenizers (``tokenizer.bin``).

Checkpoint layouts (all little-endian, float32 weights in PyTorch ``(out, in)`` order):

- version 0 ("legacy"): 7 int32 ``dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  seq_len`` (a negative ``vocab_size`` means an untied classifier), then token_embedding,
  rms_att[all layers], wq[...], wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_cis_real and
  freq_cis_imag (``seq_len*head_size/2`` each, ignored), then wcls if untied.
- version 1: uint32 magic 0x616b3432 ("ak42"), int32 version 1, the same 7 int32 (vocab
  positive), a uint8 shared-classifier flag, zero padding to 256 bytes; then rms_att, rms_ffn,
  rms_final, token_embedding, wq, wk, wv, wo, w1, w2, w3, then wcls if not shared.

llama2.c uses norm eps 1e-5 and RoPE theta 10000 (hard-coded in run.c), and *interleaved* RoPE
pairs ``(x[2j], x[2j+1])`` inside each head. minirdu uses the HF rotate_half layout (pairs
``(x[j], x[j+hd/2])``), so :func:`load_llama2c` permutes the rows of wq and wk with
:func:`interleaved_to_half` -- the permutation of HF's ``convert_llama_weights_to_hf.py``
(Meta -> HF): new row ``h*hd + a*hd/2 + j`` = old row ``h*hd + 2j + a``. :func:`save_llama2c`
applies the inverse, :func:`half_to_interleaved`. w1/w3/w2 are gate/up/down.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from sw.frontend.errors import ModelFormatError
from sw.model import LayerWeights, LlamaConfig, LlamaModel

__all__ = ["load_llama2c", "save_llama2c", "interleaved_to_half", "half_to_interleaved",
           "Llama2cTokenizer", "read_llama2c_tokenizer", "write_llama2c_tokenizer",
           "LLAMA2C_MAGIC"]

LLAMA2C_MAGIC = 0x616B3432          # "ak42"
V1_HEADER_BYTES = 256
LLAMA2C_NORM_EPS = 1e-5
LLAMA2C_ROPE_THETA = 10000.0


# ---- RoPE row permutation ------------------------------------------------------------------

def interleaved_to_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q/k projection from interleaved RoPE pairs to HF rotate_half pairs."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return np.ascontiguousarray(
        w.reshape(n_heads, hd // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim))


def half_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of :func:`interleaved_to_half`."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return np.ascontiguousarray(
        w.reshape(n_heads, 2, hd // 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim))


# ---- checkpoints ---------------------------------------------------------------------------

def _config(path, dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len, tied) -> LlamaConfig:
    vals = {"dim": dim, "hidden_dim": hidden, "n_layers": n_layers, "n_heads": n_heads,
            "n_kv_heads": n_kv, "vocab_size": vocab, "seq_len": seq_len}
    for k, v in vals.items():
        if v <= 0:
            raise ModelFormatError(f"{path}: header field {k} = {v} must be positive "
                                   f"(not a llama2.c checkpoint?)")
    try:
        return LlamaConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
                           hidden_dim=hidden, vocab_size=vocab, max_seq_len=seq_len,
                           norm_eps=LLAMA2C_NORM_EPS, rope_theta=LLAMA2C_ROPE_THETA,
                           tie_embeddings=tied)
    except ValueError as e:
        raise ModelFormatError(f"{path}: bad header: {str(e).removeprefix('model config: ')}") \
            from None


def _tensor_plan(c: LlamaConfig, version: int) -> list[tuple[str, tuple]]:
    """(name, shape) in file order; names are 'emb', 'final_norm', 'wcls', 'skip', or
    '<field>.<layer>' for LayerWeights fields."""
    L = c.n_layers
    s = LayerWeights.expected_shapes(None, c)

    def per_layer(field):
        return [(f"{field}.{i}", s[field]) for i in range(L)]
    emb = [("emb", (c.vocab_size, c.dim))]
    if version == 0:
        plan = (emb + per_layer("attn_norm") + per_layer("wq") + per_layer("wk") + per_layer("wv")
                + per_layer("wo") + per_layer("ffn_norm") + per_layer("w_gate")
                + per_layer("w_down") + per_layer("w_up") + [("final_norm", (c.dim,))]
                + [("skip", (c.max_seq_len * c.head_dim // 2,))] * 2)
    else:
        plan = (per_layer("attn_norm") + per_layer("ffn_norm") + [("final_norm", (c.dim,))] + emb
                + per_layer("wq") + per_layer("wk") + per_layer("wv") + per_layer("wo")
                + per_layer("w_gate") + per_layer("w_down") + per_layer("w_up"))
    if not c.tie_embeddings:
        plan.append(("wcls", (c.vocab_size, c.dim)))
    return plan


def _parse_header(path: Path, head: bytes, size: int) -> tuple[int, LlamaConfig, int]:
    """-> (version, config, byte offset of the first weight)."""
    if size < 28:
        raise ModelFormatError(f"{path}: truncated llama2.c checkpoint ({size} bytes, the header "
                               f"alone needs 28)")
    (magic,) = struct.unpack("<I", head[:4])
    if magic == LLAMA2C_MAGIC:
        if size < V1_HEADER_BYTES:
            raise ModelFormatError(f"{path}: truncated llama2.c checkpoint ({size} bytes, the "
                                   f"version-1 header alone needs {V1_HEADER_BYTES})")
        (version,) = struct.unpack("<i", head[4:8])
        if version != 1:
            what = "int8 Q8_0" if version == 2 else "unknown"
            raise ModelFormatError(f"{path}: llama2.c checkpoint version {version} ({what}) is "
                                   f"not supported; export it with version 0 or 1 (float32)")
        fields = struct.unpack("<7i", head[8:36])
        shared = head[36]
        if shared not in (0, 1):
            raise ModelFormatError(f"{path}: bad shared-classifier flag {shared}")
        if fields[5] <= 0:
            raise ModelFormatError(f"{path}: header field vocab_size = {fields[5]} must be "
                                   f"positive in a version-1 checkpoint")
        return 1, _config(path, *fields, tied=bool(shared)), V1_HEADER_BYTES
    fields = list(struct.unpack("<7i", head[:28]))
    tied = fields[5] > 0
    fields[5] = abs(fields[5])
    return 0, _config(path, *fields, tied=tied), 28


def load_llama2c(path, tokenizer_path=None, name: str | None = None) -> LlamaModel:
    """Load a llama2.c ``.bin`` checkpoint (version 0 or 1, float32).

    ``tokenizer_path``: a llama2.c ``tokenizer.bin`` to attach as ``model.tokenizer``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file" if not path.exists()
                               else f"{path}: not a file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(V1_HEADER_BYTES)
    version, c, start = _parse_header(path, head, size)
    plan = _tensor_plan(c, version)
    n_floats = sum(math.prod(shape) for _, shape in plan)
    expected = start + 4 * n_floats
    if size != expected:
        kind = "truncated" if size < expected else f"{size - expected} trailing bytes after the weights"
        raise ModelFormatError(
            f"{path}: file is {size} bytes but its header (version {version}, dim {c.dim}, "
            f"layers {c.n_layers}, heads {c.n_heads}, kv heads {c.n_kv_heads}, hidden "
            f"{c.hidden_dim}, vocab {c.vocab_size}, {'tied' if c.tie_embeddings else 'untied'}, "
            f"seq_len {c.max_seq_len}) needs {expected}: {kind}")
    data = np.fromfile(path, dtype="<f4", offset=start)
    got: dict[str, np.ndarray] = {}
    off = 0
    for key, shape in plan:
        n = math.prod(shape)
        if key != "skip":
            arr = data[off:off + n].astype(np.float32).reshape(shape)
            if not np.all(np.isfinite(arr)):
                raise ModelFormatError(f"{path}: tensor {key} contains NaN or infinity")
            got[key] = arr
        off += n
    layers = []
    for i in range(c.n_layers):
        fields = {f: got[f"{f}.{i}"] for f in LayerWeights.expected_shapes(None, c)}
        fields["wq"] = interleaved_to_half(fields["wq"], c.n_heads)
        fields["wk"] = interleaved_to_half(fields["wk"], c.n_kv_heads)
        layers.append(LayerWeights(**fields))
    emb = got["emb"]
    model = LlamaModel(config=c, tok_embeddings=emb, layers=layers, norm=got["final_norm"],
                       lm_head=emb if c.tie_embeddings else got["wcls"],
                       name=name or path.stem)
    model.meta.update({"format": f"llama2c-v{version}", "path": str(path)})
    if tokenizer_path is not None:
        model.tokenizer = read_llama2c_tokenizer(tokenizer_path, vocab_size=c.vocab_size)
        model.meta["tokenizer_path"] = str(tokenizer_path)
    model.validate()
    return model


def save_llama2c(model: LlamaModel, path, version: int = 0) -> Path:
    """Write ``model`` as a llama2.c checkpoint (version 0 or 1, float32).

    wq/wk go back to the interleaved RoPE layout; version 0 stores real freq_cis tables.
    """
    if version not in (0, 1):
        raise ValueError(f"save_llama2c: version must be 0 or 1, got {version}")
    model.validate()
    c = model.config
    if c.norm_eps != LLAMA2C_NORM_EPS or c.rope_theta != LLAMA2C_ROPE_THETA:
        raise ValueError(f"save_llama2c: llama2.c fixes norm_eps=1e-5 and rope_theta=10000; this "
                         f"model has norm_eps={c.norm_eps}, rope_theta={c.rope_theta}")
    fields = [c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
              c.max_seq_len]
    if version == 0:
        if not c.tie_embeddings:
            fields[5] = -fields[5]
        header = struct.pack("<7i", *fields)
    else:
        header = struct.pack("<Ii7iB", LLAMA2C_MAGIC, 1, *fields, int(c.tie_embeddings))
        header += b"\0" * (V1_HEADER_BYTES - len(header))
    hd = c.head_dim
    freqs = 1.0 / (LLAMA2C_ROPE_THETA ** (np.arange(0, hd, 2)[: hd // 2] / hd))
    angles = np.outer(np.arange(c.max_seq_len), freqs)
    tables = {0: np.cos(angles), 1: np.sin(angles)}
    n_skip = 0
    with open(path, "wb") as f:
        f.write(header)
        for key, shape in _tensor_plan(c, version):
            if key == "emb":
                arr = model.tok_embeddings
            elif key == "final_norm":
                arr = model.norm
            elif key == "wcls":
                arr = model.lm_head
            elif key == "skip":
                arr = tables[n_skip]
                n_skip += 1
            else:
                field, i = key.split(".")
                arr = getattr(model.layers[int(i)], field)
                if field in ("wq", "wk"):
                    arr = half_to_interleaved(arr, c.n_heads if field == "wq" else c.n_kv_heads)
            f.write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
    return Path(path)


# ---- tokenizer.bin -------------------------------------------------------------------------

class Llama2cTokenizer:
    """llama2.c's sentencepiece-style tokenizer read from ``tokenizer.bin``.

    Same API as :class:`sw.tokenizer.BpeTokenizer`: ``encode(text) -> ids`` (no BOS; callers
    prepend ``bos_id``), ``decode(ids) -> str``, ``vocab_size``, ``bos_id`` (1), ``eos_id`` (2).

    ``encode`` follows run.c: a dummy-prefix space piece before non-empty text, one piece per
    UTF-8 character (or ``<0xXX>`` byte pieces when the character is not in the vocabulary),
    then repeatedly merge the adjacent pair whose concatenation is the highest-scoring piece
    (leftmost on ties). ``decode`` maps ``<0xXX>`` pieces to raw bytes, drops BOS/EOS, and
    strips the leading space of the piece after BOS (as run.c does) and of the very first
    piece (the dummy prefix), so ``decode(encode(t)) == t`` for text the vocabulary covers.
    """

    def __init__(self, pieces: list[bytes], scores, max_token_length: int | None = None,
                 bos_id: int | None = 1, eos_id: int | None = 2):
        self.pieces = [bytes(p) for p in pieces]
        self.scores = np.asarray(scores, dtype=np.float32)
        if len(self.pieces) != len(self.scores):
            raise ValueError("Llama2cTokenizer: pieces and scores differ in length")
        self.max_token_length = (max(map(len, self.pieces), default=0)
                                 if max_token_length is None else int(max_token_length))
        n = len(self.pieces)
        self.bos_id = bos_id if bos_id is not None and bos_id < n else None
        self.eos_id = eos_id if eos_id is not None and eos_id < n else None
        self._lookup: dict[bytes, int] = {}
        for i, p in enumerate(self.pieces):
            self._lookup.setdefault(p, i)
        self._byte_ids = {}
        self._byte_of = {}
        for b in range(256):
            i = self._lookup.get(b"<0x%02X>" % b)
            if i is not None:
                self._byte_ids[b] = i
                self._byte_of[i] = bytes([b])

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        data = text.encode("utf-8")
        ids: list[int] = []
        if bos and self.bos_id is not None:
            ids.append(self.bos_id)
        toks: list[int] = []
        if data:
            sp = self._lookup.get(b" ")
            if sp is not None:
                toks.append(sp)
        i = 0
        while i < len(data):
            j = i + 1
            while j < len(data) and (data[j] & 0xC0) == 0x80 and j - i < 4:
                j += 1
            ch = data[i:j]
            tid = self._lookup.get(ch)
            if tid is not None:
                toks.append(tid)
            else:
                for b in ch:
                    if b not in self._byte_ids:
                        raise ValueError(f"cannot encode {ch.decode('utf-8', 'replace')!r}: "
                                         f"not in the vocabulary and no <0x{b:02X}> byte token")
                    toks.append(self._byte_ids[b])
            i = j
        # greedy merges by score
        while len(toks) > 1:
            best_score, best_id, best_idx = -1e10, -1, -1
            for k in range(len(toks) - 1):
                tid = self._lookup.get(self.pieces[toks[k]] + self.pieces[toks[k + 1]])
                if tid is not None and self.scores[tid] > best_score:
                    best_score, best_id, best_idx = self.scores[tid], tid, k
            if best_idx < 0:
                break
            toks[best_idx:best_idx + 2] = [best_id]
        ids.extend(toks)
        if eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode_bytes(self, ids) -> bytes:
        out = bytearray()
        prev = None
        first = True
        for tid in ids:
            tid = int(tid)
            if not 0 <= tid < len(self.pieces):
                raise ValueError(f"token id {tid} is outside the vocabulary (0..{len(self.pieces) - 1})")
            if tid in (self.bos_id, self.eos_id):
                prev = tid
                continue
            piece = self._byte_of.get(tid, self.pieces[tid])
            if (first or prev == self.bos_id) and piece.startswith(b" ") and tid not in self._byte_of:
                piece = piece[1:]
            out += piece
            prev, first = tid, False
        return bytes(out)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self):
        return f"Llama2cTokenizer(vocab_size={self.vocab_size})"


def read_llama2c_tokenizer(path, vocab_size: int | None = None) -> Llama2cTokenizer:
    """Read a llama2.c ``tokenizer.bin``: int32 max_token_length, then per token float32 score,
    int32 length, bytes. The file has no count: it is read to its end, and ``vocab_size`` (the
    model's) is checked when given."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read ({e.strerror})") from None
    if len(blob) < 4:
        raise ModelFormatError(f"{path}: truncated tokenizer.bin ({len(blob)} bytes)")
    (max_len,) = struct.unpack_from("<i", blob, 0)
    if max_len <= 0:
        raise ModelFormatError(f"{path}: bad max_token_length {max_len}")
    pieces, scores = [], []
    off = 4
    while off < len(blob):
        if vocab_size is not None and len(pieces) == vocab_size:
            raise ModelFormatError(f"{path}: {len(blob) - off} trailing bytes after the "
                                   f"{vocab_size} tokens the model's vocabulary has")
        if off + 8 > len(blob):
            raise ModelFormatError(f"{path}: truncated at token {len(pieces)}")
        score, n = struct.unpack_from("<fi", blob, off)
        off += 8
        if n < 0 or n > max_len or off + n > len(blob):
            raise ModelFormatError(f"{path}: token {len(pieces)} has bad length {n} "
                                   f"(max_token_length {max_len}, {len(blob) - off} bytes left)")
        pieces.append(blob[off:off + n])
        scores.append(score)
        off += n
    if vocab_size is not None and len(pieces) != vocab_size:
        raise ModelFormatError(f"{path}: has {len(pieces)} tokens but the model's vocabulary "
                               f"has {vocab_size}")
    return Llama2cTokenizer(pieces, scores, max_token_length=max_len)


def write_llama2c_tokenizer(path, pieces, scores) -> Path:
    """Write a llama2.c ``tokenizer.bin`` (pieces: str or bytes)."""
    bs = [p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in pieces]
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(map(len, bs), default=1) or 1))
        for b, s in zip(bs, scores, strict=True):
            f.write(struct.pack("<fi", float(s), len(b)))
            f.write(b)
    return Path(path)

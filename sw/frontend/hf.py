"""Hugging Face Llama checkpoint folders: ``config.json`` + ``model.safetensors``.

``load_hf(folder)`` reads a ``LlamaForCausalLM`` folder into a :class:`~sw.model.LlamaModel`
(float32; F16/BF16 tensors are widened exactly), checking every field and tensor and raising
:class:`ModelFormatError` with a one-line reason for anything it cannot represent faithfully.
Sharded checkpoints (``model.safetensors.index.json``) are read too. ``tokenizer.json`` is
loaded with :mod:`sw.tokenizer` when present.

``save_hf(model, folder)`` writes the same format (float32 unless asked otherwise).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from sw.frontend.errors import ModelFormatError
from sw.frontend.safetensors import read_safetensors, write_safetensors
from sw.model import LayerWeights, LlamaConfig, LlamaModel

__all__ = ["load_hf", "save_hf", "config_from_hf", "config_to_hf", "hf_tensor_names"]

# LayerWeights field -> HF tensor name suffix within model.layers.{i}.
LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "ffn_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}
_FLOAT_DTYPES = (np.float32, np.float16, np.float64)
# Buffers some older checkpoints carry that hold no parameters; skipped silently.
_IGNORED = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def _int_field(cfg: dict, key: str, where: str, default=None) -> int:
    v = cfg.get(key, default)
    if v is None:
        raise ModelFormatError(f"{where}: missing field {key}")
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ModelFormatError(f"{where}: {key} must be a positive integer, got {v!r}")
    return v


def _float_field(cfg: dict, key: str, where: str, default: float) -> float:
    v = cfg.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
        raise ModelFormatError(f"{where}: {key} must be a positive number, got {v!r}")
    return float(v)


def config_from_hf(cfg: dict, where: str = "config.json") -> LlamaConfig:
    """Validate a HF ``config.json`` dict and turn it into a :class:`LlamaConfig`."""
    if not isinstance(cfg, dict):
        raise ModelFormatError(f"{where}: not a JSON object")
    archs = cfg.get("architectures")
    if archs is not None and "LlamaForCausalLM" not in archs:
        raise ModelFormatError(f"{where}: unsupported architecture {', '.join(map(str, archs))} "
                               f"(only LlamaForCausalLM)")
    mtype = cfg.get("model_type")
    if mtype is not None and mtype != "llama":
        raise ModelFormatError(f"{where}: unsupported model_type {mtype!r} (only 'llama')")
    if archs is None and mtype is None:
        raise ModelFormatError(f"{where}: neither architectures nor model_type is set; "
                               f"expected a LlamaForCausalLM config")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ModelFormatError(f"{where}: unsupported hidden_act {act!r} (only 'silu')")
    theta_default = 10000.0
    for key in ("rope_scaling", "rope_parameters"):
        rs = cfg.get(key)
        if rs is None:
            continue
        rtype = rs.get("rope_type", rs.get("type")) if isinstance(rs, dict) else None
        if rtype != "default":
            raise ModelFormatError(f"{where}: {key} is not supported (got {json.dumps(rs)}); "
                                   f"only plain RoPE")
        if key == "rope_parameters" and "rope_theta" in rs:
            theta_default = rs["rope_theta"]
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key, False):
            raise ModelFormatError(f"{where}: {key} is true; biases are not supported")
    dim = _int_field(cfg, "hidden_size", where)
    heads = _int_field(cfg, "num_attention_heads", where)
    kv_heads = _int_field(cfg, "num_key_value_heads", where, default=heads)
    if "head_dim" in cfg and cfg["head_dim"] is not None and dim % heads == 0 \
            and cfg["head_dim"] != dim // heads:
        raise ModelFormatError(f"{where}: head_dim {cfg['head_dim']} differs from hidden_size / "
                               f"num_attention_heads = {dim // heads}; not supported")
    tie = cfg.get("tie_word_embeddings", False)       # the HF LlamaConfig default
    if not isinstance(tie, bool):
        raise ModelFormatError(f"{where}: tie_word_embeddings must be true or false, got {tie!r}")
    try:
        return LlamaConfig(
            dim=dim, n_layers=_int_field(cfg, "num_hidden_layers", where), n_heads=heads,
            n_kv_heads=kv_heads, hidden_dim=_int_field(cfg, "intermediate_size", where),
            vocab_size=_int_field(cfg, "vocab_size", where),
            max_seq_len=_int_field(cfg, "max_position_embeddings", where, default=2048),
            norm_eps=_float_field(cfg, "rms_norm_eps", where, 1e-6),
            rope_theta=_float_field(cfg, "rope_theta", where, theta_default),
            tie_embeddings=tie)
    except ValueError as e:
        raise ModelFormatError(f"{where}: {e}") from None


def config_to_hf(c: LlamaConfig) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": c.dim, "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim,
        "vocab_size": c.vocab_size, "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "rope_scaling": None,
        "tie_word_embeddings": c.tie_embeddings, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
    }


def hf_tensor_names(c: LlamaConfig) -> dict:
    """HF tensor name -> expected shape, for every tensor a checkpoint of ``c`` must hold."""
    names = {"model.embed_tokens.weight": (c.vocab_size, c.dim), "model.norm.weight": (c.dim,)}
    shapes = LayerWeights.expected_shapes(None, c)
    for i in range(c.n_layers):
        for field, suffix in LAYER_NAMES.items():
            names[f"model.layers.{i}.{suffix}"] = shapes[field]
    if not c.tie_embeddings:
        names["lm_head.weight"] = (c.vocab_size, c.dim)
    return names


def _read_tensors(folder: Path) -> tuple[dict, dict]:
    """All tensors of the folder -> ({name: array}, {name: file it came from})."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        t = read_safetensors(single)
        return t, {k: single for k in t}
    if index.is_file():
        try:
            wmap = json.loads(index.read_text())["weight_map"]
            if not isinstance(wmap, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise ModelFormatError(f"{index}: not a valid safetensors index (needs a weight_map "
                                   f"object)") from None
        tensors, where = {}, {}
        for shard in sorted(set(wmap.values())):
            path = folder / shard
            if not path.is_file():
                raise ModelFormatError(f"{index}: shard {shard} is missing")
            for k, v in read_safetensors(path).items():
                if k in tensors:
                    raise ModelFormatError(f"{path}: tensor {k} also appears in {where[k].name}")
                tensors[k], where[k] = v, path
        for k, shard in wmap.items():
            if k not in tensors:
                raise ModelFormatError(f"{index}: tensor {k} is listed for {shard} but not in it")
        return tensors, where
    others = [p.name for p in folder.iterdir()
              if p.name.endswith((".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack"))]
    hint = f" (found {', '.join(sorted(others))}; only safetensors weights are supported)" \
        if others else ""
    raise ModelFormatError(f"{folder}: model.safetensors not found{hint}")


def _to_f32(name: str, arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype.type not in _FLOAT_DTYPES:      # BF16 was already widened to float32
        raise ModelFormatError(f"{path}: unsupported dtype {arr.dtype} for {name} "
                               f"(expected F32, F16 or BF16)")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise ModelFormatError(f"{path}: {name} contains NaN or infinity")
    return out


def load_tokenizer_json(path: Path):
    """``sw.tokenizer.BpeTokenizer`` for ``path``, or None if that module is not available."""
    try:
        from sw.tokenizer import BpeTokenizer
    except ModuleNotFoundError as e:
        if e.name in ("sw.tokenizer",):
            return None
        raise
    try:
        return BpeTokenizer.from_file(path)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise ModelFormatError(f"{path}: cannot load tokenizer ({e})") from None


def load_hf(folder, name: str | None = None) -> LlamaModel:
    """Load a Hugging Face ``LlamaForCausalLM`` checkpoint folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFormatError(f"{folder}: not a folder" if folder.exists()
                               else f"{folder}: no such folder")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelFormatError(f"{folder}: config.json not found (not a Hugging Face checkpoint "
                               f"folder)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{cfg_path}: not valid JSON ({e})") from None
    c = config_from_hf(cfg, str(cfg_path))
    tensors, where = _read_tensors(folder)
    expected = hf_tensor_names(c)

    extra = []
    for k in tensors:
        if k in expected or _IGNORED.match(k):
            continue
        if k == "lm_head.weight" and c.tie_embeddings:
            continue
        extra.append(k)
    for k in sorted(extra):
        if k.endswith(".bias"):
            raise ModelFormatError(f"{where[k]}: biases are not supported: {k}")
    if extra:
        k = sorted(extra)[0]
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ModelFormatError(f"{where[k]}: unexpected tensor {k}{more}")
    tensor_file = folder / "model.safetensors"
    for k, shape in expected.items():
        if k not in tensors:
            hint = " (config.json has tie_word_embeddings false)" if k == "lm_head.weight" else ""
            raise ModelFormatError(f"{tensor_file}: missing tensor {k}{hint}")
        if tensors[k].shape != tuple(shape):
            raise ModelFormatError(f"{where[k]}: {k} has shape {tensors[k].shape}, expected "
                                   f"{tuple(shape)}")

    def get(k):
        return _to_f32(k, tensors[k], where[k])

    emb = get("model.embed_tokens.weight")
    if c.tie_embeddings:
        head = emb
        if "lm_head.weight" in tensors:
            lm = tensors["lm_head.weight"]
            if lm.shape != emb.shape or not np.array_equal(_to_f32("lm_head.weight", lm,
                                                                   where["lm_head.weight"]), emb):
                raise ModelFormatError(f"{where['lm_head.weight']}: lm_head.weight differs from "
                                       f"model.embed_tokens.weight but config.json sets "
                                       f"tie_word_embeddings true")
    else:
        head = get("lm_head.weight")
    layers = [LayerWeights(**{f: get(f"model.layers.{i}.{s}") for f, s in LAYER_NAMES.items()})
              for i in range(c.n_layers)]
    model = LlamaModel(config=c, tok_embeddings=emb, layers=layers, norm=get("model.norm.weight"),
                       lm_head=head, name=name or folder.resolve().name)
    dtypes = sorted({str(tensors[k].dtype) for k in expected})
    model.meta.update({"format": "hf", "path": str(folder), "dtypes": dtypes})
    tok_path = folder / "tokenizer.json"
    if tok_path.is_file():
        model.tokenizer = load_tokenizer_json(tok_path)
        model.meta["tokenizer_path"] = str(tok_path)
        n_tok = getattr(model.tokenizer, "vocab_size", 0)
        if n_tok > c.vocab_size:       # a larger (padded) model vocabulary is fine
            raise ModelFormatError(f"{tok_path}: the tokenizer has {n_tok} tokens but the model's "
                                   f"vocabulary has only {c.vocab_size}")
    try:
        model.validate()
    except ValueError as e:
        raise ModelFormatError(f"{folder}: {e}") from None
    return model


def save_hf(model: LlamaModel, folder, dtype: str = "F32", tokenizer_json=None) -> Path:
    """Write ``model`` as a HF checkpoint folder (config.json + model.safetensors).

    ``dtype`` is the stored dtype of every tensor ("F32", "F16" or "BF16"). ``tokenizer.json`` is
    copied from ``tokenizer_json`` or, if not given, from ``model.meta["tokenizer_path"]`` when the
    model was loaded from a folder that had one; otherwise a ``BpeTokenizer`` in
    ``model.tokenizer`` is saved with its ``save()``.
    """
    if dtype not in ("F32", "F16", "BF16"):
        raise ValueError(f"save_hf: dtype must be F32, F16 or BF16, got {dtype!r}")
    model.validate()
    c = model.config
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config_to_hf(c)
    cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    tok = model.tokenizer
    for key, attr in (("bos_token_id", "bos_id"), ("eos_token_id", "eos_id")):
        v = getattr(tok, attr, None) if tok is not None else None
        if v is not None:
            cfg[key] = int(v)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = {"model.embed_tokens.weight": model.tok_embeddings}
    for i, layer in enumerate(model.layers):
        for f, s in LAYER_NAMES.items():
            tensors[f"model.layers.{i}.{s}"] = getattr(layer, f)
    tensors["model.norm.weight"] = model.norm
    if not c.tie_embeddings:
        tensors["lm_head.weight"] = model.lm_head
    write_safetensors(folder / "model.safetensors", tensors, metadata={"format": "pt"},
                      dtypes={k: dtype for k in tensors})
    src = tokenizer_json or model.meta.get("tokenizer_path")
    dst = folder / "tokenizer.json"
    if src is not None and str(src).endswith(".json"):
        if Path(src).resolve() != dst.resolve():
            shutil.copyfile(src, dst)
    elif tok is not None and callable(getattr(tok, "save", None)) and hasattr(tok, "to_json"):
        tok.save(dst)                                   # a BpeTokenizer built in memory
    return folder

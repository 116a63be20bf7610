"""Checkpoint frontends: read a model from disk into a :class:`sw.model.LlamaModel`.

``load_model(path)`` detects the format:
- a folder with ``config.json`` -> Hugging Face (``config.json`` + ``model.safetensors``,
  ``tokenizer.json`` if present), see :mod:`sw.frontend.hf`;
- a ``.bin`` file -> llama2.c checkpoint, with ``tokenizer.bin`` taken from the same folder if
  present, see :mod:`sw.frontend.llama2c`.
Anything else is a :class:`ModelFormatError` with a one-line reason.
"""

from __future__ import annotations

from pathlib import Path

from sw.frontend.errors import ModelFormatError

__all__ = ["ModelFormatError", "load_model", "detect_format"]


def detect_format(path) -> str:
    """'hf' or 'llama2c' for ``path``; raises ModelFormatError when neither applies."""
    p = Path(path)
    if not p.exists():
        raise ModelFormatError(f"{p}: no such file or folder")
    if p.is_dir():
        if (p / "config.json").is_file():
            return "hf"
        entries = sorted(x.name for x in p.iterdir())
        if not entries:
            raise ModelFormatError(f"{p}: the folder is empty (expected a Hugging Face checkpoint "
                                   f"folder with config.json and model.safetensors)")
        bins = [e for e in entries if e.endswith(".bin") and e != "tokenizer.bin"]
        hint = f"; for a llama2.c checkpoint pass the .bin file itself ({bins[0]})" if bins else ""
        raise ModelFormatError(f"{p}: no config.json in this folder, so it is not a Hugging Face "
                               f"checkpoint{hint}")
    if p.suffix == ".bin":
        if p.name == "tokenizer.bin":
            raise ModelFormatError(f"{p}: this is a tokenizer, not a model checkpoint")
        return "llama2c"
    if p.suffix == ".safetensors" or p.name == "config.json":
        raise ModelFormatError(f"{p}: pass the checkpoint folder ({p.parent}), not a file inside it")
    raise ModelFormatError(f"{p}: unknown model format (expected a Hugging Face folder with "
                           f"config.json, or a llama2.c .bin checkpoint)")


def load_model(path):
    """Load a model from a HF folder or a llama2.c ``.bin``; the name is the folder/file stem."""
    from sw.frontend.hf import load_hf
    from sw.frontend.llama2c import load_llama2c
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "hf":
        return load_hf(p)
    tok = p.parent / "tokenizer.bin"
    return load_llama2c(p, tokenizer_path=tok if tok.is_file() else None)

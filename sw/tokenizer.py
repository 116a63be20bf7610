"""Byte-level BPE tokenizer (GPT-2 style), pure Python + numpy, Hugging Face compatible.

The project's shipped models use this tokenizer. It reads and writes the Hugging Face
``tokenizers`` JSON format for a ``BPE`` model with a ``ByteLevel`` pre-tokenizer and decoder, and
gives the same ids as ``tokenizers.Tokenizer.from_file(path).encode(text).ids`` for such files
(checked in ``tests/test_tokenizer.py``), without needing the ``tokenizers`` package at run time.

API::

    tok = BpeTokenizer.from_file("models/kjv-280k/tokenizer.json")
    ids = [tok.bos_id] + tok.encode("And God said")   # encode() adds no BOS
    text = tok.decode(ids)                               # never raises; bad UTF-8 -> U+FFFD
    tok.vocab_size, tok.bos_id, tok.eos_id
    tok.save("tokenizer.json")
    tok = train_bpe(text, vocab_size=512)                # 256 bytes + specials + merges

Pre-tokenisation is the GPT-2 regex
``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
implemented as a hand-written scanner (Python's ``re`` has no ``\\p{L}``), so merges never cross
word boundaries. Special tokens (``added_tokens``) found verbatim in the input text are encoded as
their ids, as Hugging Face does.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections import Counter

import numpy as np

__all__ = ["BpeTokenizer", "train_bpe", "pretokenize", "bytes_to_unicode"]


# --------------------------------------------------------------------------------------------
# GPT-2 byte <-> printable-unicode alphabet


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_B2U = bytes_to_unicode()
_U2B = {u: b for b, u in _B2U.items()}


# --------------------------------------------------------------------------------------------
# GPT-2 pre-tokenizer

# Unicode White_Space (what \s matches in the regex engines Hugging Face uses).
_WHITESPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                        "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_LETTER, _NUMBER, _SPACE, _OTHER = 0, 1, 2, 3
_CLASS_CACHE: dict[str, int] = {}
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


def _char_class(ch: str) -> int:
    k = _CLASS_CACHE.get(ch)
    if k is None:
        if ch in _WHITESPACE:
            k = _SPACE
        else:
            cat = unicodedata.category(ch)[0]
            k = _LETTER if cat == "L" else _NUMBER if cat == "N" else _OTHER
        _CLASS_CACHE[ch] = k
    return k


def pretokenize(text: str) -> list[str]:
    """Split ``text`` into GPT-2 pre-tokens (their concatenation is ``text``)."""
    cls = [_char_class(c) for c in text]
    n = len(text)
    out = []
    i = 0
    while i < n:
        c = cls[i]
        ch = text[i]
        # 1. contractions
        if ch == "'" and i + 1 < n:
            hit = None
            for s in _CONTRACTIONS:
                if text.startswith(s, i + 1):
                    hit = s
                    break
            if hit is not None:
                out.append(text[i:i + 1 + len(hit)])
                i += 1 + len(hit)
                continue
        # 2-4. optional single ' ' then a run of letters / numbers / other
        j = i
        if ch == " " and i + 1 < n and cls[i + 1] != _SPACE:
            j = i + 1
        cj = cls[j]
        if cj != _SPACE:
            k = j + 1
            while k < n and cls[k] == cj:
                k += 1
            out.append(text[i:k])
            i = k
            continue
        # 5-6. whitespace run: \s+(?!\S) keeps the last blank for the next word, else \s+
        k = i + 1
        while k < n and cls[k] == _SPACE:
            k += 1
        if k < n and k - i > 1:
            k -= 1
        out.append(text[i:k])
        i = k
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer


class BpeTokenizer:
    """A byte-level BPE tokenizer.

    ``vocab`` maps token strings (in the GPT-2 byte alphabet) to ids; ``merges`` is the ordered
    list of merged pairs; ``special_tokens`` maps special token text (e.g. ``"<s>"``) to ids.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]],
                 special_tokens: dict[str, int] | None = None, bos_token: str | None = "<s>",
                 eos_token: str | None = "</s>", ignore_merges: bool = False):
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.special_tokens = dict(special_tokens or {})
        self.ignore_merges = bool(ignore_merges)
        for text, i in self.special_tokens.items():
            self.vocab.setdefault(text, i)
        self.bpe_ranks = {pair: r for r, pair in enumerate(self.merges)}
        ids = list(self.vocab.values()) + list(self.special_tokens.values())
        self.vocab_size = (max(ids) + 1) if ids else 0
        self.id_to_token: list[str | None] = [None] * self.vocab_size
        for t, i in self.vocab.items():
            self.id_to_token[i] = t
        for t, i in self.special_tokens.items():
            self.id_to_token[i] = t
        self._special_ids = frozenset(self.special_tokens.values())
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id = self.special_tokens.get(bos_token, self.vocab.get(bos_token)) \
            if bos_token is not None else None
        self.eos_id = self.special_tokens.get(eos_token, self.vocab.get(eos_token)) \
            if eos_token is not None else None
        self._cache: dict[str, tuple[int, ...]] = {}
        # per-id raw bytes, for decoding
        self._id_bytes: list[bytes] = []
        for i, t in enumerate(self.id_to_token):
            if t is None:
                self._id_bytes.append(b"")
            elif i in self._special_ids:
                self._id_bytes.append(t.encode("utf-8"))
            else:
                self._id_bytes.append(bytes(_U2B[c] for c in t) if all(c in _U2B for c in t)
                                      else t.encode("utf-8"))

    # ---- encoding ------------------------------------------------------------------------
    def _bpe(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-token (a string in the byte alphabet)."""
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        if self.ignore_merges and word in self.vocab:
            res = (self.vocab[word],)
        else:
            syms = list(word)
            ranks = self.bpe_ranks
            while len(syms) > 1:
                best, best_rank = None, None
                for a, b in zip(syms, syms[1:]):
                    r = ranks.get((a, b))
                    if r is not None and (best_rank is None or r < best_rank):
                        best, best_rank = (a, b), r
                if best is None:
                    break
                a, b = best
                merged, k, m = [], 0, len(syms)
                while k < m:
                    if k < m - 1 and syms[k] == a and syms[k + 1] == b:
                        merged.append(a + b)
                        k += 2
                    else:
                        merged.append(syms[k])
                        k += 1
                syms = merged
            try:
                res = tuple(self.vocab[s] for s in syms)
            except KeyError as e:  # a merge result or byte missing from the vocab
                raise ValueError(f"tokenizer: symbol {e.args[0]!r} is not in the vocabulary") from None
        if len(self._cache) < 200_000:
            self._cache[word] = res
        return res

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        for piece in pretokenize(text):
            out.extend(self._bpe("".join(_B2U[b] for b in piece.encode("utf-8"))))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added). Special token strings map to their ids."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        out: list[int] = []
        if not self.special_tokens:
            self._encode_ordinary(text, out)
            return out
        specials = sorted(self.special_tokens, key=len, reverse=True)
        pos = 0
        while True:
            nxt, which = -1, None
            for s in specials:
                k = text.find(s, pos)
                if k != -1 and (nxt == -1 or k < nxt):
                    nxt, which = k, s
            if which is None:
                self._encode_ordinary(text[pos:], out)
                return out
            self._encode_ordinary(text[pos:nxt], out)
            out.append(self.special_tokens[which])
            pos = nxt + len(which)

    # ---- decoding ------------------------------------------------------------------------
    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one id stands for (special tokens: their text); b"" if out of range."""
        i = int(token_id)
        return self._id_bytes[i] if 0 <= i < self.vocab_size else b""

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``. Never raises: invalid UTF-8 and unknown ids become U+FFFD."""
        parts = []
        for t in np.asarray(list(ids), dtype=np.int64).reshape(-1).tolist():
            if not 0 <= t < self.vocab_size or self.id_to_token[t] is None:
                parts.append("\ufffd".encode("utf-8"))
            elif t in self._special_ids and skip_special_tokens:
                continue
            else:
                parts.append(self._id_bytes[t])
        return b"".join(parts).decode("utf-8", errors="replace")

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_json(self) -> dict:
        added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True}
                 for t, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1])]
        vocab = dict(sorted(self.vocab.items(), key=lambda kv: kv[1]))
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": True}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": dict(byte_level),
            "post_processor": None,
            "decoder": dict(byte_level),
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": self.ignore_merges,
                      "vocab": vocab, "merges": [f"{a} {b}" for a, b in self.merges]},
        }

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, ensure_ascii=False, indent=1)
            f.write("\n")

    @classmethod
    def from_json(cls, data, source: str = "tokenizer.json", bos_token: str = "<s>",
                  eos_token: str = "</s>") -> "BpeTokenizer":
        def bad(msg):
            return ValueError(f"{source}: {msg}")
        if not isinstance(data, dict):
            raise bad("top level is not a JSON object")
        model = data.get("model")
        if not isinstance(model, dict):
            raise bad("missing 'model' object")
        if model.get("type", "BPE") != "BPE":
            raise bad(f"model.type is {model.get('type')!r}, only 'BPE' is supported")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise bad(f"model.{key} is not supported")
        if model.get("dropout") not in (None, 0, 0.0):
            raise bad("model.dropout is not supported")
        if data.get("normalizer") is not None:
            raise bad("a normalizer is not supported (expected null)")
        pre = data.get("pre_tokenizer")
        if not isinstance(pre, dict) or pre.get("type") != "ByteLevel":
            raise bad("pre_tokenizer must be {'type': 'ByteLevel', ...}")
        if pre.get("add_prefix_space", False) or not pre.get("use_regex", True):
            raise bad("ByteLevel pre_tokenizer must have add_prefix_space false and use_regex true")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not vocab:
            raise bad("model.vocab must be a non-empty object {token: id}")
        for t, i in vocab.items():
            if not isinstance(i, int) or isinstance(i, bool) or i < 0:
                raise bad(f"model.vocab[{t!r}] is {i!r}, not a non-negative integer id")
        if len(set(vocab.values())) != len(vocab):
            raise bad("model.vocab has duplicate ids")
        missing = [b for b in _B2U.values() if b not in vocab]
        if missing:
            raise bad(f"model.vocab lacks {len(missing)} of the 256 byte tokens "
                      f"(e.g. {missing[0]!r}); not a byte-level BPE vocabulary")
        raw_merges = model.get("merges", [])
        if not isinstance(raw_merges, list):
            raise bad("model.merges must be a list")
        merges = []
        for k, m in enumerate(raw_merges):
            if isinstance(m, str):
                parts = m.split(" ")
            elif isinstance(m, list):
                parts = m
            else:
                parts = None
            if not parts or len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
                raise bad(f"model.merges[{k}] is {m!r}, expected 'a b' or ['a', 'b']")
            a, b = parts
            for p in (a, b, a + b):
                if p not in vocab:
                    raise bad(f"model.merges[{k}] uses {p!r}, which is not in model.vocab")
            merges.append((a, b))
        specials = {}
        added = data.get("added_tokens") or []
        if not isinstance(added, list):
            raise bad("added_tokens must be a list")
        for k, a in enumerate(added):
            if not isinstance(a, dict) or not isinstance(a.get("content"), str) or \
                    not isinstance(a.get("id"), int):
                raise bad(f"added_tokens[{k}] must have a string 'content' and an integer 'id'")
            if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
                raise bad(f"added_tokens[{k}]: lstrip/rstrip/single_word are not supported")
            if a["content"] in vocab and vocab[a["content"]] != a["id"]:
                raise bad(f"added_tokens[{k}] {a['content']!r} has id {a['id']}, "
                          f"but model.vocab gives {vocab[a['content']]}")
            specials[a["content"]] = a["id"]
        return cls(vocab, merges, specials, bos_token=bos_token if bos_token in specials or
                   bos_token in vocab else None,
                   eos_token=eos_token if eos_token in specials or eos_token in vocab else None,
                   ignore_merges=bool(model.get("ignore_merges", False)))

    @classmethod
    def from_file(cls, path, bos_token: str = "<s>", eos_token: str = "</s>") -> "BpeTokenizer":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e})") from None
        return cls.from_json(data, source=path, bos_token=bos_token, eos_token=eos_token)

    def __repr__(self):
        return (f"BpeTokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id})")


# --------------------------------------------------------------------------------------------
# Training


def train_bpe(text: str, vocab_size: int, special_tokens=("<s>", "</s>")) -> BpeTokenizer:
    """Train a byte-level BPE tokenizer on ``text``.

    Ids: 0..255 are the bytes (id == byte value), then the special tokens in order, then one id
    per merge. Merges never cross pre-token (word) boundaries. Deterministic: the most frequent
    pair wins, ties broken by the smallest (first, second) token-id pair.
    """
    special_tokens = tuple(special_tokens)
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise ValueError(f"vocab_size {vocab_size} is smaller than 256 bytes + "
                         f"{len(special_tokens)} special tokens")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError("special_tokens must be distinct")
    # counts over unique words; words as lists of token ids
    word_counts = Counter(pretokenize(text))
    words: list[list[int]] = []
    counts: list[int] = []
    for w, c in sorted(word_counts.items()):
        words.append(list(w.encode("utf-8")))
        counts.append(c)
    id_bytes: list[bytes] = [bytes([b]) for b in range(256)] + [b""] * len(special_tokens)
    # pair statistics
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for wi, w in enumerate(words):
        c = counts[wi]
        for p in zip(w, w[1:]):
            pair_counts[p] = pair_counts.get(p, 0) + c
            where.setdefault(p, set()).add(wi)
    merges: list[tuple[int, int]] = []
    next_id = 256 + len(special_tokens)
    for _ in range(n_merges):
        best, best_c = None, 0
        for p, c in pair_counts.items():
            if c > best_c or (c == best_c and c > 0 and p < best):
                best, best_c = p, c
        if best is None or best_c <= 0:
            break  # nothing left to merge: a smaller vocabulary
        a, b = best
        new = next_id
        next_id += 1
        merges.append(best)
        id_bytes.append(id_bytes[a] + id_bytes[b])
        for wi in sorted(where.pop(best, ())):
            w = words[wi]
            c = counts[wi]
            for p in zip(w, w[1:]):  # remove old pairs of this word
                pair_counts[p] -= c
            out, k, m = [], 0, len(w)
            while k < m:
                if k < m - 1 and w[k] == a and w[k + 1] == b:
                    out.append(new)
                    k += 2
                else:
                    out.append(w[k])
                    k += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_counts[p] = pair_counts.get(p, 0) + c
                where.setdefault(p, set()).add(wi)
        pair_counts.pop(best, None)
        # drop dead pairs so the max scan stays small
        dead = [p for p, c in pair_counts.items() if c <= 0] if len(merges) % 16 == 0 else ()
        for p in dead:
            del pair_counts[p]
            where.pop(p, None)
    # build the HF-style vocabulary in the byte alphabet
    def tok_str(i):
        return "".join(_B2U[x] for x in id_bytes[i])
    vocab = {tok_str(i): i for i in range(256)}
    specials = {s: 256 + k for k, s in enumerate(special_tokens)}
    merge_strs = []
    for k, (a, b) in enumerate(merges):
        i = 256 + len(special_tokens) + k
        s = tok_str(i)
        if s in vocab:  # cannot happen for a correct trainer; guard the file's invariants
            raise AssertionError(f"duplicate token {s!r}")
        vocab[s] = i
        merge_strs.append((tok_str(a), tok_str(b)))
    bos = special_tokens[0] if len(special_tokens) > 0 else None
    eos = special_tokens[1] if len(special_tokens) > 1 else None
    return BpeTokenizer(vocab, merge_strs, specials, bos_token=bos, eos_token=eos)

"""Tests of sw/tokenizer.py: byte-level BPE, its trainer, its HF tokenizer.json compatibility."""

import json
import os
import random

import pytest

from sw.tokenizer import BpeTokenizer, bytes_to_unicode, pretokenize, train_bpe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "models", "kjv-280k", "tokenizer.json")

CORPUS = (
    "In the beginning God created the heaven and the earth.\n"
    "And the earth was without form, and void; and darkness was upon the face of the deep.\n"
    "And God said, Let there be light: and there was light.\n\n"
    "And God saw the light, that it was good: and God divided the light from the darkness.\n"
    "It's the 3rd day -- isn't it?  Yes!  (Said he.)\tTabs\tand  double  spaces...\n"
    "Naïve café, résumé, Straße, Ελληνικά, русский, 日本語, emoji 😀 and 1,234.56 numbers.\n"
) * 20

SAMPLES = [
    "",
    "a",
    "And God said",
    "Hello, world! How's it going? I'll be there; you'd've known.",
    "punctuation: ()[]{}<>!?.,;:'\"-_/\\|@#$%^&*~`+= end",
    "line one\nline two\n\n\nline five\r\nwindows\r\n",
    "  leading spaces, trailing spaces   ",
    "\t\ttabs\t and\u00a0nbsp\u3000ideographic space",
    "Naïve café résumé Straße",
    "Ελληνικά русский 日本語 中文 한국어 العربية",
    "emoji 😀👍🏽 and combining e\u0301 and zero\u200bwidth",
    "numbers 1234567890 ١٢٣ Ⅻ ² ½",
    "<s>specials</s> inside <s> text",
    "'s 's 'S 'll 'LL x'd 've're'm",
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(CORPUS, 300)


def test_pretokenize_gpt2_rules():
    assert pretokenize("Hello world's  end\n\n") == ["Hello", " world", "'s", " ", " end", "\n\n"]
    assert pretokenize("a  b") == ["a", " ", " b"]
    assert pretokenize("x\n y") == ["x", "\n", " y"]
    assert pretokenize("  ") == ["  "]
    assert pretokenize("12ab!?") == ["12", "ab", "!?"]
    assert pretokenize("it's 'hello'") == ["it", "'s", " '", "hello", "'"]
    for s in SAMPLES:
        assert "".join(pretokenize(s)) == s


def test_byte_alphabet():
    m = bytes_to_unicode()
    assert len(m) == 256 and len(set(m.values())) == 256
    assert m[ord("A")] == "A" and m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ"


def test_trained_layout(tok):
    assert tok.vocab_size == 300
    assert tok.bos_id == 256 and tok.eos_id == 257
    assert len(tok.merges) == 300 - 258
    for b in range(256):  # bytes keep their value as id
        assert tok.token_bytes(b) == bytes([b])
    # merges never cross a word boundary: no token has a non-space byte followed by a space
    for i in range(258, tok.vocab_size):
        bs = tok.token_bytes(i)
        assert b" " not in bs[1:] or bs.strip(b" ") == b"", bs
    assert len(tok.encode("the light")) < len("the light")  # it actually compresses


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_specials_encode_and_skip(tok):
    ids = tok.encode("<s>And</s>")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "And"
    assert tok.decode(ids, skip_special_tokens=False) == "<s>And</s>"


def test_decode_never_raises(tok):
    e_acute = "é".encode()
    first = tok.encode("é")  # "é" is two bytes; keep only the first one
    assert tok.decode([e_acute[0]]) == "\ufffd"
    assert tok.decode(first) == "é"
    assert tok.decode([-1, 10**9, tok.vocab_size]) == "\ufffd" * 3
    assert tok.decode([]) == ""
    assert tok.decode([0xFF, 0xFE, ord("a")]) == "\ufffd\ufffda"


def test_training_is_deterministic(tmp_path):
    a = train_bpe(CORPUS, 290)
    b = train_bpe(CORPUS, 290)
    assert a.merges == b.merges and a.vocab == b.vocab
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_training_small_vocab_and_errors():
    t = train_bpe("ab ab ab", 1000)  # runs out of pairs: smaller vocabulary, still valid
    assert t.vocab_size < 1000 and t.decode(t.encode("ab ba")) == "ab ba"
    with pytest.raises(ValueError, match="smaller than 256"):
        train_bpe("x", 100)


def test_save_load_round_trip(tok, tmp_path):
    p = tmp_path / "tokenizer.json"
    tok.save(p)
    t2 = BpeTokenizer.from_file(p)
    assert (t2.vocab_size, t2.bos_id, t2.eos_id) == (tok.vocab_size, tok.bos_id, tok.eos_id)
    for s in SAMPLES + [CORPUS[:2000]]:
        assert t2.encode(s) == tok.encode(s)
    data = json.loads(p.read_text(encoding="utf-8"))
    assert data["model"]["type"] == "BPE"
    assert data["pre_tokenizer"]["type"] == "ByteLevel" and data["decoder"]["type"] == "ByteLevel"
    assert {a["content"]: a["id"] for a in data["added_tokens"]} == {"<s>": 256, "</s>": 257}


def test_merges_as_lists_accepted(tok, tmp_path):
    d = tok.to_json()
    d["model"]["merges"] = [m.split(" ") for m in d["model"]["merges"]]
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d), encoding="utf-8")
    assert BpeTokenizer.from_file(p).encode(SAMPLES[3]) == tok.encode(SAMPLES[3])


def _fuzz_strings(n, seed=0):
    alphabet = list("abcXYZ'sdtlmrve 0129\t\n\r\x0b\x0c.,!?-_()<>/") + [
        "<s>", "</s>", "é", "ü", "日本", "\u00a0", "\u2003", "\u3000", "😀", "\u0301", "١٢", "Ⅻ",
        "²", "\x85", "\x1c", "\u200b", "ß", "'s", "'ll", "'S", "  ", "\n\n", " the", "And", "God"]
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def test_matches_huggingface_tokenizers(tok, tmp_path):
    tokenizers = pytest.importorskip(
        "tokenizers", reason="Hugging Face 'tokenizers' is not installed (pip install -e .[train]); "
        "cannot check the tokenizer.json against it")
    p = tmp_path / "tokenizer.json"
    tok.save(p)
    hf = tokenizers.Tokenizer.from_file(str(p))
    assert hf.get_vocab_size() == tok.vocab_size
    for s in SAMPLES + [CORPUS] + _fuzz_strings(3000):
        ids = tok.encode(s)
        assert hf.encode(s).ids == ids, repr(s)
        assert hf.decode(ids) == tok.decode(ids), repr(s)
        assert hf.decode(ids, skip_special_tokens=False) == \
            tok.decode(ids, skip_special_tokens=False), repr(s)
    bad = [0xC3, ord("a"), 0xE6, 0x97]  # broken UTF-8: both replace the same way
    assert hf.decode(bad) == tok.decode(bad)


def test_shipped_tokenizer():
    if not os.path.exists(SHIPPED):
        pytest.skip(f"{SHIPPED} not present")
    t = BpeTokenizer.from_file(SHIPPED)
    assert (t.vocab_size, t.bos_id, t.eos_id) == (512, 256, 257)
    text = "And God said, Let there be light: and there was light.\n"
    ids = t.encode(text)
    assert len(ids) < len(text) / 2 and t.decode(ids) == text


# ---- malformed files -------------------------------------------------------------------------

def _write(tmp_path, obj, raw=None):
    p = tmp_path / "tokenizer.json"
    if raw is not None:
        p.write_bytes(raw)
    else:
        p.write_text(json.dumps(obj), encoding="utf-8")
    return p


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("model"), "missing 'model'"),
    (lambda d: d["model"].update(type="WordPiece"), "only 'BPE'"),
    (lambda d: d.update(pre_tokenizer=None), "pre_tokenizer must be"),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "add_prefix_space"),
    (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer"),
    (lambda d: d["model"].update(vocab={}), "model.vocab must be"),
    (lambda d: d["model"]["vocab"].update({"a": "x"}), "not a non-negative integer"),
    (lambda d: d["model"]["vocab"].pop("Ġ"), "lacks 1 of the 256 byte tokens"),
    (lambda d: d["model"].update(merges="a b"), "merges must be a list"),
    (lambda d: d["model"]["merges"].append("onlyone"), "expected 'a b'"),
    (lambda d: d["model"]["merges"].append("Q zzz"), "not in model.vocab"),
    (lambda d: d.update(added_tokens=[{"id": "x", "content": "<s>"}]), "added_tokens\\[0\\]"),
    (lambda d: d.update(added_tokens=[{"id": 3, "content": "<s>"}]), "model.vocab gives 256"),
    (lambda d: d["model"].update(continuing_subword_prefix="##"), "continuing_subword_prefix"),
])
def test_malformed_files(tok, tmp_path, mutate, message):
    d = tok.to_json()
    mutate(d)
    with pytest.raises(ValueError, match=message):
        BpeTokenizer.from_file(_write(tmp_path, d))


def test_malformed_not_json(tmp_path):
    with pytest.raises(ValueError, match="not valid JSON"):
        BpeTokenizer.from_file(_write(tmp_path, None, raw=b"{\"model\": "))
    with pytest.raises(ValueError, match="not UTF-8"):
        BpeTokenizer.from_file(_write(tmp_path, None, raw=b"\xff\xfe\x00{}"))
    with pytest.raises(ValueError, match="top level is not a JSON object"):
        BpeTokenizer.from_file(_write(tmp_path, [1, 2]))

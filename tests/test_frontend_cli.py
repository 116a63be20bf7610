"""`rdu model info` and `rdu generate`, run in-process through sw.cli.main."""

import numpy as np
import pytest

from sw.cli import main
from sw.frontend.cli import decode_traffic, kv_bytes
from sw.frontend.hf import save_hf
from sw.frontend.llama2c import save_llama2c, write_llama2c_tokenizer
from sw.model import LlamaConfig, random_model


def tiny_llama2c_vocab():
    """<unk>, BOS, EOS, 256 byte pieces, printable ASCII, a few merges (as llama2.c's files)."""
    merges = ["th", "he", "the", " t", " the", " c", "at", " cat"]
    pieces = ["<unk>", "\n<s>\n", "\n</s>\n"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [chr(i) for i in range(32, 127)] + merges
    scores = [0.0] * 259 + [-1e9] * 95 + [-float(k) for k in range(len(merges))]
    return pieces, scores

CFG = LlamaConfig(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, hidden_dim=192, vocab_size=512,
                  max_seq_len=256)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "tiny-hf"
    save_hf(random_model(CFG, seed=0), d)
    return d


@pytest.fixture(scope="module")
def l2c_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("l2c")
    pieces, scores = tiny_llama2c_vocab()
    c = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64,
                    vocab_size=len(pieces), max_seq_len=32, tie_embeddings=False)
    save_llama2c(random_model(c, seed=1), d / "stories.bin")
    write_llama2c_tokenizer(d / "tokenizer.bin", pieces, scores)
    return d / "stories.bin"


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, out, err, msg):
    assert code == 2
    assert err.startswith("rdu: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + out
    assert msg in err, err


def test_model_info(capsys, hf_dir):
    m = random_model(CFG, seed=0)
    code, out, err = run(capsys, "model", "info", hf_dir)
    assert code == 0 and err == ""
    assert "name:          tiny-hf" in out
    assert "format:        hf" in out
    assert ("dim 64, layers 5, heads 8, kv heads 4, head dim 8, hidden 192, vocab 512, "
            "max context 256, tied embeddings") in out
    assert f"parameters:    {m.n_params():,}" in out
    t = decode_traffic(CFG, 256)
    assert f"total          {t['total']:>12,}" in out
    assert "tokens per 1,000 cycles" in out


def test_decode_traffic_numbers():
    t = decode_traffic(CFG, 100)
    kvb = kv_bytes()
    # per layer: q 64x64, k/v 32x64 each, o 64x64, 3 MLP matrices 192x64 (int8)
    mat = 64 * 64 * 2 + 32 * 64 * 2 + 3 * 192 * 64
    rows = 64 + 32 + 32 + 64 + 192 + 192 + 64
    assert t["layers"] == 5 * (mat + 4 * rows + 2 * 64 * 2)
    assert t["lm_head"] == 512 * (64 + 4)
    assert t["kv_cache"] == 2 * 5 * 32 * 100 * kvb
    assert t["total"] == t["layers"] + t["lm_head"] + t["embedding_row"] + t["final_norm"] \
        + t["kv_cache"]


def test_model_info_context_and_llama2c(capsys, l2c_model):
    code, out, _ = run(capsys, "model", "info", l2c_model, "--context", 10)
    assert code == 0
    assert "format:        llama2c-v0" in out and "untied embeddings" in out
    assert "Llama2cTokenizer" in out and "context 10" in out
    assert_user_error(*run(capsys, "model", "info", l2c_model, "--context", 33),
                      "--context must be between 0 and the model's max context 32")


@pytest.mark.parametrize("argv,msg", [
    (["model", "info", "/nonexistent/model"], "no such file or folder"),
    (["model", "info", "model.gguf"], "no such file or folder"),
    (["generate", "/nonexistent", "--prompt-ids", "1", "--tokens", "2"], "no such file or folder"),
])
def test_bad_paths(capsys, argv, msg):
    assert_user_error(*run(capsys, *argv), msg)


def test_malformed_model_is_one_line(capsys, tmp_path):
    p = tmp_path / "broken.bin"
    p.write_bytes(b"\x00" * 10)
    assert_user_error(*run(capsys, "model", "info", p), "truncated llama2.c checkpoint")


def test_generate_prompt_ids(capsys, hf_dir):
    ref = pytest.importorskip("sw.reference")
    from sw.frontend import load_model
    want = ref.generate(load_model(hf_dir), [1, 2, 3], 4)
    code, out, err = run(capsys, "generate", hf_dir, "--prompt-ids", "1,2,3", "--tokens", 4)
    assert code == 0, err
    assert "prompt ids:    1,2,3" in out
    assert f"generated ids: {','.join(map(str, want))}" in out


def test_generate_input_errors(capsys, hf_dir):
    assert_user_error(*run(capsys, "generate", hf_dir, "--prompt", "hi", "--tokens", 2),
                      "has no tokenizer; give the prompt as token ids with --prompt-ids")
    assert_user_error(*run(capsys, "generate", hf_dir, "--prompt-ids", "1,512", "--tokens", 2),
                      "token id 512 is outside the vocabulary (0..511)")
    assert_user_error(*run(capsys, "generate", hf_dir, "--prompt-ids", "1,x", "--tokens", 2),
                      "'x' is not an integer token id")
    assert_user_error(*run(capsys, "generate", hf_dir, "--prompt-ids", "1", "--tokens", 0),
                      "--tokens must be at least 1")
    assert_user_error(*run(capsys, "generate", hf_dir, "--prompt-ids", "1,2", "--tokens", 256),
                      "exceeds the model's max context 256")


def test_generate_text_llama2c(capsys, l2c_model):
    ref = pytest.importorskip("sw.reference")
    from sw.frontend import load_model
    m = load_model(l2c_model)
    ids = [1] + m.tokenizer.encode("the cat")
    want = ref.generate(m, ids, 3)
    code, out, err = run(capsys, "generate", l2c_model, "--prompt", "the cat", "--tokens", 3,
                         "--ids")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("the cat") or m.tokenizer.decode(ids + want) in out
    assert f"prompt ids:    {','.join(map(str, ids))}" in out
    assert f"generated ids: {','.join(map(str, want))}" in out


def test_generate_int_engine(capsys, hf_dir):
    golden = pytest.importorskip("sw.golden")
    code, out, err = run(capsys, "generate", hf_dir, "--prompt-ids", "5,6", "--tokens", 2,
                         "--engine", "int")
    assert code == 0, err
    got = [int(x) for x in out.split("generated ids: ")[1].split(",")]
    assert len(got) == 2 and all(0 <= g < 512 for g in got)

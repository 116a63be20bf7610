"""Accuracy of the integer scheme against the float reference.

    python -m sw.accuracy MODEL_PATH [--positions 512] [--text FILE] [--out sim_results/accuracy.json]

Teacher-forced on held-out text (default: the test split ``build/corpus/kjv/test.txt`` written
by ``models/prepare_corpus.py``; ``--text`` for another file). The text is cut into chapters
(blank-line separated paragraphs); windows of up to ``max_seq_len`` tokens (BOS first) are taken
from chapters spread evenly over the file until ``--positions`` predictions are collected.
Prints and writes:

- greedy agreement: fraction of positions where argmax(int logits) == argmax(float logits);
- perplexity of the float and of the integer model on the next token (int logits dequantised
  with the logit scale, evaluation only), and their ratio.

A model without a tokenizer (or with no text available) is measured on seeded random token ids,
and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from . import golden, quant, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TEXT = os.path.join(ROOT, "build", "corpus", "kjv", "test.txt")


def heldout_windows(model, text_path, positions: int) -> tuple[list[list[int]], str]:
    c = model.config
    tok = model.tokenizer
    if tok is None or text_path is None or not os.path.isfile(text_path):
        rng = np.random.default_rng(99)
        n = -(-positions // c.max_seq_len)
        why = "no tokenizer" if tok is None else f"no text at {text_path}"
        return ([rng.integers(0, c.vocab_size, c.max_seq_len).tolist() for _ in range(n)],
                f"random token ids ({why})")
    with open(text_path, encoding="utf-8") as fh:
        chapters = [p.strip() for p in fh.read().split("\n\n") if p.strip()]
    bos = [tok.bos_id] if getattr(tok, "bos_id", None) is not None else []
    n_win = max(1, -(-positions // (c.max_seq_len - 1)))
    picks = np.linspace(0, len(chapters) - 1, min(len(chapters), n_win * 2)).astype(int)
    picks = list(picks[0::2]) + list(picks[1::2])       # the first n_win span the whole file
    wins, got = [], 0
    for k in picks:
        ids = (bos + tok.encode(chapters[k]))[: c.max_seq_len]
        if len(ids) < 16:
            continue
        wins.append(ids)
        got += len(ids) - 1
        if got >= positions:
            break
    return wins, f"{os.path.relpath(text_path, ROOT)} ({len(wins)} chapters, evenly spaced)"


def _logsoftmax(lg):
    lg = lg - lg.max(axis=-1, keepdims=True)
    return lg - np.log(np.exp(lg).sum(axis=-1, keepdims=True))


def measure(model, qm=None, windows=None, positions: int = 512, text_path=DEFAULT_TEXT) -> dict:
    t0 = time.time()
    source = "given"
    if windows is None:
        windows, source = heldout_windows(model, text_path, positions)
    t_q = time.time()
    if qm is None:
        qm = quant.quantize(model)
    t_q = time.time() - t_q
    agree = total = 0
    nll_f, nll_i, n_tgt = 0.0, 0.0, 0
    for ids in windows:
        fl = reference.forward_logits(model, ids).astype(np.float64)
        il = golden.forward_logits(qm, ids)
        take = min(len(ids) - 1, positions - total)      # positions with a next token
        agree += int(np.sum(fl[:take].argmax(1) == il[:take].argmax(1)))
        tgt = np.asarray(ids[1: take + 1])
        lf = _logsoftmax(fl[:take])
        li = _logsoftmax(golden.dequant_logits(qm, il[:take]))
        nll_f -= float(lf[np.arange(take), tgt].sum())
        nll_i -= float(li[np.arange(take), tgt].sum())
        n_tgt += take
        total += take
        if total >= positions:
            break
    ppl_f, ppl_i = float(np.exp(nll_f / n_tgt)), float(np.exp(nll_i / n_tgt))
    return {
        "model": model.name, "positions": total, "text": source,
        "greedy_agreement": agree / total, "ppl_float": ppl_f, "ppl_int": ppl_i,
        "ppl_ratio": ppl_i / ppl_f,
        "targets": {"greedy_agreement": 0.95, "ppl_ratio_max": 1.05},
        "scheme": {"act_bits": dict(qm.act_bits), "kv_bits": qm.kv_bits,
                   "rsqrt_entries": int(qm.rsqrt.shape[0]), "recip_entries": int(qm.recip.shape[0]),
                   "exp_entries": int(qm.exp.shape[0]), "exp_frac": qm.exp_frac,
                   "exp_bits": qm.exp_bits, "calib_tokens": qm.scales.get("calib_tokens"),
                   "percentile": qm.scales.get("percentile")},
        "quantize_seconds": round(t_q, 2), "seconds": round(time.time() - t0, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sw.accuracy", description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--text", default=DEFAULT_TEXT)
    ap.add_argument("--out", default=os.path.join("sim_results", "accuracy.json"))
    a = ap.parse_args(argv)
    from .frontend import load_model
    try:
        model = load_model(a.model)
    except Exception as e:   # one-line reason, no traceback
        print(f"accuracy: cannot load {a.model}: {e}", file=sys.stderr)
        return 2
    r = measure(model, positions=a.positions, text_path=a.text)
    r["model_path"] = a.model
    print(f"model {r['model']}: {r['positions']} teacher-forced positions on {r['text']}")
    print(f"greedy agreement int vs float: {100 * r['greedy_agreement']:.2f}%  (target >= 95%)")
    print(f"perplexity float {r['ppl_float']:.3f}  int {r['ppl_int']:.3f}  "
          f"ratio {r['ppl_ratio']:.4f}  (target <= 1.05)")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(r, fh, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

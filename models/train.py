#!/usr/bin/env python3
"""Train the project's shipped LLaMA-architecture model on the King James Bible.

Reproduce (see models/README.md)::

    pip install -e .[train]                     # torch (CPU) + tokenizers (tokenizers: tests only)
    apt-get install -y bible-kjv                # the corpus (public domain), as root
    python models/prepare_corpus.py             # -> build/corpus/kjv/{train,val,test}.txt
    python models/train.py                      # -> models/kjv-280k/  (~35 min on one CPU thread)

Everything is deterministic: fixed seeds, one CPU thread, ``torch.use_deterministic_algorithms``.
The model is plain torch: RMSNorm, RoPE in Hugging Face's rotate_half layout, grouped-query
attention, SwiGLU MLP, tied input/output embeddings. The output folder is a standard Hugging Face
``LlamaForCausalLM`` folder: ``config.json``, ``model.safetensors`` (fp32, written with numpy),
``tokenizer.json`` (byte-level BPE from ``sw/tokenizer.py``), ``tokenizer_config.json`` and
``training_log.json`` (losses, wall time, seed, train/val/test perplexity, a sample).

After saving, the script reloads ``model.safetensors`` with a numpy reader and checks that a numpy
forward pass of the file's weights gives the torch model's logits (and, if ``transformers`` is
installed, that ``LlamaForCausalLM.from_pretrained`` does too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import struct
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sw.tokenizer import BpeTokenizer, train_bpe  # noqa: E402

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover
    sys.exit("train.py needs torch: pip install -e .[train]")

DEFAULT_CORPUS = os.path.join(ROOT, "build", "corpus", "kjv")
DEFAULT_OUT = os.path.join(ROOT, "models", "kjv-280k")
PROMPT = "And God said"


# ---------------------------------------------------------------------------------------------
# Model (plain torch, LLaMA architecture)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        hd = c["hidden_size"] // c["num_attention_heads"]
        self.hd = hd
        d = c["hidden_size"]
        self.input_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.q_proj = nn.Linear(d, c["num_attention_heads"] * hd, bias=False)
        self.k_proj = nn.Linear(d, c["num_key_value_heads"] * hd, bias=False)
        self.v_proj = nn.Linear(d, c["num_key_value_heads"] * hd, bias=False)
        self.o_proj = nn.Linear(c["num_attention_heads"] * hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.gate_proj = nn.Linear(d, c["intermediate_size"], bias=False)
        self.up_proj = nn.Linear(d, c["intermediate_size"], bias=False)
        self.down_proj = nn.Linear(c["intermediate_size"], d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        H, KV, hd = self.c["num_attention_heads"], self.c["num_key_value_heads"], self.hd
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, H, hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, KV, hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, KV, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # GQA as in HF repeat_kv: KV head j serves query heads j*n_rep .. (j+1)*n_rep-1
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(B, T, H * hd))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        hd = c["hidden_size"] // c["num_attention_heads"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        f = torch.outer(torch.arange(c["max_position_embeddings"], dtype=torch.float64), inv)
        emb = torch.cat((f, f), dim=-1)
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)

    def init_weights(self, seed):
        g = torch.Generator().manual_seed(seed)
        std = 0.02
        resid_std = std / math.sqrt(2 * self.c["num_hidden_layers"])
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.ndim == 1:
                    p.fill_(1.0)
                elif name.endswith(("o_proj.weight", "down_proj.weight")):
                    p.normal_(0.0, resid_std, generator=g)
                else:
                    p.normal_(0.0, std, generator=g)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.embed_tokens(idx)
        cos, sin = self.cos[:T], self.sin[:T]
        for layer in self.layers:
            x = layer(x, cos, sin)
        return F.linear(self.norm(x), self.embed_tokens.weight)  # tied LM head


# ---------------------------------------------------------------------------------------------
# Data


def load_split(corpus, split, tok):
    path = os.path.join(corpus, f"{split}.txt")
    if not os.path.exists(path):
        sys.exit(f"train.py: {path} is missing; run: python models/prepare_corpus.py "
                 f"(needs: apt-get install -y bible-kjv)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    chapters = [c for c in text.split("\n\n") if c.strip()]
    ids = []
    for ch in chapters:
        ids.append(tok.bos_id)
        ids.extend(tok.encode(ch.strip("\n")))
        ids.append(tok.eos_id)
    return text, np.asarray(ids, dtype=np.int64), len(chapters)


def windows(stream, ctx):
    """Non-overlapping (input, target) windows of length ctx covering the stream."""
    n = (len(stream) - 1) // ctx
    x = stream[: n * ctx].reshape(n, ctx)
    y = stream[1: n * ctx + 1].reshape(n, ctx)
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def evaluate(model, stream, ctx, max_windows=None, bs=16):
    model.eval()
    x, y = windows(stream, ctx)
    if max_windows is not None:
        x, y = x[:max_windows], y[:max_windows]
    tot, n = 0.0, 0
    for i in range(0, len(x), bs):
        logits = model(x[i:i + bs])
        tot += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + bs].reshape(-1),
                               reduction="sum").item()
        n += y[i:i + bs].numel()
    model.train()
    return tot / n, n


@torch.no_grad()
def greedy(model, ids, n_new, max_len):
    model.eval()
    ids = list(ids)
    for _ in range(n_new):
        logits = model(torch.tensor([ids[-max_len:]]))
        ids.append(int(logits[0, -1].argmax()))
    model.train()
    return ids


# ---------------------------------------------------------------------------------------------
# Export


HF_NAMES = {"input_layernorm.weight": "input_layernorm.weight",
            "q_proj.weight": "self_attn.q_proj.weight", "k_proj.weight": "self_attn.k_proj.weight",
            "v_proj.weight": "self_attn.v_proj.weight", "o_proj.weight": "self_attn.o_proj.weight",
            "post_attention_layernorm.weight": "post_attention_layernorm.weight",
            "gate_proj.weight": "mlp.gate_proj.weight", "up_proj.weight": "mlp.up_proj.weight",
            "down_proj.weight": "mlp.down_proj.weight"}


def hf_state(model):
    out = {"model.embed_tokens.weight": model.embed_tokens.weight, "model.norm.weight": model.norm.weight}
    for i, layer in enumerate(model.layers):
        for ours, theirs in HF_NAMES.items():
            out[f"model.layers.{i}.{theirs}"] = layer.get_parameter(ours)
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in out.items()}


def write_safetensors(path, tensors, metadata=None):
    header, off = {}, 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name in sorted(tensors):
            f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        assert h["dtype"] == "F32", h
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(data[base + a: base + b], dtype="<f4").reshape(h["shape"])
    return out


def numpy_forward(w, c, ids):
    """Independent numpy forward of a HF Llama state dict: logits for every position."""
    d, H, KV = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd, eps, T = d // H, c["rms_norm_eps"], len(ids)
    def rms(x, g):
        return g * (x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps))
    inv = 1.0 / (c["rope_theta"] ** (np.arange(0, hd, 2) / hd))
    ang = np.outer(np.arange(T), inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    def rope(x):  # (T, heads, hd)
        rh = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos[:, None] + rh * sin[:, None]
    x = w["model.embed_tokens.weight"][ids].astype(np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope((h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, hd))
        k = rope((h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, KV, hd))
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, KV, hd)
        att = np.empty((T, H, hd))
        for hh in range(H):
            kv = hh // (H // KV)
            s = q[:, hh] @ k[:, kv].T / math.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + att.reshape(T, H * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ \
            w[p + "mlp.down_proj.weight"].T
    return rms(x, w["model.norm.weight"]) @ w["model.embed_tokens.weight"].T


def hf_config(c, tok):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": c["hidden_size"], "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"],
        "head_dim": c["hidden_size"] // c["num_attention_heads"],
        "vocab_size": c["vocab_size"], "max_position_embeddings": c["max_position_embeddings"],
        "rms_norm_eps": c["rms_norm_eps"], "rope_theta": c["rope_theta"], "rope_scaling": None,
        "tie_word_embeddings": True, "hidden_act": "silu", "attention_bias": False,
        "attention_dropout": 0.0, "mlp_bias": False, "initializer_range": 0.02,
        "pretraining_tp": 1, "use_cache": True,
        "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "torch_dtype": "float32",
    }


def verify_export(out, model, c, ids):
    """Reload the saved folder and check it reproduces the torch model's logits."""
    w = read_safetensors(os.path.join(out, "model.safetensors"))
    with torch.no_grad():
        model.eval()
        ref = model(torch.tensor([ids]))[0].double().numpy()
        model.train()
    got = numpy_forward(w, c, ids)
    err = float(np.abs(got - ref).max())
    if err > 1e-3:
        raise SystemExit(f"train.py: numpy forward of the saved weights differs from torch by {err}")
    result = {"numpy_max_abs_logit_err": err}
    try:
        from transformers import LlamaForCausalLM  # optional: pip install -e .[hf]
    except ImportError:
        result["transformers"] = "not installed; skipped"
        return result
    hf = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
        hl = hf(torch.tensor([ids])).logits[0].double().numpy()
    herr = float(np.abs(hl - ref).max())
    if herr > 1e-3:
        raise SystemExit(f"train.py: transformers' LlamaForCausalLM differs from torch by {herr}")
    result["transformers_max_abs_logit_err"] = herr
    return result


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train the shipped KJV LLaMA model (1 CPU thread).")
    ap.add_argument("--corpus", default=DEFAULT_CORPUS)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=256, help="training context length")
    ap.add_argument("--short-ctx", type=int, default=128,
                    help="if set, train the first steps at this context (same tokens per step: "
                         "batch scaled up), the last --long-frac of the steps at --ctx")
    ap.add_argument("--long-frac", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-windows", type=int, default=None,
                    help="limit evaluation to this many windows per split (smoke runs)")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--max-pos", type=int, default=256)
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()

    # tokenizer: trained on the training split only
    with open(os.path.join(args.corpus, "train.txt"), encoding="utf-8") if os.path.exists(
            os.path.join(args.corpus, "train.txt")) else open(os.devnull) as f:
        train_text = f.read()
    if not train_text:
        sys.exit(f"train.py: {args.corpus}/train.txt is missing or empty; run: "
                 f"python models/prepare_corpus.py (needs: apt-get install -y bible-kjv)")
    tok = train_bpe(train_text, args.vocab, special_tokens=("<s>", "</s>"))
    _, train_ids, n_tr = load_split(args.corpus, "train", tok)
    _, val_ids, n_va = load_split(args.corpus, "val", tok)
    _, test_ids, n_te = load_split(args.corpus, "test", tok)
    print(f"tokenizer: {tok}; tokens: train {len(train_ids)} ({n_tr} chapters), val "
          f"{len(val_ids)}, test {len(test_ids)}; {len(train_text.encode()) / len(train_ids):.2f} "
          f"bytes/token; {time.time() - t_start:.1f}s", flush=True)

    c = {"hidden_size": args.dim, "intermediate_size": args.hidden,
         "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
         "num_key_value_heads": args.kv_heads, "vocab_size": tok.vocab_size,
         "max_position_embeddings": args.max_pos, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
    assert args.ctx <= args.max_pos
    model = Llama(c)
    model.init_weights(args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {c}; {n_params} parameters", flush=True)

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        lo = args.lr * args.min_lr_frac
        return lo + 0.5 * (args.lr - lo) * (1 + math.cos(math.pi * min(1.0, t)))

    rng = np.random.default_rng(args.seed)
    hi = len(train_ids) - args.ctx - 1
    log = {"loss": [], "val": []}
    t_train = time.time()
    smooth = None
    long_from = round(args.steps * (1 - args.long_frac)) if args.short_ctx else 0
    for step in range(args.steps):
        if step < long_from:
            ctx, bs = args.short_ctx, args.batch * args.ctx // args.short_ctx
        else:
            ctx, bs = args.ctx, args.batch
        starts = rng.integers(0, hi, size=bs)
        xb = torch.from_numpy(np.stack([train_ids[s:s + ctx] for s in starts]))
        yb = torch.from_numpy(np.stack([train_ids[s + 1:s + ctx + 1] for s in starts]))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(xb)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = loss.item()
        smooth = lv if smooth is None else 0.98 * smooth + 0.02 * lv
        if step % args.log_every == 0 or step == args.steps - 1:
            el = time.time() - t_train
            log["loss"].append([step, round(lv, 5)])
            print(f"step {step:6d}  loss {lv:.4f}  (smoothed {smooth:.4f})  lr {lr_at(step):.2e}  "
                  f"{el:7.1f}s  {el / (step + 1) * 1000:.0f} ms/step", flush=True)
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            vl, _ = evaluate(model, val_ids, args.max_pos, args.eval_windows)
            log["val"].append([step + 1, round(vl, 5)])
            print(f"  val loss {vl:.4f}  ppl {math.exp(vl):.2f}", flush=True)
    train_seconds = time.time() - t_train

    # final evaluation: per-token perplexity over whole splits, non-overlapping 256-token windows
    n_eval = args.eval_windows
    val_loss, val_n = evaluate(model, val_ids, args.max_pos, n_eval)
    test_loss, test_n = evaluate(model, test_ids, args.max_pos, n_eval)
    # training-set perplexity on as many windows as the validation split has (same estimator)
    tr_loss, tr_n = evaluate(model, train_ids, args.max_pos,
                             n_eval if n_eval is not None else (len(val_ids) - 1) // args.max_pos)
    prompt_ids = [tok.bos_id] + tok.encode(PROMPT)
    out_ids = greedy(model, prompt_ids, 80, args.max_pos)
    sample = tok.decode(out_ids)
    print(f"train ppl {math.exp(tr_loss):.2f}  val ppl {math.exp(val_loss):.2f}  "
          f"test ppl {math.exp(test_loss):.2f}", flush=True)
    print(f"greedy sample: {sample!r}", flush=True)

    # save the Hugging Face folder
    os.makedirs(args.out, exist_ok=True)
    cfg = hf_config(c, tok)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(args.out, "model.safetensors"), hf_state(model))
    tok.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                   "eos_token": "</s>", "add_bos_token": False, "add_eos_token": False,
                   "clean_up_tokenization_spaces": False, "model_max_length": args.max_pos}, f,
                  indent=2)
        f.write("\n")
    check = verify_export(args.out, model, c, out_ids[: args.max_pos])
    print(f"export check: {check}", flush=True)
    log_out = {
        "model": os.path.basename(os.path.normpath(args.out)), "n_params": n_params,
        "config": c, "seed": args.seed,
        "corpus": "King James Bible, Debian packages bible-kjv/bible-kjv-text (public domain); "
                  "chapters k%20==7 -> val, k%20==17 -> test, rest -> train",
        "tokens": {"train": int(len(train_ids)), "val": int(len(val_ids)),
                   "test": int(len(test_ids))},
        "tokenizer": {"vocab_size": tok.vocab_size, "merges": len(tok.merges),
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id,
                      "train_bytes_per_token": round(len(train_text.encode()) / len(train_ids), 4)},
        "hyperparameters": {"steps": args.steps, "batch": args.batch, "ctx": args.ctx,
                            "short_ctx": args.short_ctx or None,
                            "short_ctx_steps": long_from,
                            "tokens_per_step": args.batch * args.ctx, "lr": args.lr,
                            "min_lr_frac": args.min_lr_frac, "warmup": args.warmup,
                            "weight_decay": args.weight_decay, "betas": [0.9, 0.95],
                            "grad_clip": 1.0, "schedule": "linear warmup + cosine"},
        "wall_seconds_train": round(train_seconds, 1),
        "wall_seconds_total": round(time.time() - t_start, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "eval": {"method": f"per-token mean NLL over non-overlapping {args.max_pos}-token "
                           f"windows of the whole split (train: first windows, same count as val)",
                 "train_loss": round(tr_loss, 5), "train_ppl": round(math.exp(tr_loss), 3),
                 "train_tokens": tr_n,
                 "val_loss": round(val_loss, 5), "val_ppl": round(math.exp(val_loss), 3),
                 "val_tokens": val_n,
                 "test_loss": round(test_loss, 5), "test_ppl": round(math.exp(test_loss), 3),
                 "test_tokens": test_n},
        "sample": {"prompt": PROMPT, "method": "greedy, BOS + prompt, 80 new tokens",
                   "text": sample},
        "export_check": check,
        "loss_curve": log["loss"], "val_curve": log["val"],
    }
    with open(os.path.join(args.out, "training_log.json"), "w") as f:
        json.dump(log_out, f, indent=1)
        f.write("\n")
    print(f"saved {args.out} ({time.time() - t_start:.0f}s total)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

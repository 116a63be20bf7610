"""``rdu model info`` and ``rdu generate``: the software-model entry points of the CLI."""

from __future__ import annotations

import importlib

from sw.cli import UserError, command
from sw.frontend import ModelFormatError, load_model

__all__ = ["decode_traffic", "parse_ids", "WEIGHT_BYTES", "SCALE_BYTES", "NORM_BYTES",
           "kv_bytes"]

# Storage assumed for the int8 inference model (DESIGN.md section 4). The KV element size comes
# from the quantiser when it defines one (sw.quant.KV_BYTES), else int8.
WEIGHT_BYTES = 1      # int8 weights (projections, MLP, LM head, embedding rows)
SCALE_BYTES = 4       # one int32/float32 scale (requant multiplier) per weight output channel
NORM_BYTES = 2        # RMSNorm weights as int16


def kv_bytes() -> int:
    try:
        from sw.quant import KV_BYTES
    except ImportError:
        return 1
    return int(KV_BYTES)


def decode_traffic(config, context: int) -> dict:
    """HBM bytes read to decode one token at batch 1 with ``context`` cached positions.

    Returns a breakdown dict (``layers``, ``lm_head``, ``embedding_row``, ``final_norm``,
    ``kv_cache``, ``total``) plus ``weights_stored`` (the int8 model's whole footprint) and
    ``kv_stored`` (KV cache at max_seq_len).
    """
    c = config
    q_out, kv = c.n_heads * c.head_dim, c.kv_dim
    mat = c.dim * q_out + 2 * c.dim * kv + q_out * c.dim + 3 * c.dim * c.hidden_dim
    rows = q_out + 2 * kv + c.dim + 2 * c.hidden_dim + c.dim
    per_layer = mat * WEIGHT_BYTES + rows * SCALE_BYTES + 2 * c.dim * NORM_BYTES
    layers = c.n_layers * per_layer
    lm_head = c.vocab_size * (c.dim * WEIGHT_BYTES + SCALE_BYTES)
    emb_row = c.dim * WEIGHT_BYTES + SCALE_BYTES
    final_norm = c.dim * NORM_BYTES
    kvb = kv_bytes()
    kv_cache = 2 * c.n_layers * kv * context * kvb
    total = layers + lm_head + emb_row + final_norm + kv_cache
    emb_table = 0 if c.tie_embeddings else c.vocab_size * (c.dim * WEIGHT_BYTES + SCALE_BYTES)
    return {"layers": layers, "lm_head": lm_head, "embedding_row": emb_row,
            "final_norm": final_norm, "kv_cache": kv_cache, "total": total,
            "kv_bytes": kvb,
            "weights_stored": layers + lm_head + emb_table + final_norm,
            "kv_stored": 2 * c.n_layers * kv * c.max_seq_len * kvb}


def _load(path):
    try:
        return load_model(path)
    except ModelFormatError as e:
        raise UserError(str(e)) from None


def _fmt_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n:,} B ({n / (1 << 20):.2f} MiB)"
    if n >= 1 << 10:
        return f"{n:,} B ({n / (1 << 10):.1f} KiB)"
    return f"{n:,} B"


@command("model info", "print a model's shape, size and HBM roofline")
def _model_info(p):
    p.add_argument("model", metavar="MODEL", help="Hugging Face folder or llama2.c .bin")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help="KV-cache positions read per token (default: the model's max context)")

    def run(args):
        from hdl.params import DEFAULT_PARAMS as P
        m = _load(args.model)
        c = m.config
        ctx = c.max_seq_len if args.context is None else args.context
        if ctx < 0 or ctx > c.max_seq_len:
            raise UserError(f"--context must be between 0 and the model's max context "
                            f"{c.max_seq_len}, got {ctx}")
        t = decode_traffic(c, ctx)
        peak = P.hbm_peak_bytes_per_cycle
        tok = m.tokenizer
        tok_s = "none" if tok is None else f"{type(tok).__name__}, {tok.vocab_size} tokens"
        lines = [
            f"name:          {m.name}",
            f"format:        {m.meta.get('format', '?')}  ({m.meta.get('path', args.model)})",
            f"tokenizer:     {tok_s}",
            f"shape:         dim {c.dim}, layers {c.n_layers}, heads {c.n_heads}, kv heads "
            f"{c.n_kv_heads}, head dim {c.head_dim}, hidden {c.hidden_dim}, vocab "
            f"{c.vocab_size}, max context {c.max_seq_len}, "
            f"{'tied' if c.tie_embeddings else 'untied'} embeddings",
            f"norm eps:      {c.norm_eps:g}, rope theta {c.rope_theta:g}",
            f"parameters:    {m.n_params():,}",
            f"int8 model:    {_fmt_bytes(t['weights_stored'])} of weights + "
            f"{_fmt_bytes(t['kv_stored'])} KV cache at max context; HBM holds "
            f"{_fmt_bytes(P.hbm_bytes)}"
            + ("" if t["weights_stored"] + t["kv_stored"] <= P.hbm_bytes else "  (DOES NOT FIT)"),
            f"HBM bytes read per decoded token (batch 1, context {ctx}):",
            f"  layer weights  {t['layers']:>12,}   int8 weights, {SCALE_BYTES}-byte scale per "
            f"output channel, int16 norms",
            f"  LM head        {t['lm_head']:>12,}   int8 + per-row scales",
            f"  embedding row  {t['embedding_row']:>12,}",
            f"  final norm     {t['final_norm']:>12,}",
            f"  KV cache       {t['kv_cache']:>12,}   K and V, {t['kv_bytes']} byte(s) per "
            f"element, {c.n_layers} layers x {ctx} positions x {c.kv_dim}",
            f"  total          {t['total']:>12,}",
            f"HBM roofline:  {1000 * peak / t['total']:.3f} tokens per 1,000 cycles "
            f"(peak {peak} B/cycle = {P.hbm_channels} channels x {P.hbm_bytes_per_cycle} B; "
            f"{peak * P.clock_mhz * 1e6 / t['total']:,.0f} tokens/s at {P.clock_mhz} MHz)",
        ]
        print("\n".join(lines))
        return 0
    return run


def parse_ids(text: str, vocab_size: int, what: str = "--prompt-ids") -> list[int]:
    """'1,2,3' (commas and/or spaces) -> [1, 2, 3], each checked against the vocabulary."""
    parts = [s for s in text.replace(",", " ").split()]
    if not parts:
        raise UserError(f"{what} is empty")
    ids = []
    for s in parts:
        try:
            v = int(s)
        except ValueError:
            raise UserError(f"{what}: {s!r} is not an integer token id") from None
        if not 0 <= v < vocab_size:
            raise UserError(f"{what}: token id {v} is outside the vocabulary (0..{vocab_size - 1})")
        ids.append(v)
    return ids


def prompt_ids(m, prompt: str | None, ids_text: str | None, tokens: int) -> list[int]:
    """The prompt's token ids (``--prompt`` text with BOS, or ``--prompt-ids``), checked
    against the vocabulary and, with ``tokens`` generated, the model's context."""
    c = m.config
    tok = m.tokenizer
    if prompt is not None:
        if tok is None:
            raise UserError(f"model {m.name} has no tokenizer; give the prompt as token ids "
                            f"with --prompt-ids")
        try:
            ids = list(tok.encode(prompt))
        except ValueError as e:
            raise UserError(f"cannot encode the prompt: {e}") from None
        if tok.bos_id is not None:
            ids = [tok.bos_id] + ids
        if not ids:
            raise UserError("the prompt is empty")
        bad = [i for i in ids if not 0 <= i < c.vocab_size]
        if bad:
            raise UserError(f"the tokenizer produced id {bad[0]}, outside the model's "
                            f"vocabulary (0..{c.vocab_size - 1})")
    else:
        ids = parse_ids(ids_text, c.vocab_size)
    # the last generated token is never fed back, so it needs no KV-cache slot
    if len(ids) + tokens - 1 > c.max_seq_len:
        raise UserError(f"prompt ({len(ids)} tokens) + --tokens {tokens} exceeds the "
                        f"model's max context {c.max_seq_len}")
    return ids


_ENGINES = {"float": "sw.reference", "int": "sw.golden"}


def _engine_generate(engine: str):
    mod_name = _ENGINES[engine]
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            raise UserError(f"--engine {engine} needs {mod_name}, which is not in this "
                            f"checkout yet") from None
        raise
    fn = getattr(mod, "generate", None)
    if fn is None:
        raise UserError(f"--engine {engine}: {mod_name} has no generate()")
    return fn


@command("generate", "greedy text generation with the float or integer software model")
def _generate(p):
    p.add_argument("model", metavar="MODEL", help="Hugging Face folder or llama2.c .bin")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", metavar="TEXT", help="prompt text (needs the model's tokenizer)")
    g.add_argument("--prompt-ids", metavar="IDS", help="prompt token ids, e.g. 1,2,3")
    p.add_argument("--tokens", type=int, required=True, metavar="N", help="tokens to generate")
    p.add_argument("--engine", choices=sorted(_ENGINES), default="float",
                   help="float reference or integer golden model (default: float)")
    p.add_argument("--ids", action="store_true", help="also print the token ids")

    def run(args):
        if args.tokens < 1:
            raise UserError(f"--tokens must be at least 1, got {args.tokens}")
        m = _load(args.model)
        ids = prompt_ids(m, args.prompt, args.prompt_ids, args.tokens)
        generate = _engine_generate(args.engine)
        try:
            out = [int(t) for t in generate(m, ids, args.tokens)]
        except (ValueError, ModelFormatError) as e:
            raise UserError(f"--engine {args.engine}: {e}") from None
        tok = m.tokenizer
        if tok is not None:
            print(tok.decode(ids + out))
        if args.ids or tok is None:
            print("prompt ids:    " + ",".join(map(str, ids)))
            print("generated ids: " + ",".join(map(str, out)))
        return 0
    return run

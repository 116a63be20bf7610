"""A compiled decode: the HBM map of a quantised model and the kernel calls of every token.

Contract
--------
:func:`compile_decode` turns a :class:`sw.quant.QuantModel` into a :class:`DecodeProgram` for
one :class:`hdl.params.RduParams` and mode:

- ``images()``: the HBM image the host loads once (constants of every kernel, tables, the
  embedding, a zero KV cache), as ``(byte address, bytes)`` pairs;
- ``token_calls(pos, token)``: the kernel calls of one decode step at position ``pos`` for input
  ``token``, in order; each :class:`Call` is one launch (a bitstream, the units to start, the
  sequencer iteration = the layer, a watchdog) and names the golden-trace tensor its output
  holds, so a checking runtime can read it back and compare;
- ``next_token``: where the step leaves the greedy next token (int32, lane 0 of one beat);
- ``report()``: the mapping report (units per kernel, routes, HBM map, bytes per token).

Modes: ``op`` (one kernel per pattern, each launch reconfigures the fabric; every activation
goes through HBM). ``layer`` and ``looped`` (fused layer kernels) are not built yet: asking for
them is a :class:`CompileError` that says so.

HBM map (increasing addresses, every region burst-aligned)::

    io           next token (one beat)
    activations  x, h, q16, k16, v8, q_rot, k_rot, e (context beats), sums, attn_out, a,
                 g8, u16, mid, logits  (one buffer each, reused by every layer)
    tables       RoPE cos/sin rows (shared by all layers, indexed by position)
    embedding    int16 rows padded to whole beats
    layer block  block l at layers_base + l * layer_stride: the constants blob of every
                 per-layer kernel (norm1, wq, wk, wv, rope_q, rope_k, attn, wsum, wo, norm2,
                 gate, up, swiglu, down), each at the same offset in every block
    final        final-norm blob, LM-head blob
    KV cache     layer l at kv_base + l * kv_layer_stride: K cache, then V cache

Per-layer kernels are built once, with ``Ref(block offset, layer_stride)`` operands, and
launched at sequencer iteration ``l`` for layer ``l`` (their AGCUs add ``l * stride``).
Kernels that depend on the position (RoPE, KV append, attention) are built per position and
cached; the embedding kernel per token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hdl.params import DEFAULT_PARAMS, RduParams
from sw.kernels.kernel import DecodeKernel, Ref
from sw.quant import QuantModel

__all__ = ["CompileError", "Call", "DecodeProgram", "compile_decode", "MODES"]

MODES = ("op", "layer", "looped")


class CompileError(ValueError):
    """The model cannot be compiled for this chip in this mode; the message says what to change."""


def _up(v: int, a: int) -> int:
    return -(-v // a) * a


@dataclass
class Call:
    """One kernel launch of a decode step."""
    label: str                    # e.g. "l3.wq"
    kernel: DecodeKernel
    iteration: int = 0            # sequencer iteration (the layer for per-layer kernels)
    count: int = 1
    trace: tuple | None = None    # (golden trace name, layer) of the output, for checking
    output: tuple | None = None   # (byte address, nbytes, element bits, elements) read back

    @property
    def bitstream(self) -> bytes:
        return self.kernel.to_bytes()


class _Alloc:
    def __init__(self, p: RduParams, base: int = 0):
        self.p = p
        self.align = p.beat_bytes * p.hbm_burst_beats
        self.next = base
        self.regions: list[tuple[str, str, int, int]] = []      # (name, group, addr, nbytes)

    def take(self, name: str, group: str, nbytes: int) -> int:
        addr = _up(self.next, self.align)
        self.next = addr + _up(max(nbytes, 1), self.align)
        self.regions.append((name, group, addr, nbytes))
        return addr


@dataclass
class DecodeProgram:
    qm: QuantModel
    params: RduParams
    mode: str
    context: int
    act: dict                              # activation name -> byte address
    act_bytes: dict                        # activation name -> bytes
    layer_base: int
    layer_stride: int
    blob_offsets: dict                     # per-layer blob name -> offset in a layer block
    final: dict                            # final blob name -> address
    emb_base: int
    emb_row_bytes: int
    rope_tables: int
    kv_base: int
    kv_layer_stride: int
    kv_row_bytes: int
    hbm_end: int
    regions: list
    _images: list = field(default_factory=list, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)
    compile_seconds: float = 0.0

    # ---- addresses ------------------------------------------------------------------------
    @property
    def next_token(self) -> int:
        return self.act["next"]

    def blob(self, name: str) -> Ref:
        return Ref(self.layer_base + self.blob_offsets[name], self.layer_stride)

    @property
    def kv(self) -> Ref:
        return Ref(self.kv_base, self.kv_layer_stride)

    def a(self, name: str) -> Ref:
        return Ref(self.act[name])

    def images(self) -> list[tuple[int, bytes]]:
        return list(self._images)

    # ---- kernels ----------------------------------------------------------------------------
    def _kernel(self, key, make) -> DecodeKernel:
        k = self._cache.get(key)
        if k is None:
            from sw.kernels.builder import KernelError
            from sw.kernels.patterns import PatternError
            try:
                k = self._cache[key] = make()
            except (PatternError, KernelError) as e:
                what = " ".join(str(x) for x in key)
                raise CompileError(f"the {what} kernel cannot be built for this model on this "
                                   f"chip: {e}") from None
        return k

    def token_calls(self, pos: int, token: int) -> list[Call]:
        """The kernel launches of the decode step at ``pos`` for input ``token``."""
        from sw.kernels.attention import build_attn_softmax
        from sw.kernels.attn_wsum import build_attn_wsum
        from sw.kernels.gemv import build_decode_gemv
        from sw.kernels.patterns import (argmax_kernel, embed_kernel, residual_kernel,
                                         swiglu_kernel)
        from sw.kernels.rmsnorm import build_rmsnorm
        from sw.kernels.rope import build_kv_append, build_rope

        qm, c, p = self.qm, self.qm.config, self.params
        token = c.check_step(pos, token)
        L, hd, nh, nkv = c.n_layers, c.head_dim, c.n_heads, c.n_kv_heads
        dim, hid, voc = c.dim, c.hidden_dim, c.vocab_size
        ab = qm.act_bits
        A = self.a

        def norm(which, const):
            return lambda: build_rmsnorm(
                p, dim=dim, x=A("x"), const=const, out=A("h"), ss_shift=qm.ss_shift,
                eps_int=qm.eps_int, rsqrt_bits=qm.rsqrt_bits, out_bits=ab[which],
                iterations=L if which != "norm_final" else 1, name=which)

        def gemv(name, rows, cols, x, y, x_bits, out_bits, w, iterations):
            return lambda: build_decode_gemv(
                p, rows=rows, cols=cols, x_bits=x_bits, out_bits=out_bits, w=w, x=A(x), y=A(y),
                iterations=iterations, name=name)

        K = self._kernel
        out = []

        def call(label, kernel, layer, trace, act_name, bits, n):
            out.append(Call(label, kernel, iteration=max(layer, 0),
                            trace=(trace, layer) if trace else None,
                            output=(self.act[act_name], self.act_bytes[act_name], bits, n)
                            if act_name else None))

        out.append(Call("embed", embed_kernel(p, dim=dim, table=Ref(self.emb_base), token=token,
                                              out=A("x")),
                        output=(self.act["x"], self.act_bytes["x"], 16, dim), trace=("x", -1)))
        kq = K(("gemv", "wq"), gemv("wq", nh * hd, dim, "h", "q16", 8, 16, self.blob("wq"), L))
        kk = K(("gemv", "wk"), gemv("wk", nkv * hd, dim, "h", "k16", 8, 16, self.blob("wk"), L))
        kv = K(("gemv", "wv"), gemv("wv", nkv * hd, dim, "h", "v8", 8, 8, self.blob("wv"), L))
        ko = K(("gemv", "wo"), gemv("wo", dim, nh * hd, "attn_out", "a", ab["attn_out"], 16,
                                   self.blob("wo"), L))
        kg = K(("gemv", "gate"), gemv("gate", hid, dim, "h", "g8", 8, 8, self.blob("gate"), L))
        ku = K(("gemv", "up"), gemv("up", hid, dim, "h", "u16", 8, 16, self.blob("up"), L))
        kd = K(("gemv", "down"), gemv("down", dim, hid, "mid", "a", ab["mid"], 16,
                                     self.blob("down"), L))
        kn1 = K(("norm", 1), norm("norm_attn", self.blob("norm1")))
        kn2 = K(("norm", 2), norm("norm_ffn", self.blob("norm2")))
        kres = K(("residual",), lambda: residual_kernel(p, dim=dim, x=A("x"), y=A("a"),
                                                        out=A("x")))
        ksw = K(("swiglu",), lambda: swiglu_kernel(
            p, hidden=hid, out_bits=ab["mid"], g8=A("g8"), u16=A("u16"),
            const=self.blob("swiglu"), out=A("mid"), iterations=L))
        krq = K(("rope", "q", pos), lambda: build_rope(
            p, n_heads=nh, head_dim=hd, x16=A("q16"), out=A("q_rot"), tables=Ref(self.rope_tables),
            const=self.blob("rope_q"), pos=pos, out_bits=ab["q_rot"], iterations=L, name="rope_q"))
        krk = K(("rope", "k", pos), lambda: build_rope(
            p, n_heads=nkv, head_dim=hd, x16=A("k16"), out=A("k_rot"), tables=Ref(self.rope_tables),
            const=self.blob("rope_k"), pos=pos, out_bits=8, iterations=L, name="rope_k"))
        kapp = K(("kv_append", pos), lambda: build_kv_append(
            p, n_kv_heads=nkv, head_dim=hd, context=self.context, k=A("k_rot"), v=A("v8"),
            kv=self.kv, pos=pos, iterations=L))
        katt = K(("attn", pos), lambda: build_attn_softmax(
            p, n_heads=nh, n_kv_heads=nkv, head_dim=hd, context=self.context, pos=pos,
            q=A("q_rot"), kv=self.kv, const=self.blob("attn"), e=A("e"), sums=A("sums"),
            iterations=L))
        kws = K(("wsum", pos), lambda: build_attn_wsum(
            p, n_heads=nh, n_kv_heads=nkv, head_dim=hd, context=self.context, pos=pos,
            e=A("e"), sums=A("sums"), kv=self.kv, const=self.blob("wsum"), out=A("attn_out"),
            out_bits=ab["attn_out"], iterations=L))
        for l in range(L):
            call(f"l{l}.norm1", kn1, l, "h_attn", "h", 8, dim)
            call(f"l{l}.wq", kq, l, "q", "q16", 16, nh * hd)
            call(f"l{l}.wk", kk, l, "k", "k16", 16, nkv * hd)
            call(f"l{l}.wv", kv, l, "v", "v8", 8, nkv * hd)
            call(f"l{l}.rope_q", krq, l, "q_rot", "q_rot", 8, nh * hd)
            call(f"l{l}.rope_k", krk, l, "k_rot", "k_rot", 8, nkv * hd)
            call(f"l{l}.kv_append", kapp, l, None, None, 0, 0)
            call(f"l{l}.attn", katt, l, None, None, 0, 0)
            call(f"l{l}.wsum", kws, l, "attn_out", "attn_out", ab["attn_out"], nh * hd)
            call(f"l{l}.wo", ko, l, None, "a", 16, dim)
            call(f"l{l}.residual1", kres, l, "x", "x", 16, dim)
            call(f"l{l}.norm2", kn2, l, "h_ffn", "h", 8, dim)
            call(f"l{l}.gate", kg, l, "gate", "g8", 8, hid)
            call(f"l{l}.up", ku, l, "up", "u16", 16, hid)
            call(f"l{l}.swiglu", ksw, l, "mid", "mid", ab["mid"], hid)
            call(f"l{l}.down", kd, l, None, "a", 16, dim)
            call(f"l{l}.residual2", kres, l, "x", "x", 16, dim)
        knf = K(("norm", "f"), lambda: build_rmsnorm(
            p, dim=dim, x=A("x"), const=Ref(self.final["normf"]), out=A("h"),
            ss_shift=qm.ss_shift, eps_int=qm.eps_int, rsqrt_bits=qm.rsqrt_bits,
            out_bits=ab["norm_final"], iterations=1, name="norm_final"))
        klm = K(("gemv", "lm_head"), lambda: build_decode_gemv(
            p, rows=voc, cols=dim, x_bits=8, out_bits=32, w=Ref(self.final["lm_head"]), x=A("h"),
            y=A("logits"), iterations=1, name="lm_head"))
        kam = K(("argmax",), lambda: argmax_kernel(p, vocab=voc, logits=A("logits"),
                                                   out=A("next")))
        call("norm_final", knf, -1, "h_final", "h", 8, dim)
        call("lm_head", klm, -1, "logits", "logits", 32, voc)
        call("argmax", kam, -1, None, None, 0, 0)
        return out

    # ---- report -----------------------------------------------------------------------------
    def report(self) -> str:
        from sw.compiler.layout import fmt_bytes
        c = self.qm.config
        lines = [f"decode program: mode {self.mode}, {c.n_layers} layers, dim {c.dim}, "
                 f"context {self.context}, chip {self.params.grid_rows}x{self.params.grid_cols}",
                 f"HBM used: {fmt_bytes(self.hbm_end)} of {fmt_bytes(self.params.hbm_bytes)}; "
                 f"layer stride {self.layer_stride} B, KV layer stride {self.kv_layer_stride} B",
                 "", "HBM map:"]
        for name, group, addr, n in self.regions:
            lines.append(f"  0x{addr:06x}  {n:>8} B  {group:<11} {name}")
        return "\n".join(lines)


def compile_decode(qm: QuantModel, p: RduParams = DEFAULT_PARAMS, *, mode: str = "op",
                   context: int | None = None) -> DecodeProgram:
    """Lay out ``qm`` in HBM for ``mode`` and build one step's kernels (position 0); kernels of
    other positions are built on demand by ``token_calls``. Raises :class:`CompileError`."""
    from sw.kernels.builder import KernelError
    from sw.kernels.patterns import PatternError
    try:
        return _compile(qm, p, mode, context)
    except (PatternError, KernelError) as e:
        raise CompileError(f"the model cannot be mapped on this chip: {e}") from None


def _compile(qm: QuantModel, p: RduParams, mode: str, context: int | None) -> DecodeProgram:
    from sw.kernels.attention import attn_constants
    from sw.kernels.attn_wsum import wsum_constants
    from sw.kernels.gemv import gemv_constants
    from sw.kernels.patterns import swiglu_blob
    from sw.kernels.rmsnorm import rmsnorm_constants
    from sw.kernels.rope import rope_constants, rope_tables

    t0 = time.monotonic()
    if mode not in MODES:
        raise CompileError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode != "op":
        raise CompileError(f"mode {mode!r}: fused layer kernels are not built yet (only 'op')")
    c = qm.config
    context = c.max_seq_len if context is None else int(context)
    if not 1 <= context <= c.max_seq_len:
        raise CompileError(f"context {context} must be in 1..{c.max_seq_len} (max_seq_len)")
    if c.n_heads > p.lanes:
        raise CompileError(f"{c.n_heads} heads: the attention kernels put one head per lane, the "
                           f"chip has {p.lanes} lanes; use at most {p.lanes} heads")
    if c.vocab_size % p.lanes:
        raise CompileError(f"vocab {c.vocab_size} is not a multiple of the {p.lanes} lanes: the "
                           f"LM head writes whole beats of logits and the argmax reads them, so "
                           f"pad the vocabulary (embedding and LM-head rows) to "
                           f"{_up(c.vocab_size, p.lanes)}")
    bb = p.beat_bytes
    L, hd, nh, nkv = c.n_layers, c.head_dim, c.n_heads, c.n_kv_heads
    al = _Alloc(p)
    act_sizes = {
        "next": bb, "x": 2 * c.dim, "h": c.dim, "q16": 2 * nh * hd, "k16": 2 * nkv * hd,
        "v8": nkv * hd, "q_rot": nh * hd, "k_rot": nkv * hd, "e": context * bb, "sums": bb,
        "attn_out": nh * hd, "a": 2 * c.dim, "g8": c.hidden_dim,
        # SwiGLU runs whole beats of int8 gate channels (64 per beat), so u16 and mid span
        # 2 x roundup(hidden, 64) bytes
        "u16": 2 * _up(c.hidden_dim, bb),
        "mid": _up(c.hidden_dim, bb) * qm.act_bits["mid"] // 8, "logits": 4 * c.vocab_size}
    act = {}
    act_bytes = {}
    for name, n in act_sizes.items():
        if name == "e":
            continue
        if name == "sums":
            # the attention kernel writes sums and e through one AGCU program: sums is the beat
            # right before e (sw/kernels/attention.py)
            base = al.take("sums, e", "activation", bb + act_sizes["e"])
            act["sums"], act["e"] = base, base + bb
            act_bytes["sums"], act_bytes["e"] = bb, act_sizes["e"]
            continue
        act[name] = al.take(name, "activation", _up(n, bb))
        act_bytes[name] = _up(n, bb)
    images = []

    def put(name, group, data: bytes) -> int:
        addr = al.take(name, group, len(data))
        images.append((addr, data))
        return addr

    rope_base = put("rope tables", "table", rope_tables(p, qm))
    row_bytes = _up(2 * c.dim, bb)
    emb = np.zeros((c.vocab_size, row_bytes // 2), "<i2")
    emb[:, : c.dim] = qm.emb
    emb_base = put("embedding", "embedding", emb.tobytes())

    def layer_blobs(l):
        return [
            ("norm1", rmsnorm_constants(p, qm, qm.norm1_m[l], qm.norm1_s[l])),
            ("wq", gemv_constants(p, qm.wq[l], qm.wq_m[l], qm.wq_s[l])),
            ("wk", gemv_constants(p, qm.wk[l], qm.wk_m[l], qm.wk_s[l])),
            ("wv", gemv_constants(p, qm.wv[l], qm.wv_m[l], qm.wv_s[l])),
            ("rope_q", rope_constants(p, qm.rope_q_m[l], qm.rope_q_s[l])),
            ("rope_k", rope_constants(p, qm.rope_k_m[l], qm.rope_k_s[l])),
            ("attn", attn_constants(p, qm, l)),
            ("wsum", wsum_constants(p, qm, l)),
            ("wo", gemv_constants(p, qm.wo[l], qm.wo_m[l], qm.wo_s[l])),
            ("norm2", rmsnorm_constants(p, qm, qm.norm2_m[l], qm.norm2_s[l])),
            ("gate", gemv_constants(p, qm.w_gate[l], qm.w_gate_m[l], qm.w_gate_s[l])),
            ("up", gemv_constants(p, qm.w_up[l], qm.w_up_m[l], qm.w_up_s[l])),
            ("swiglu", swiglu_blob(p, qm.silu[l], qm.mid_m[l], qm.mid_s[l], c.hidden_dim)),
            ("down", gemv_constants(p, qm.w_down[l], qm.w_down_m[l], qm.w_down_s[l])),
        ]

    blobs = [layer_blobs(l) for l in range(L)]
    offsets, off = {}, 0
    for name, data in blobs[0]:
        offsets[name] = off
        off = _up(off + len(data), al.align)
    period = al.align * p.hbm_channels
    stride = _up(off, period)
    layer_base = _up(al.next, period)
    for l in range(L):
        for (name, data), (name0, data0) in zip(blobs[l], blobs[0]):
            if len(data) != len(data0):
                raise CompileError(f"layer {l} blob {name} is {len(data)} B, layer 0's "
                                   f"{len(data0)} B: layers must be identical in shape")
            addr = layer_base + l * stride + offsets[name]
            images.append((addr, data))
        al.regions.append((f"layer {l} block", "layer", layer_base + l * stride, stride))
    al.next = layer_base + L * stride
    final = {"normf": put("final norm", "final",
                          rmsnorm_constants(p, qm, qm.normf_m, qm.normf_s)),
             "lm_head": put("lm_head", "final",
                            gemv_constants(p, qm.lm_head, qm.lm_head_m, qm.lm_head_s))}
    kv_dim = nkv * hd
    kv_row = (1 << (kv_dim - 1).bit_length()) if kv_dim < bb else _up(kv_dim, bb)
    cache = _up(context * kv_row, bb)
    kv_stride = _up(2 * cache, period)
    kv_base = _up(al.next, period)
    for l in range(L):
        al.regions.append((f"layer {l} K, V cache", "kv", kv_base + l * kv_stride, 2 * cache))
    end = kv_base + L * kv_stride
    if end > p.hbm_bytes:
        raise CompileError(f"the model needs {end} B of HBM ({L} layers x {stride} B of "
                           f"constants, KV {L} x {kv_stride} B); the chip has {p.hbm_bytes} B: "
                           f"raise RduParams.hbm_bytes or shorten the context")
    images.append((kv_base, bytes(L * kv_stride)))
    prog = DecodeProgram(qm, p, mode, context, act, act_bytes, layer_base, stride, offsets,
                         final, emb_base, row_bytes, rope_base, kv_base, kv_stride, kv_row, end,
                         al.regions, images)
    # Build one whole step now (position 0), so a pattern that cannot map this shape fails at
    # compile time, naming the kernel; position-dependent kernels are rebuilt per position.
    prog.token_calls(0, 0)
    prog.compile_seconds = time.monotonic() - t0
    return prog

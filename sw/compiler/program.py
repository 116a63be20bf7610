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
- ``token_launches(pos, token)``: the *host launches* of the step in the program's mode: op
  mode = ``token_calls``; layer/looped = the embedding :class:`Call` and
  :class:`ProgramLaunch` es of on-chip programs (below);
- ``next_token``: where the step leaves the greedy next token (int32, lane 0 of one beat);
- ``report()``: the mapping report (units per kernel, routes, HBM map, bytes per token).

Modes
    ``op``: one kernel per pattern, each launch reconfigures the fabric from the host; every
    activation goes through HBM. 1 + 17 L + 3 launches per token.

    ``layer`` / ``looped``: a decoder layer's 17 kernels need ~49 PCUs, 63 PMUs and 63 AGCU
    streams, far more than the 4x4 chip, so a *layer kernel* is an on-chip program of sections
    (``hdl/sections.py``): section ``e`` of the chip's section table is one op kernel's
    bitstream in an HBM slot; the chip loads and runs the sections in order and, after the last
    one, the next iteration (layer), with no host round trip. Table entries 0..16 are the
    *layer program* (:data:`LAYER_SECTIONS`, the order of a layer's op calls), 17..19 the
    *head program* (:data:`HEAD_SECTIONS`: final norm, LM head, argmax). The embedding stays a
    host call (its bitstream depends on the token). ``layer``: embed, one launch of the layer
    program per layer (iteration l, count 1), the head program: 1 + L + 1 launches. ``looped``:
    embed, one launch with iterations 0..L-1, the head program: 3 launches. The bitstreams are
    exactly op mode's (same HBM map below the config region); the 5 sections whose bitstream
    depends on the position (:data:`POSITION_SECTIONS`) are rebuilt per token and ride on the
    token's first layer-program launch as ``updates`` (DMA into their slots) and ``table``
    entries (their new lengths).

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
    config       (layer / looped) one slot per section-table entry, in entry order: a static
                 section's bitstream; a position-dependent section's slot sized for the larger
                 of its bitstreams at positions 0 and context-1 plus a margin (a bitstream that
                 does not fit at token time is a CompileError naming the section)

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

__all__ = ["CompileError", "Call", "Section", "ProgramLaunch", "DecodeProgram", "compile_decode",
           "MODES", "LAYER_SECTIONS", "HEAD_SECTIONS", "POSITION_SECTIONS", "SLOT_MARGIN"]

MODES = ("op", "layer", "looped")

# The sections of the layer program (table entries 0..16, the order of a layer's op-mode
# calls) and of the head program (entries 17..19).
LAYER_SECTIONS = ("norm1", "wq", "wk", "wv", "rope_q", "rope_k", "kv_append", "attn", "wsum",
                  "wo", "residual1", "norm2", "gate", "up", "swiglu", "down", "residual2")
HEAD_SECTIONS = ("norm_final", "lm_head", "argmax")
# Sections whose bitstream depends on the decode position (rebuilt and DMA'd per token).
POSITION_SECTIONS = frozenset({"rope_q", "rope_k", "kv_append", "attn", "wsum"})
# Slot of a position-dependent section: the larger of its bitstreams at positions 0 and
# context-1, plus max(SLOT_MARGIN bytes, 1/16 of it), in whole beats.
SLOT_MARGIN = 256


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

    kind = "call"

    @property
    def bitstream(self) -> bytes:
        return self.kernel.to_bytes()


@dataclass(frozen=True)
class Section:
    """One entry of the chip's section table (``layer``/``looped`` modes): the kernel
    ``name`` (a :data:`LAYER_SECTIONS` or :data:`HEAD_SECTIONS` name) of program ``program``,
    its bitstream in the HBM slot at byte ``slot`` (64-B aligned) of ``slot_bytes`` bytes."""
    entry: int
    name: str
    program: str                  # "layer" | "head"
    slot: int
    slot_bytes: int
    position_dependent: bool


@dataclass
class ProgramLaunch:
    """One host launch of an on-chip program: sections ``first .. first + n_sections - 1``
    for sequencer iterations ``iteration .. iteration + count - 1``, with no host round trip
    between sections or iterations. Before it, the host DMAs ``updates`` (``(HBM byte address,
    bytes)``: the position-dependent sections' bitstreams of this position) and makes the
    section table hold ``table`` (``(entry, slot address, bitstream bytes)``)."""
    label: str                    # "l3" (layer mode), "layers" (looped), "head"
    program: str
    first: int
    n_sections: int
    iteration: int
    count: int
    updates: list
    table: list
    section_names: list
    kernels: list                 # DecodeKernel of each section, in order
    images: list                  # the bitstream in each section's slot (what the chip loads)

    kind = "program"

    def budget(self, config_cycles_per_section: int = 3000, cap: int | None = None) -> int:
        """A watchdog budget (cycles) for the whole launch: per iteration, every section's
        own kernel watchdog (capped at ``cap`` if given) plus ``config_cycles_per_section``
        for the chip to load its bitstream from HBM."""
        per = sum(min(k.watchdog, cap) if cap is not None else k.watchdog
                  for k in self.kernels)
        return self.count * (per + config_cycles_per_section * self.n_sections)


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
    sections: list = field(default_factory=list)      # [Section], layer / looped modes
    config_base: int = 0                               # the section slots (0, 0 in op mode)
    config_bytes: int = 0
    delta: bool = False                                # sections stored as delta bitstreams
    _bitstreams: dict = field(default_factory=dict, repr=False)
    _static_images: dict = field(default_factory=dict, repr=False)
    _pos_images: dict = field(default_factory=dict, repr=False)
    _parsed_cache: dict = field(default_factory=dict, repr=False)
    _assumed: dict = field(default_factory=dict, repr=False)
    _samples: list = field(default_factory=list, repr=False)

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

    def _embed(self, pos: int, token: int) -> DecodeKernel:
        """The embedding kernel of ``token`` (built per token, not cached)."""
        from sw.kernels.patterns import embed_kernel
        token = self.qm.config.check_step(pos, token)
        return embed_kernel(self.params, dim=self.qm.config.dim, table=Ref(self.emb_base),
                            token=token, out=self.a("x"))

    def _step_kernels(self, pos: int) -> dict:
        """``{section name: kernel}`` of every per-layer (:data:`LAYER_SECTIONS`) and head
        (:data:`HEAD_SECTIONS`) kernel at ``pos``. Kernels are cached: a static one is the same
        object at every position."""
        from sw.kernels.attention import build_attn_softmax
        from sw.kernels.attn_wsum import build_attn_wsum
        from sw.kernels.gemv import build_decode_gemv
        from sw.kernels.patterns import argmax_kernel, residual_kernel, swiglu_kernel
        from sw.kernels.rmsnorm import build_rmsnorm
        from sw.kernels.rope import build_kv_append, build_rope

        qm, c, p = self.qm, self.qm.config, self.params
        if not isinstance(pos, (int, np.integer)) or not 0 <= pos < self.context:
            raise ValueError(f"position {pos} is outside the compiled context "
                             f"0..{self.context - 1}")
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
        k = {}
        k["norm1"] = K(("norm", 1), norm("norm_attn", self.blob("norm1")))
        k["wq"] = K(("gemv", "wq"), gemv("wq", nh * hd, dim, "h", "q16", 8, 16,
                                         self.blob("wq"), L))
        k["wk"] = K(("gemv", "wk"), gemv("wk", nkv * hd, dim, "h", "k16", 8, 16,
                                         self.blob("wk"), L))
        k["wv"] = K(("gemv", "wv"), gemv("wv", nkv * hd, dim, "h", "v8", 8, 8,
                                         self.blob("wv"), L))
        k["rope_q"] = K(("rope", "q", pos), lambda: build_rope(
            p, n_heads=nh, head_dim=hd, x16=A("q16"), out=A("q_rot"), tables=Ref(self.rope_tables),
            const=self.blob("rope_q"), pos=pos, out_bits=ab["q_rot"], iterations=L, name="rope_q"))
        k["rope_k"] = K(("rope", "k", pos), lambda: build_rope(
            p, n_heads=nkv, head_dim=hd, x16=A("k16"), out=A("k_rot"), tables=Ref(self.rope_tables),
            const=self.blob("rope_k"), pos=pos, out_bits=8, iterations=L, name="rope_k"))
        k["kv_append"] = K(("kv_append", pos), lambda: build_kv_append(
            p, n_kv_heads=nkv, head_dim=hd, context=self.context, k=A("k_rot"), v=A("v8"),
            kv=self.kv, pos=pos, iterations=L))
        k["attn"] = K(("attn", pos), lambda: build_attn_softmax(
            p, n_heads=nh, n_kv_heads=nkv, head_dim=hd, context=self.context, pos=pos,
            q=A("q_rot"), kv=self.kv, const=self.blob("attn"), e=A("e"), sums=A("sums"),
            iterations=L))
        k["wsum"] = K(("wsum", pos), lambda: build_attn_wsum(
            p, n_heads=nh, n_kv_heads=nkv, head_dim=hd, context=self.context, pos=pos,
            e=A("e"), sums=A("sums"), kv=self.kv, const=self.blob("wsum"), out=A("attn_out"),
            out_bits=ab["attn_out"], iterations=L))
        k["wo"] = K(("gemv", "wo"), gemv("wo", dim, nh * hd, "attn_out", "a", ab["attn_out"], 16,
                                         self.blob("wo"), L))
        k["residual1"] = k["residual2"] = K(("residual",), lambda: residual_kernel(
            p, dim=dim, x=A("x"), y=A("a"), out=A("x")))
        k["norm2"] = K(("norm", 2), norm("norm_ffn", self.blob("norm2")))
        k["gate"] = K(("gemv", "gate"), gemv("gate", hid, dim, "h", "g8", 8, 8,
                                             self.blob("gate"), L))
        k["up"] = K(("gemv", "up"), gemv("up", hid, dim, "h", "u16", 8, 16, self.blob("up"), L))
        k["swiglu"] = K(("swiglu",), lambda: swiglu_kernel(
            p, hidden=hid, out_bits=ab["mid"], g8=A("g8"), u16=A("u16"),
            const=self.blob("swiglu"), out=A("mid"), iterations=L))
        k["down"] = K(("gemv", "down"), gemv("down", dim, hid, "mid", "a", ab["mid"], 16,
                                             self.blob("down"), L))
        k["norm_final"] = K(("norm", "f"), lambda: build_rmsnorm(
            p, dim=dim, x=A("x"), const=Ref(self.final["normf"]), out=A("h"),
            ss_shift=qm.ss_shift, eps_int=qm.eps_int, rsqrt_bits=qm.rsqrt_bits,
            out_bits=ab["norm_final"], iterations=1, name="norm_final"))
        k["lm_head"] = K(("gemv", "lm_head"), lambda: build_decode_gemv(
            p, rows=voc, cols=dim, x_bits=8, out_bits=32, w=Ref(self.final["lm_head"]), x=A("h"),
            y=A("logits"), iterations=1, name="lm_head"))
        k["argmax"] = K(("argmax",), lambda: argmax_kernel(p, vocab=voc, logits=A("logits"),
                                                           out=A("next")))
        return k

    def token_calls(self, pos: int, token: int) -> list[Call]:
        """The op-mode kernel launches of the decode step at ``pos`` for input ``token``: the
        embedding, the 17 per-layer kernels of every layer (iteration = layer), the 3 head
        kernels. In ``layer``/``looped`` mode the same kernels run as sections
        (:meth:`token_launches`); this list still describes them one by one (the report)."""
        emb, k = self._embed(pos, token), self._step_kernels(pos)
        c = self.qm.config
        dim, hid, nh, nkv, hd = c.dim, c.hidden_dim, c.n_heads, c.n_kv_heads, c.head_dim
        ab = self.qm.act_bits
        # section name -> (golden trace name, activation read back, bits, elements)
        traced = {
            "norm1": ("h_attn", "h", 8, dim), "wq": ("q", "q16", 16, nh * hd),
            "wk": ("k", "k16", 16, nkv * hd), "wv": ("v", "v8", 8, nkv * hd),
            "rope_q": ("q_rot", "q_rot", 8, nh * hd), "rope_k": ("k_rot", "k_rot", 8, nkv * hd),
            "kv_append": (None, None, 0, 0), "attn": (None, None, 0, 0),
            "wsum": ("attn_out", "attn_out", ab["attn_out"], nh * hd),
            "wo": (None, "a", 16, dim), "residual1": ("x", "x", 16, dim),
            "norm2": ("h_ffn", "h", 8, dim), "gate": ("gate", "g8", 8, hid),
            "up": ("up", "u16", 16, hid), "swiglu": ("mid", "mid", ab["mid"], hid),
            "down": (None, "a", 16, dim), "residual2": ("x", "x", 16, dim),
            "norm_final": ("h_final", "h", 8, dim), "lm_head": ("logits", "logits", 32,
                                                                c.vocab_size),
            "argmax": (None, None, 0, 0)}
        out = [Call("embed", emb, output=(self.act["x"], self.act_bytes["x"], 16, dim),
                    trace=("x", -1))]

        def call(label, name, layer):
            trace, act_name, bits, n = traced[name]
            out.append(Call(label, k[name], iteration=max(layer, 0),
                            trace=(trace, layer) if trace else None,
                            output=(self.act[act_name], self.act_bytes[act_name], bits, n)
                            if act_name else None))

        for l in range(c.n_layers):
            for name in LAYER_SECTIONS:
                call(f"l{l}.{name}", name, l)
        for name in HEAD_SECTIONS:
            call(name, name, -1)
        return out

    # ---- programs of sections (layer / looped) ------------------------------------------------
    def section_kernels(self, pos: int) -> list[DecodeKernel]:
        """The kernel of every section (table entry order) at position ``pos``."""
        k = self._step_kernels(pos)
        return [k[s.name] for s in self.sections]

    def section_bitstream(self, entry: int, pos: int) -> bytes:
        """The bitstream in entry ``entry``'s HBM slot at ``pos`` (what the chip loads): with
        ``delta`` the section's delta bitstream (:mod:`sw.compiler.delta`; a program's first
        section lean but whole), else the kernel's own bitstream. :class:`CompileError` if it
        outgrows its slot or breaks an assumption the static sections' deltas rest on."""
        s = self.sections[entry]
        if s.position_dependent:
            data = self._position_images(pos)[entry]
        else:
            data = self._static_images[entry]
        if len(data) > s.slot_bytes:
            raise CompileError(f"section {s.entry} ({s.name}) at position {pos}: its bitstream "
                               f"is {len(data)} B, its HBM slot at 0x{s.slot:06x} holds "
                               f"{s.slot_bytes} B (sized from positions "
                               f"{', '.join(map(str, self._samples))}); raise SLOT_MARGIN in "
                               f"sw/compiler/program.py")
        return data

    def _position_images(self, pos: int) -> dict:
        """``{entry: bitstream}`` of the position-dependent sections at ``pos`` (cached for the
        last few positions). With ``delta``: each one's delta against the exact register state
        its program leaves before it at ``pos`` (full writes of every earlier section), after
        checking that ``pos`` keeps the assumptions the static sections' deltas were built on
        (:func:`_lay_out_sections`)."""
        hit = self._pos_images.get(pos)
        if hit is not None:
            return hit
        from sw.bitstream import Bitstream
        from sw.compiler.delta import KnownState, delta_bitstream
        kernels = self.section_kernels(pos)
        out = {}
        for name, (first, n) in self.programs().items():
            known = KnownState()
            for s in self.sections[first:first + n]:
                full = self._bytes(kernels[s.entry])
                if s.position_dependent:
                    bs = Bitstream.from_bytes(full, self.params)
                    self._check_assumed(s, pos, bs)
                    out[s.entry] = delta_bitstream(full, known, self.params, s.name)[0] \
                        if self.delta else full
                else:
                    bs = self._parsed(full) if self.delta else None
                if self.delta:
                    known.apply(bs)
        if len(self._pos_images) >= 8:
            self._pos_images.pop(next(iter(self._pos_images)))
        self._pos_images[pos] = out
        return out

    def _parsed(self, full: bytes):
        from sw.bitstream import Bitstream
        bs = self._parsed_cache.get(full)
        if bs is None:
            bs = self._parsed_cache[full] = Bitstream.from_bytes(full, self.params)
        return bs

    def _check_assumed(self, s: "Section", pos: int, bs) -> None:
        """A position-dependent section at ``pos`` must write only registers it writes at the
        sampled positions, and the ones the static sections' deltas count on with the sampled
        value (else the deltas would leave a register wrong)."""
        if not self.delta:
            return
        keys, fixed = self._assumed[s.entry]
        got = {(w.unit, w.reg): w.value for w in bs.writes}
        extra = set(got) - keys
        bad = [k for k, v in fixed.items() if got.get(k) != v]
        if extra or bad:
            u, r = sorted(extra or bad)[0]
            raise CompileError(f"section {s.entry} ({s.name}) at position {pos} writes unit {u} "
                               f"register {r} {'which it writes at no sampled position' if extra else 'with another value than at the sampled positions'} "
                               f"({', '.join(map(str, self._samples))}); the delta bitstreams of "
                               f"the sections after it assume it does not: compile with "
                               f"delta=False")

    def _bytes(self, kernel: DecodeKernel) -> bytes:
        data = self._bitstreams.get(id(kernel))
        if data is None:
            data = self._bitstreams[id(kernel)] = kernel.to_bytes()
        return data

    def section_images(self, pos: int) -> list[bytes]:
        """Every section's slot bitstream at ``pos`` (entry order)."""
        return [self.section_bitstream(s.entry, pos) for s in self.sections]

    def table_entries(self) -> list[tuple[int, int]]:
        """The section table the host writes at load (entry order): ``(slot byte address,
        bitstream bytes)``; position-dependent entries hold position 0's bitstream (which
        :meth:`images` puts in their slots), the launches of other positions rewrite them."""
        return [(s.slot, len(self.section_bitstream(s.entry, 0))) for s in self.sections]

    def programs(self) -> dict:
        """``{program name: (first entry, sections)}``."""
        out = {}
        for s in self.sections:
            first, n = out.get(s.program, (s.entry, 0))
            out[s.program] = (first, n + 1)
        return out

    def _launch(self, program: str, label: str, iteration: int, count: int, pos: int,
                with_updates: bool) -> "ProgramLaunch":
        first, n = self.programs()[program]
        secs = self.sections[first:first + n]
        kernels = self.section_kernels(pos)[first:first + n]
        updates, table = [], []
        if with_updates:
            for s in secs:
                if s.position_dependent:
                    data = self.section_bitstream(s.entry, pos)
                    updates.append((s.slot, data))
                    table.append((s.entry, s.slot, len(data)))
        images = [self.section_bitstream(s.entry, pos) for s in secs]
        return ProgramLaunch(label, program, first, n, iteration, count, updates, table,
                             [s.name for s in secs], kernels, images)

    def token_launches(self, pos: int, token: int) -> list:
        """The host launches of the decode step at ``pos`` for ``token``, in order: op mode =
        :meth:`token_calls`; ``layer`` = embed, one :class:`ProgramLaunch` of the layer program
        per layer (iteration l), the head program; ``looped`` = embed, one layer-program launch
        of ``n_layers`` iterations, the head program. The position-dependent sections'
        bitstreams for ``pos`` ride on the first layer-program launch as ``updates``."""
        if self.mode == "op":
            return self.token_calls(pos, token)
        emb = self._embed(pos, token)
        c = self.qm.config
        out = [Call("embed", emb, output=(self.act["x"], self.act_bytes["x"], 16, c.dim),
                    trace=("x", -1))]
        if self.mode == "layer":
            for l in range(c.n_layers):
                out.append(self._launch("layer", f"l{l}", l, 1, pos, l == 0))
        else:
            out.append(self._launch("layer", "layers", 0, c.n_layers, pos, True))
        out.append(self._launch("head", "head", 0, 1, pos, False))
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
                   context: int | None = None, delta: bool = True) -> DecodeProgram:
    """Lay out ``qm`` in HBM for ``mode`` and build one step's kernels (position 0); kernels of
    other positions are built on demand by ``token_calls``. ``delta`` (layer/looped): store
    the sections as delta bitstreams (:func:`_lay_out_sections`), else as the kernels' own
    bitstreams. Raises :class:`CompileError`."""
    from sw.kernels.builder import KernelError
    from sw.kernels.patterns import PatternError
    try:
        return _compile(qm, p, mode, context, delta)
    except (PatternError, KernelError) as e:
        raise CompileError(f"the model cannot be mapped on this chip: {e}") from None


def _compile(qm: QuantModel, p: RduParams, mode: str, context: int | None,
             delta: bool = True) -> DecodeProgram:
    from sw.kernels.attention import attn_constants
    from sw.kernels.attn_wsum import wsum_constants
    from sw.kernels.gemv import gemv_constants
    from sw.kernels.patterns import swiglu_blob
    from sw.kernels.rmsnorm import rmsnorm_constants
    from sw.kernels.rope import rope_constants, rope_tables

    t0 = time.monotonic()
    if mode not in MODES:
        raise CompileError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    n_entries = len(LAYER_SECTIONS) + len(HEAD_SECTIONS)
    if mode != "op" and n_entries > p.program_entries:
        raise CompileError(f"mode {mode!r} needs {n_entries} section-table entries "
                           f"({len(LAYER_SECTIONS)} layer + {len(HEAD_SECTIONS)} head sections), "
                           f"the chip has {p.program_entries}: raise RduParams.program_entries "
                           f"or use mode 'op'")
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
    al.next = end
    prog = DecodeProgram(qm, p, mode, context, act, act_bytes, layer_base, stride, offsets,
                         final, emb_base, row_bytes, rope_base, kv_base, kv_stride, kv_row, end,
                         al.regions, images)
    # Build one whole step now (position 0), so a pattern that cannot map this shape fails at
    # compile time, naming the kernel; position-dependent kernels are rebuilt per position.
    prog.token_calls(0, 0)
    if mode != "op":
        prog.delta = bool(delta)
        _lay_out_sections(prog, al)
    prog.compile_seconds = time.monotonic() - t0
    return prog


def _lay_out_sections(prog: DecodeProgram, al: _Alloc) -> None:
    """The config region (after the KV cache): one slot per section, in table order.

    Bitstreams: without ``delta``, every section's slot holds its kernel's own bitstream (what
    op mode loads). With ``delta`` (:mod:`sw.compiler.delta`), a program's first section is
    whole (lean: no ROUTES) and every later one keeps only the writes whose value the sections
    before it in the same iteration have not already put in the fabric. A static section's
    delta is built once, here, so it must not depend on the position: for the registers a
    position-dependent section before it writes, the compiler samples positions
    (:data:`_samples`: 0, 1, the middle, context-1) and treats a register as known only if every
    sample writes it with the same value; every token's position-dependent bitstreams are
    checked against that (:meth:`DecodeProgram._check_assumed`), and their own deltas are built
    per position against the exact state.

    Slots: a static section's is its bitstream, rounded up to a beat; a position-dependent
    one's the largest of its kernel bitstreams at the sampled positions plus max(SLOT_MARGIN,
    1/16) (a delta never has more records than its kernel). The images hold position 0's
    bitstreams; the launches of other positions rewrite the position-dependent slots."""
    from sw.bitstream import Bitstream
    from sw.compiler.delta import KnownState, delta_bitstream, lean_bitstream
    p = prog.params
    last = prog.context - 1
    prog._samples = sorted({0, 1 if last >= 1 else 0, last // 2, last})
    kern = {pos: prog._step_kernels(pos) for pos in prog._samples}
    base = _up(al.next, al.align)
    entries = [(n, "layer") for n in LAYER_SECTIONS] + [(n, "head") for n in HEAD_SECTIONS]
    secs = []
    for entry, (name, program) in enumerate(entries):
        dependent = name in POSITION_SECTIONS
        if not dependent and any(kern[x][name] is not kern[0][name] for x in prog._samples):
            raise CompileError(f"internal error: section {name} is not position-independent")
        secs.append(Section(entry, name, program, 0, 0, dependent))
    # the static sections' bitstreams, and what the dependent ones are assumed to write
    static = {}
    starts = {}
    for s in secs:
        starts.setdefault(s.program, s.entry)
    known = None
    for s in secs:
        first = starts[s.program] == s.entry
        if first:
            if s.position_dependent:
                raise CompileError(f"internal error: program {s.program} starts with a "
                                   f"position-dependent section ({s.name})")
            known = KnownState()
        if s.position_dependent:
            samples = [{(w.unit, w.reg): w.value for w in
                        Bitstream.from_bytes(prog._bytes(kern[x][s.name]), p).writes}
                       for x in prog._samples]
            keys = set().union(*samples)
            fixed = {k: samples[0][k] for k in keys
                     if all(k in smp and smp[k] == samples[0][k] for smp in samples)}
            prog._assumed[s.entry] = (keys, fixed)
            if prog.delta:
                for k in keys:
                    known.regs.pop(k, None)
                known.regs.update(fixed)
            continue
        full = prog._bytes(kern[0][s.name])
        if not prog.delta:
            static[s.entry] = full
            continue
        bs = prog._parsed(full)
        static[s.entry] = lean_bitstream(bs, s.name) if first else \
            delta_bitstream(full, known, p, s.name)[0]
        known.apply(bs)
    prog._static_images = static
    for s in secs:
        if s.position_dependent:
            big = max(len(prog._bytes(kern[x][s.name])) for x in prog._samples)
            size = _up(big + max(SLOT_MARGIN, big // 16), p.beat_bytes)
        else:
            size = _up(len(static[s.entry]), p.beat_bytes)
        slot = al.take(f"section {s.entry}: {s.program} {s.name}", "config", size)
        prog.sections.append(Section(s.entry, s.name, s.program, slot, size,
                                     s.position_dependent))
    for s in prog.sections:
        prog._images.append((s.slot, prog.section_bitstream(s.entry, 0)))
    end = _up(al.next, al.align)
    prog.config_base, prog.config_bytes = base, end - base
    if end > p.hbm_bytes:
        raise CompileError(f"the model needs {end} B of HBM with the {len(entries)} section "
                           f"bitstreams of mode {prog.mode!r} ({prog.config_bytes} B after the KV "
                           f"cache); the chip has {p.hbm_bytes} B: raise RduParams.hbm_bytes, "
                           f"shorten the context or use mode 'op'")
    prog.hbm_end = end

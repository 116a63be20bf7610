"""The decode step as a dataflow graph of patterns, and an interpreter that runs it.

Contract
--------
:func:`build_graph` turns a :class:`sw.quant.QuantModel` into a :class:`Graph` of one decode
step (one token in, int32 logits and the greedy next token out). Each :class:`Node` is one
instance of a pattern of the pattern library; its ``kind`` is the name of the
:class:`sw.golden.GoldenDecoder` method (or step) that defines its integer semantics:

==============  ================================================  ===========================
kind            inputs -> outputs                                 parameters (HBM tensors)
==============  ================================================  ===========================
``embed``       token -> x (int16)                                ``emb`` (one row read)
``rmsnorm``     x -> h (int8)                                     ``*_rq`` words, ``rsqrt``
``gemv``        x (int8/16) -> y (int16/int8; int32 LM head)      ``W`` int8, ``*_rq`` words
``rope``        q or k (int16) -> rotated (int8)                  ``*_rq`` word, cos/sin row
``kv_write``    k_rot, v -> K, V cache (HBM, position ``pos``)    -
``attn_scores`` q_rot, K cache -> scores (int32, T = pos + 1)     -
``softmax_num`` scores -> e (exp units), sum                      ``exp_rq`` word, ``exp``
``attn_wsum``   e, sum, V cache -> attention output (int8)        ``attn_rq`` words, ``recip``
``swiglu``      gate (int8), up (int16) -> mid (int16)            ``silu`` table, ``mid_rq``
``residual``    x, y -> x (int16, saturating)                     -
``argmax``      logits -> next token                              -
==============  ================================================  ===========================

Every tensor edge has a name, a shape (``"T"`` stands for the attention length ``pos + 1``),
an element width in bits and a location (:data:`ONCHIP` or :data:`HBM`). Parameters are
*references* into the QuantModel, never copies: a :class:`Param` is one tensor as stored in HBM
(a weight matrix, a vector of REQUANT words, a table) made of :class:`ParamRef` s (attribute
name + layer index), e.g. ``l3.wq`` binds ``Param("wq", 3)`` = ``qm.wq[3]`` and
``Param("wq_rq", 3)`` = words from ``qm.wq_m[3]``, ``qm.wq_s[3]``. The HBM layout
(:mod:`sw.compiler.layout`) places exactly the graph's parameters, so the graph is the single
list of what the chip must hold.

Kernel looping needs every decoder layer to be the same subgraph: :meth:`Graph.layer_signature`
is a layer with its own layer index abstracted away (local names, shapes, widths, edges,
parameter *names*), and :meth:`Graph.assert_layers_identical` raises :class:`GraphError`
naming the first difference. Layers differ only in which layer's parameters they bind.

:func:`run_graph` executes the nodes in topological order by calling the pattern methods of a
:class:`GoldenDecoder` (whose KV cache and position are the decoder state) with the values the
graph binds, and is bit-exact with ``GoldenDecoder.step``. The tables a pattern method reads
through ``self.qm`` (``emb``, ``rsqrt``, ``rope_cos``/``rope_sin``, ``exp``, ``recip``) are
served from the node's own bindings, through a view that refuses any attribute the node does not
declare: a parameter the graph forgets is an error, not a silent read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sw.golden import GoldenDecoder
from sw.quant import QuantModel

__all__ = ["ONCHIP", "HBM", "GraphError", "Tensor", "ParamRef", "Param", "Node", "Graph",
           "build_graph", "run_graph", "execute", "KINDS"]

ONCHIP = "on-chip"
HBM = "hbm"

KINDS = ("embed", "rmsnorm", "gemv", "rope", "kv_write", "attn_scores", "softmax_num",
         "attn_wsum", "swiglu", "residual", "argmax")

T = "T"                     # symbolic attention length: pos + 1


class GraphError(ValueError):
    """The graph is malformed, its layers differ, or a node cannot run."""


# ---- edges and parameters ---------------------------------------------------------------------

@dataclass(frozen=True)
class Tensor:
    """A value on an edge. ``role``: ``activation`` (lives for one step), ``state`` (the KV
    cache, persists across steps), ``input`` (the host writes it: the token) or ``output`` (the
    host reads it: logits, next token; written to HBM and forwarded on chip to any consumer in
    the step). ``trace`` is the
    ``(name, layer)`` under which ``GoldenDecoder`` traces the same value, if it does."""
    name: str
    shape: tuple
    bits: int
    location: str = ONCHIP
    role: str = "activation"
    trace: tuple | None = None

    def resolved_shape(self, pos: int) -> tuple:
        return tuple(pos + 1 if d == T else d for d in self.shape)

    def nbytes(self, pos: int) -> int:
        return math.prod(self.resolved_shape(pos)) * self.bits // 8

    def label(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "1"
        return f"{self.name}[{dims}]i{self.bits}"


@dataclass(frozen=True)
class ParamRef:
    """``qm.<attr>`` (``layer == -1``) or ``qm.<attr>[layer]``."""
    attr: str
    layer: int = -1

    def resolve(self, qm: QuantModel) -> np.ndarray:
        a = getattr(qm, self.attr)
        return a if self.layer < 0 else a[self.layer]


# How a Param is stored in HBM (the layout's encodings):
#   rows   a matrix, row-major, each row padded to whole beats (GEMV weights, embedding rows)
#   words  REQUANT words m | s << 16 (int32), one per element, from a (m, s) pair of refs
#   array  the array's elements packed little-endian, row-major, no padding (tables)
ENCODINGS = ("rows", "words", "array")


@dataclass(frozen=True)
class Param:
    """One parameter tensor as the chip holds it in HBM.

    ``name`` is layer-local (``wq``, ``wq_rq``, ``silu``; shared tensors have ``layer == -1``),
    ``refs`` the QuantModel arrays it is made of (``(w,)``, or ``(m, s)`` for ``words``),
    ``shape``/``bits`` its logical shape and element width in HBM. ``access``: ``whole`` (read
    entirely by its node), ``row`` (one row per step: the token's embedding, the position's
    cos/sin). ``resident``: shared by every layer and read once per step into a PMU, kept there
    for the step (counted once per token, not per node): the rsqrt, exp and reciprocal tables
    and the step's RoPE row."""
    name: str
    layer: int
    encoding: str
    refs: tuple
    shape: tuple
    bits: int
    access: str = "whole"
    resident: bool = False

    @property
    def key(self) -> tuple:
        return (self.name, self.layer)

    @property
    def label(self) -> str:
        return self.name if self.layer < 0 else f"l{self.layer}.{self.name}"

    def values(self, qm: QuantModel) -> tuple:
        return tuple(r.resolve(qm) for r in self.refs)

    @property
    def nbytes(self) -> int:
        """Logical bytes (no padding)."""
        return math.prod(self.shape) * self.bits // 8

    @property
    def row_nbytes(self) -> int:
        return math.prod(self.shape[1:]) * self.bits // 8


@dataclass
class Node:
    """One pattern instance. ``inputs``/``outputs`` map port names to tensors, ``params`` role
    names to :class:`Param`, ``consts`` lists QuantModel scalars the pattern uses as
    configuration immediates (the same for every layer), ``attrs`` the static settings."""
    name: str
    kind: str
    layer: int
    inputs: dict
    outputs: dict
    params: dict = field(default_factory=dict)
    consts: tuple = ()
    attrs: dict = field(default_factory=dict)

    def hbm_read_bytes(self, pos: int) -> int:
        """Logical bytes this node reads from HBM at position ``pos`` (resident tables
        excluded: the graph counts them once per step)."""
        n = 0
        for p in self.params.values():
            if p.resident:
                continue
            n += p.row_nbytes if p.access == "row" else p.nbytes
        for t in self.inputs.values():
            if t.location != HBM:
                continue
            if t.role == "state":      # a KV cache: positions 0..pos (axis 1 is the position)
                n += t.nbytes(pos) // t.shape[1] * (pos + 1)
            elif t.role == "input":    # written by the host; step outputs are forwarded on chip
                n += t.nbytes(pos)
        return n

    def hbm_write_bytes(self, pos: int) -> int:
        if self.kind == "kv_write":        # one position of each cache, not the whole cache
            return sum(t.nbytes(pos) for t in self.inputs.values())
        return sum(t.nbytes(pos) for t in self.outputs.values() if t.location == HBM)


# ---- the graph --------------------------------------------------------------------------------

class Graph:
    """Nodes in program order, plus the tensors they connect. See the module docstring."""

    def __init__(self, qm_name: str, config, nodes: list[Node], inputs: list[Tensor],
                 outputs: list[Tensor]):
        self.name = qm_name
        self.config = config
        self.nodes = list(nodes)
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.tensors: dict[str, Tensor] = {}
        self._check()

    # ---- structure ------------------------------------------------------------------------
    def _check(self) -> None:
        names = set()
        for n in self.nodes:
            if n.name in names:
                raise GraphError(f"two nodes are named {n.name!r}")
            names.add(n.name)
            if n.kind not in KINDS:
                raise GraphError(f"node {n.name}: unknown kind {n.kind!r}")
        self.tensors = {}
        for t in self.inputs:
            self._add_tensor(t, "graph input")
        produced = {t.name: "graph input" for t in self.inputs}
        for n in self.nodes:
            for port, t in list(n.inputs.items()) + list(n.outputs.items()):
                self._add_tensor(t, f"node {n.name} port {port}")
            for t in n.outputs.values():
                if t.name in produced:
                    raise GraphError(f"tensor {t.name} is produced twice: by {produced[t.name]} "
                                     f"and by node {n.name}")
                produced[t.name] = f"node {n.name}"
        for n in self.nodes:
            for port, t in n.inputs.items():
                if t.name not in produced:
                    raise GraphError(f"node {n.name} reads {t.name} (port {port}), which nothing "
                                     f"produces")
        for t in self.outputs:
            if t.name not in produced:
                raise GraphError(f"graph output {t.name} is never produced")
        self.topological_order()                      # raises on a cycle

    def _add_tensor(self, t: Tensor, where: str) -> None:
        old = self.tensors.get(t.name)
        if old is None:
            self.tensors[t.name] = t
        elif old != t:
            raise GraphError(f"tensor {t.name} is declared twice with different metadata "
                             f"({old} vs {t} at {where})")

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def producer(self, tensor_name: str) -> Node | None:
        for n in self.nodes:
            if any(t.name == tensor_name for t in n.outputs.values()):
                return n
        return None

    def consumers(self, tensor_name: str) -> list[Node]:
        return [n for n in self.nodes if any(t.name == tensor_name for t in n.inputs.values())]

    def topological_order(self) -> list[Node]:
        """Nodes such that every producer precedes its consumers; ties keep program order."""
        prod = {}
        for i, n in enumerate(self.nodes):
            for t in n.outputs.values():
                prod[t.name] = i
        deps = [{prod[t.name] for t in n.inputs.values() if t.name in prod} for n in self.nodes]
        done, order = set(), []
        while len(order) < len(self.nodes):
            ready = [i for i in range(len(self.nodes)) if i not in done and deps[i] <= done]
            if not ready:
                stuck = [self.nodes[i].name for i in range(len(self.nodes)) if i not in done]
                raise GraphError(f"the graph has a cycle through: {', '.join(stuck[:6])}")
            done.add(ready[0])
            order.append(self.nodes[ready[0]])
        return order

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    def layer_nodes(self, layer: int) -> list[Node]:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} outside 0..{self.n_layers - 1}")
        return [n for n in self.nodes if n.layer == layer]

    def params(self) -> list[Param]:
        """Every distinct parameter the graph binds, in order of first use."""
        seen: dict[tuple, Param] = {}
        for n in self.nodes:
            for p in n.params.values():
                old = seen.setdefault(p.key, p)
                if old != p:
                    raise GraphError(f"parameter {p.label} is bound with two different "
                                     f"definitions")
        return list(seen.values())

    def layer_params(self, layer: int) -> list[Param]:
        """The per-layer parameters of ``layer`` (shared tables excluded), in order of use."""
        out = []
        for n in self.layer_nodes(layer):
            for p in n.params.values():
                if p.layer >= 0 and p not in out:
                    out.append(p)
        return out

    # ---- kernel looping: every layer the same subgraph -------------------------------------
    def layer_signature(self, layer: int) -> tuple:
        """Layer ``layer`` with its index abstracted: node local names and kinds; tensors by
        local name (inputs from outside the layer as ``<in0>``, ``<in1>``... in order of first
        use), shape, width and location; parameters by name, with their references' layer
        given relative to ``layer`` (``"self"``, else the absolute index, which then differs
        between layers); consts and attrs. Two layers with equal signatures can run as
        iterations of one looped kernel."""
        prefix = f"l{layer}."
        external: dict[str, str] = {}

        def tname(t: Tensor) -> str:
            if t.name.startswith(prefix):
                return t.name[len(prefix):]
            return external.setdefault(t.name, f"<in{len(external)}>")

        def tsig(t: Tensor) -> tuple:
            return (tname(t), t.shape, t.bits, t.location, t.role)

        def rel(i: int):
            return "self" if i == layer else i

        sig = []
        for n in self.layer_nodes(layer):
            local = n.name[len(prefix):] if n.name.startswith(prefix) else f"<{n.name}>"
            sig.append((
                ("node", local), ("kind", n.kind),
                ("inputs", tuple((port, tsig(t)) for port, t in n.inputs.items())),
                ("outputs", tuple((port, tsig(t)) for port, t in n.outputs.items())),
                ("params", tuple((role, p.name, rel(p.layer), p.encoding, p.shape, p.bits,
                                  p.access, p.resident,
                                  tuple((r.attr, rel(r.layer)) for r in p.refs))
                                 for role, p in n.params.items())),
                ("consts", tuple(n.consts)),
                ("attrs", tuple(sorted((k, _hashable(v)) for k, v in n.attrs.items()))),
            ))
        return tuple(sig)

    def assert_layers_identical(self) -> None:
        """Raise :class:`GraphError` naming the first node and field where a layer differs
        from layer 0."""
        ref = self.layer_signature(0)
        for layer in range(1, self.n_layers):
            sig = self.layer_signature(layer)
            if sig == ref:
                continue
            if len(sig) != len(ref):
                raise GraphError(f"layer {layer} has {len(sig)} nodes, layer 0 has {len(ref)}: "
                                 f"one looped kernel cannot serve both")
            for a, b in zip(ref, sig):
                if a == b:
                    continue
                for (fa, va), (_, vb) in zip(a, b):
                    if va != vb:
                        raise GraphError(
                            f"layer {layer} differs from layer 0 at node {b[0][1]!r} "
                            f"({fa}): layer 0 has {va!r}, layer {layer} has {vb!r}; one looped "
                            f"kernel needs identical layers that differ only in their own "
                            f"parameters")
            raise GraphError(f"layer {layer} differs from layer 0")   # pragma: no cover

    # ---- figures ---------------------------------------------------------------------------
    def resident_params(self) -> list[Param]:
        return [p for p in self.params() if p.resident]

    def hbm_read_bytes(self, pos: int) -> int:
        """Logical HBM bytes read by one step at ``pos``: every node, resident tables once.
        (The layout's figures add beat and row padding.)"""
        return (sum(n.hbm_read_bytes(pos) for n in self.nodes)
                + sum(p.row_nbytes if p.access == "row" else p.nbytes
                      for p in self.resident_params()))

    def describe(self, pos: int = 0) -> str:
        """One line per node: name, kind, inputs -> outputs (shape, bits), HBM bytes read at
        ``pos``, the parameters it binds."""
        c = self.config
        lines = [f"decode graph of {self.name}: {len(self.nodes)} nodes, {c.n_layers} layers of "
                 f"{len(self.layer_nodes(0))} nodes (HBM bytes at pos {pos}, T = {pos + 1})"]
        lines.append(f"  {'node':<18} {'kind':<11} {'HBM rd B':>9} {'HBM wr B':>9}  "
                     f"inputs -> outputs  [parameters]")
        for n in self.nodes:
            ins = ", ".join(t.label() for t in n.inputs.values())
            outs = ", ".join(t.label() for t in n.outputs.values())
            prm = " ".join(p.label + ("*" if p.resident else "") for p in n.params.values())
            rd, wr = n.hbm_read_bytes(pos), n.hbm_write_bytes(pos)
            wrs = f"{wr:,}" if wr else "-"
            lines.append(f"  {n.name:<18} {n.kind:<11} {rd:>9,} {wrs:>9}  {ins} -> {outs}"
                         + (f"  [{prm}]" if prm else ""))
        res = self.resident_params()
        if res:
            lines.append("  * resident on chip for the step, read once per step: " + ", ".join(
                f"{p.name} {p.row_nbytes if p.access == 'row' else p.nbytes:,} B"
                + (" (one row)" if p.access == "row" else "") for p in res))
        per_layer = sum(n.hbm_read_bytes(pos) for n in self.layer_nodes(0))
        lines.append(f"HBM read per step at pos {pos}: {self.hbm_read_bytes(pos):,} B "
                     f"(layer 0: {per_layer:,} B; logical, without padding)")
        return "\n".join(lines)


def _hashable(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    return v


# ---- building the graph -----------------------------------------------------------------------

def build_graph(qm: QuantModel) -> Graph:
    """The decode step of ``qm`` as a :class:`Graph` (see the module docstring)."""
    c = qm.config
    nh, nkv, hd, dim, hid = c.n_heads, c.n_kv_heads, c.head_dim, c.dim, c.hidden_dim
    ab = qm.act_bits
    kv_of = tuple(h // c.n_rep for h in range(nh))      # GQA: query head -> KV head

    def rows(name, attr, layer, shape, bits=8, access="whole"):
        return Param(name, layer, "rows", (ParamRef(attr, layer),), tuple(shape), bits, access)

    def words(name, stem, layer, shape):
        refs = (ParamRef(stem + "_m", layer), ParamRef(stem + "_s", layer))
        return Param(name, layer, "words", refs, tuple(shape), 32)

    def table(name, attr, layer, shape, bits, access="whole", resident=False):
        return Param(name, layer, "array", (ParamRef(attr, layer),), tuple(shape), bits, access,
                     resident)

    rsqrt = table("rsqrt", "rsqrt", -1, qm.rsqrt.shape, 32, resident=True)
    recip = table("recip", "recip", -1, qm.recip.shape, 32, resident=True)
    exp_t = table("exp", "exp", -1, qm.exp.shape, 32, resident=True)
    # every layer rotates with the same row (the step's position): fetched once per step
    cos = table("rope_cos", "rope_cos", -1, qm.rope_cos.shape, 16, access="row", resident=True)
    sin = table("rope_sin", "rope_sin", -1, qm.rope_sin.shape, 16, access="row", resident=True)
    norm_consts = ("ss_shift", "eps_int", "rsqrt_bits")

    def act(name, shape, bits, trace=None):
        return Tensor(name, tuple(shape), bits, ONCHIP, "activation", trace)

    token = Tensor("token", (), 32, HBM, "input")
    nodes: list[Node] = []

    def gemv(name, layer, x, out, stem, out_bits):
        rows_, cols = getattr(qm, stem).shape[-2:]
        w = rows(stem, stem, layer, (rows_, cols))
        rq = words(stem + "_rq", stem, layer, (rows_,))
        nodes.append(Node(name, "gemv", layer, {"x": x}, {"y": out}, {"w": w, "rq": rq},
                          attrs={"x_bits": x.bits, "out_bits": out_bits}))

    x = act("x", (dim,), 16, ("x", -1))
    nodes.append(Node("embed", "embed", -1, {"token": token}, {"x": x},
                      {"table": rows("emb", "emb", -1, qm.emb.shape, 16, access="row")}))
    for l in range(c.n_layers):
        p = f"l{l}."
        h = act(p + "h_attn", (dim,), ab["norm_attn"], ("h_attn", l))
        nodes.append(Node(p + "norm_attn", "rmsnorm", l, {"x": x}, {"y": h},
                          {"gain": words("norm1_rq", "norm1", l, (dim,)), "rsqrt": rsqrt},
                          norm_consts, {"out_bits": ab["norm_attn"]}))
        q = act(p + "q", (nh, hd), 16, ("q", l))
        k = act(p + "k", (nkv, hd), 16, ("k", l))
        v = act(p + "v", (nkv, hd), 8, ("v", l))
        gemv(p + "wq", l, h, q, "wq", 16)
        gemv(p + "wk", l, h, k, "wk", 16)
        gemv(p + "wv", l, h, v, "wv", 8)
        q_rot = act(p + "q_rot", (nh, hd), ab["q_rot"], ("q_rot", l))
        k_rot = act(p + "k_rot", (nkv, hd), qm.kv_bits, ("k_rot", l))
        for nm, src, dst, stem, bits in (("rope_q", q, q_rot, "rope_q", ab["q_rot"]),
                                          ("rope_k", k, k_rot, "rope_k", qm.kv_bits)):
            nodes.append(Node(p + nm, "rope", l, {"x": src}, {"y": dst},
                              {"rq": words(stem + "_rq", stem, l, ()), "cos": cos, "sin": sin},
                              attrs={"out_bits": bits}))
        kc = Tensor(p + "k_cache", (nkv, c.max_seq_len, hd), qm.kv_bits, HBM, "state")
        vc = Tensor(p + "v_cache", (nkv, c.max_seq_len, hd), qm.kv_bits, HBM, "state")
        nodes.append(Node(p + "kv_write", "kv_write", l, {"k": k_rot, "v": v},
                          {"k_cache": kc, "v_cache": vc}))
        scores = act(p + "scores", (nh, T), 32)
        nodes.append(Node(p + "attn_scores", "attn_scores", l, {"q": q_rot, "k_cache": kc},
                          {"scores": scores}, attrs={"kv_head_of": kv_of}))
        e = act(p + "e", (nh, T), 32)
        esum = act(p + "e_sum", (nh,), 32)
        nodes.append(Node(p + "softmax", "softmax_num", l, {"scores": scores},
                          {"e": e, "sum": esum},
                          {"rq": words("exp_rq", "exp", l, ()), "exp": exp_t}))
        o = act(p + "attn_out", (nh, hd), ab["attn_out"], ("attn_out", l))
        nodes.append(Node(p + "attn_wsum", "attn_wsum", l, {"e": e, "sum": esum, "v_cache": vc},
                          {"y": o}, {"rq": words("attn_rq", "attn", l, (nh * hd,)),
                                     "recip": recip},
                          ("recip_bits", "act_bits"), {"kv_head_of": kv_of}))
        a = act(p + "attn_proj", (dim,), 16)
        gemv(p + "wo", l, o, a, "wo", 16)
        x_mid = act(p + "x_mid", (dim,), 16, ("x", l))
        nodes.append(Node(p + "residual_attn", "residual", l, {"x": x, "y": a}, {"y": x_mid}))
        h2 = act(p + "h_ffn", (dim,), ab["norm_ffn"], ("h_ffn", l))
        nodes.append(Node(p + "norm_ffn", "rmsnorm", l, {"x": x_mid}, {"y": h2},
                          {"gain": words("norm2_rq", "norm2", l, (dim,)), "rsqrt": rsqrt},
                          norm_consts, {"out_bits": ab["norm_ffn"]}))
        g = act(p + "gate", (hid,), 8, ("gate", l))
        u = act(p + "up", (hid,), 16, ("up", l))
        gemv(p + "w_gate", l, h2, g, "w_gate", 8)
        gemv(p + "w_up", l, h2, u, "w_up", 16)
        mid = act(p + "mid", (hid,), ab["mid"], ("mid", l))
        nodes.append(Node(p + "swiglu", "swiglu", l, {"gate": g, "up": u}, {"y": mid},
                          {"silu": table("silu", "silu", l, qm.silu.shape[1:], 16),
                           "rq": words("mid_rq", "mid", l, (hid,))}, ("act_bits",)))
        d = act(p + "down", (dim,), 16)
        gemv(p + "w_down", l, mid, d, "w_down", 16)
        x_out = act(p + "x_out", (dim,), 16, ("x", l))
        nodes.append(Node(p + "residual_ffn", "residual", l, {"x": x_mid, "y": d}, {"y": x_out}))
        x = x_out
    hf = act("h_final", (dim,), ab["norm_final"], ("h_final", -1))
    nodes.append(Node("final_norm", "rmsnorm", -1, {"x": x}, {"y": hf},
                      {"gain": words("normf_rq", "normf", -1, (dim,)), "rsqrt": rsqrt},
                      norm_consts, {"out_bits": ab["norm_final"]}))
    logits = Tensor("logits", (c.vocab_size,), 32, HBM, "output", ("logits", -1))
    gemv("lm_head", -1, hf, logits, "lm_head", 32)
    nxt = Tensor("next_token", (), 32, HBM, "output")
    nodes.append(Node("argmax", "argmax", -1, {"logits": logits}, {"token": nxt}))
    return Graph(qm.name, c, nodes, [token], [logits, nxt])


# ---- the interpreter --------------------------------------------------------------------------

# QuantModel attributes each pattern method reads through ``self.qm``, and the node parameter
# (role) that serves them. Everything else it reads must be a declared const.
_TABLE_ROLES = {
    "embed": {"emb": "table"},
    "rmsnorm": {"rsqrt": "rsqrt"},
    "rope": {"rope_cos": "cos", "rope_sin": "sin"},
    "softmax_num": {"exp": "exp"},
    "attn_wsum": {"recip": "recip"},
}


class _NodeView:
    """What a pattern method sees as ``self.qm`` while it runs one node: the node's bound
    tables and declared consts, nothing else."""

    def __init__(self, node: Node, qm: QuantModel, bound: dict):
        d = {attr: bound[role][0] for attr, role in _TABLE_ROLES.get(node.kind, {}).items()
             if role in bound}
        d.update({name: getattr(qm, name) for name in node.consts})
        self.__dict__["_node"] = node.name
        self.__dict__["_attrs"] = d

    def __getattr__(self, name):
        try:
            return self.__dict__["_attrs"][name]
        except KeyError:
            raise GraphError(f"node {self.__dict__['_node']}: its pattern reads qm.{name}, which "
                             f"the graph does not bind (add it to the node's params or consts)") \
                from None


def execute(graph: Graph, qm: QuantModel, decoder_state: GoldenDecoder, token_id: int) -> dict:
    """Run one decode step of ``graph`` with the parameters of ``qm``; return every tensor's
    value by name (the KV cache entries are views of ``decoder_state``'s cache).

    ``decoder_state`` supplies the pattern methods, the KV cache and the position, which
    advances by one, exactly as ``GoldenDecoder.step`` does."""
    dec = decoder_state
    c = graph.config
    if qm.config != c:
        raise GraphError(f"the graph was built for {c}, the QuantModel has {qm.config}")
    if dec.k_cache.shape[0] != c.n_layers or dec.k_cache.shape[2] != c.max_seq_len:
        raise GraphError("decoder state does not match the graph's model shape")
    token_id = c.check_step(dec.pos, token_id)
    pos = dec.pos
    env: dict[str, np.ndarray] = {"token": np.array(token_id, np.int32)}
    for l in range(c.n_layers):                       # the state tensors: this step's cache
        env[f"l{l}.k_cache"] = dec.k_cache[l]
        env[f"l{l}.v_cache"] = dec.v_cache[l]
    home_qm = dec.qm
    try:
        for node in graph.topological_order():
            bound = {role: p.values(qm) for role, p in node.params.items()}
            args = {port: env[t.name] for port, t in node.inputs.items()}
            dec.qm = _NodeView(node, qm, bound)
            try:
                out = _run_node(node, dec, args, bound, pos)
            finally:
                dec.qm = home_qm
            for port, t in node.outputs.items():
                val = out[port]
                if t.role != "state":
                    val = _check_value(node, t, val, pos)
                env[t.name] = val
                if t.trace is not None:
                    dec._t(t.trace[0], t.trace[1], val)
    finally:
        dec.qm = home_qm
    dec.pos += 1
    return env


def run_graph(graph: Graph, qm: QuantModel, decoder_state: GoldenDecoder, token_id: int):
    """One decode step through the graph: int32 logits, bit-exact with ``GoldenDecoder.step``
    (which it replaces: call one or the other per token on a decoder state)."""
    return execute(graph, qm, decoder_state, token_id)["logits"]


def _run_node(node: Node, dec: GoldenDecoder, a: dict, b: dict, pos: int) -> dict:
    k, at = node.kind, node.attrs
    if k == "embed":
        return {"x": dec.embed(int(a["token"]))}
    if k == "rmsnorm":
        m, s = b["gain"]
        return {"y": dec.rmsnorm(a["x"], m, s, at["out_bits"])}
    if k == "gemv":
        (w,), (m, s) = b["w"], b["rq"]
        y = dec.gemv(w, a["x"].reshape(-1), m, s, at["out_bits"])
        return {"y": y.reshape(node.outputs["y"].shape)}
    if k == "rope":
        m, s = b["rq"]
        return {"y": dec.rope(a["x"], m, s, at["out_bits"])}
    if k == "kv_write":
        # the cache write of GoldenDecoder.step: position ``pos`` of every KV head
        K, V = dec.k_cache[node.layer], dec.v_cache[node.layer]
        K[:, pos] = a["k"]
        V[:, pos] = a["v"]
        return {"k_cache": K, "v_cache": V}
    if k == "attn_scores":
        K = a["k_cache"][list(at["kv_head_of"]), : pos + 1]
        return {"scores": dec.attn_scores(a["q"], K)}
    if k == "softmax_num":
        m, s = b["rq"]
        e, tot = dec.softmax_num(a["scores"], m, s)
        return {"e": e, "sum": tot}
    if k == "attn_wsum":
        V = a["v_cache"][list(at["kv_head_of"]), : pos + 1]
        m, s = b["rq"]
        shape = node.outputs["y"].shape
        return {"y": dec.attn_wsum(a["e"], a["sum"], V, m.reshape(shape), s.reshape(shape))}
    if k == "swiglu":
        (silu,), (m, s) = b["silu"], b["rq"]
        return {"y": dec.swiglu(a["gate"], a["up"], silu, m, s)}
    if k == "residual":
        return {"y": dec.residual(a["x"], a["y"])}
    if k == "argmax":
        return {"token": np.array(dec.argmax(a["logits"]), np.int32)}
    raise GraphError(f"node {node.name}: no interpreter for kind {k!r}")   # pragma: no cover


def _check_value(node: Node, t: Tensor, val, pos: int) -> np.ndarray:
    """The graph's declared shape and width must describe what the pattern produced."""
    val = np.asarray(val)
    want = t.resolved_shape(pos)
    if val.shape != want:
        raise GraphError(f"node {node.name}: {t.name} has shape {val.shape}, the graph declares "
                         f"{want}")
    if val.dtype.kind not in "iu":
        raise GraphError(f"node {node.name}: {t.name} is not an integer array ({val.dtype})")
    lo, hi = -(1 << (t.bits - 1)), (1 << (t.bits - 1)) - 1
    if val.size and (int(val.min()) < lo or int(val.max()) > hi):
        raise GraphError(f"node {node.name}: {t.name} holds values outside int{t.bits}: "
                         f"[{val.min()}, {val.max()}]")
    return val

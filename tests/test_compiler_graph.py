"""Decode graph (sw/compiler/graph.py): structure, identical layers, bit-exact interpreter."""

import copy
import dataclasses

import numpy as np
import pytest

from sw import golden, quant
from sw.compiler.graph import (HBM, KINDS, ONCHIP, Graph, GraphError, ParamRef,
                               build_graph, execute, run_graph)
from sw.frontend import load_model
from sw.golden import GoldenDecoder
from sw.model import random_model

from compiler_shapes import DEFAULT_MODEL, RANDOM_CONFIGS

@pytest.fixture(scope="module")
def default_qm():
    return golden.quantized(load_model(DEFAULT_MODEL))


@pytest.fixture(scope="module", params=sorted(RANDOM_CONFIGS))
def random_qm(request):
    cfg = RANDOM_CONFIGS[request.param]
    return quant.quantize(random_model(cfg, seed=len(request.param)))


def rebuilt(g: Graph, edit) -> Graph:
    """A deep copy of ``g`` with ``edit(nodes_by_name)`` applied, re-validated."""
    nodes = copy.deepcopy(g.nodes)
    edit({n.name: n for n in nodes})
    return Graph(g.name, g.config, nodes, g.inputs, g.outputs)


def assert_same_steps(g, qm, tokens, check_state=True):
    """Golden step and graph step side by side: logits, dtype, KV cache, position."""
    ref, dut = GoldenDecoder(qm), GoldenDecoder(qm)
    for t in tokens:
        want = ref.step(t)
        env = execute(g, qm, dut, t)
        got = env["logits"]
        assert got.dtype == want.dtype == np.int32
        assert np.array_equal(got, want), f"logits differ at pos {ref.pos - 1}"
        assert int(env["next_token"]) == GoldenDecoder.argmax(want)
        if check_state:
            assert dut.pos == ref.pos
            assert np.array_equal(dut.k_cache, ref.k_cache)
            assert np.array_equal(dut.v_cache, ref.v_cache)


# ---- bit-exactness ----------------------------------------------------------------------------

def test_default_model_bit_exact(default_qm):
    g = build_graph(default_qm)
    m = load_model(DEFAULT_MODEL)
    ids = [m.tokenizer.bos_id] + m.tokenizer.encode("And God said, Let there be light")
    assert_same_steps(g, default_qm, ids[:16])


def test_random_models_bit_exact(random_qm):
    g = build_graph(random_qm)
    c = random_qm.config
    rng = np.random.default_rng(c.dim)
    tokens = rng.integers(0, c.vocab_size, size=c.max_seq_len).tolist()   # the whole context
    assert_same_steps(g, random_qm, tokens)
    with pytest.raises(ValueError, match="max_seq_len"):
        dec = GoldenDecoder(random_qm)
        dec.pos = c.max_seq_len
        run_graph(g, random_qm, dec, 0)


def test_every_traced_value_matches_golden(default_qm):
    """Intermediate tensors equal GoldenDecoder's traces (localises a mismatch to a node)."""
    g = build_graph(default_qm)
    ref_trace, dut_trace = {}, {}

    def recorder(into):
        return lambda name, layer, arr: into.setdefault((name, layer), []).append(np.array(arr))
    ref = GoldenDecoder(default_qm, trace=recorder(ref_trace))
    dut = GoldenDecoder(default_qm, trace=recorder(dut_trace))
    for t in (3, 99, 257):
        ref.step(t)
        run_graph(g, default_qm, dut, t)
    assert ref_trace.keys() == dut_trace.keys()
    for key in ref_trace:
        assert len(ref_trace[key]) == len(dut_trace[key]), key
        for a, b in zip(ref_trace[key], dut_trace[key]):
            assert a.dtype == b.dtype and np.array_equal(a, b), key


def test_graph_state_continues_golden_state(default_qm):
    """Golden and graph steps are interchangeable on one decoder state."""
    g = build_graph(default_qm)
    ref, mixed = GoldenDecoder(default_qm), GoldenDecoder(default_qm)
    for i, t in enumerate([5, 6, 7, 8, 9, 10]):
        want = ref.step(t)
        got = mixed.step(t) if i % 2 else run_graph(g, default_qm, mixed, t)
        assert np.array_equal(want, got)


def test_bad_token_refused(default_qm):
    g = build_graph(default_qm)
    with pytest.raises(ValueError, match="vocabulary"):
        run_graph(g, default_qm, GoldenDecoder(default_qm), default_qm.config.vocab_size)


# ---- structure --------------------------------------------------------------------------------

def test_kinds_and_per_layer_structure(default_qm):
    g = build_graph(default_qm)
    c = default_qm.config
    assert {n.kind for n in g.nodes} == set(KINDS)
    kinds = [n.kind for n in g.layer_nodes(0)]
    assert kinds == ["rmsnorm", "gemv", "gemv", "gemv", "rope", "rope", "kv_write", "attn_scores",
                     "softmax_num", "attn_wsum", "gemv", "residual", "rmsnorm", "gemv", "gemv",
                     "swiglu", "gemv", "residual"]
    outside = [(n.name, n.kind, n.layer) for n in g.nodes if n.layer < 0]
    assert outside == [("embed", "embed", -1), ("final_norm", "rmsnorm", -1),
                       ("lm_head", "gemv", -1), ("argmax", "argmax", -1)]
    assert len(g.nodes) == 4 + c.n_layers * len(kinds)
    lm = g.node("lm_head")
    assert lm.attrs["out_bits"] == 32 and lm.outputs["y"].bits == 32
    assert lm.outputs["y"].location == HBM and g.node("l2.wq").outputs["y"].location == ONCHIP
    # named tensors, shapes, widths
    wq = g.node("l3.wq")
    assert wq.inputs["x"].name == "l3.h_attn" and wq.inputs["x"].bits == 8
    assert wq.outputs["y"].shape == (c.n_heads, c.head_dim) and wq.outputs["y"].bits == 16
    assert g.node("l1.w_down").inputs["x"].bits == 16          # int16 down-projection input
    kc = g.node("l2.kv_write").outputs["k_cache"]
    assert kc.location == HBM and kc.role == "state"
    assert kc.shape == (c.n_kv_heads, c.max_seq_len, c.head_dim) and kc.bits == 8
    assert g.node("l1.norm_attn").inputs["x"].name == "l0.x_out"   # layers chain
    assert g.node("l0.norm_attn").inputs["x"].name == "x"


def test_params_are_references_not_copies(default_qm):
    g = build_graph(default_qm)
    wq = g.node("l3.wq")
    assert wq.params["w"].refs == (ParamRef("wq", 3),)
    assert wq.params["rq"].refs == (ParamRef("wq_m", 3), ParamRef("wq_s", 3))
    (w,) = wq.params["w"].values(default_qm)
    assert np.shares_memory(w, default_qm.wq) and np.array_equal(w, default_qm.wq[3])
    for n in g.nodes:
        for p in n.params.values():
            for r in p.refs:
                assert isinstance(r.attr, str) and isinstance(r.layer, int)
                assert r.layer == n.layer or r.layer == -1
            # no array is stored in the graph
            assert not any(isinstance(v, np.ndarray) for v in dataclasses.astuple(p))
    rope = g.node("l0.rope_q").params
    assert rope["cos"].refs == (ParamRef("rope_cos"),)
    assert rope["sin"].refs == (ParamRef("rope_sin"),)


def test_every_quantmodel_array_is_bound(default_qm):
    """The graph (hence the layout) covers every integer array of the QuantModel."""
    g = build_graph(default_qm)
    bound = {r.attr for p in g.params() for r in p.refs}
    arrays = {f.name for f in dataclasses.fields(default_qm)
              if isinstance(getattr(default_qm, f.name), np.ndarray)}
    assert arrays == bound, arrays ^ bound


def test_graph_checks_its_edges(default_qm):
    g = build_graph(default_qm)

    def produce_twice(ns):
        ns["l1.wk"].outputs = {"y": ns["l1.wq"].outputs["y"]}
    with pytest.raises(GraphError, match="produced twice"):
        rebuilt(g, produce_twice)

    def dangling(ns):
        ns["l0.wo"].inputs = {"x": dataclasses.replace(ns["l0.wo"].inputs["x"], name="l0.nowhere")}
    with pytest.raises(GraphError, match="nothing produces"):
        rebuilt(g, dangling)

    def cycle(ns):
        ns["l0.wq"].inputs = {"x": ns["l0.attn_wsum"].outputs["y"]}
        ns["l0.wq"].attrs["x_bits"] = 8
    with pytest.raises(GraphError, match="cycle"):
        rebuilt(g, cycle)

    def clash(ns):
        ns["l0.wk"].inputs = {"x": dataclasses.replace(ns["l0.wk"].inputs["x"], bits=16)}
    with pytest.raises(GraphError, match="declared twice"):
        rebuilt(g, clash)


# ---- identical layers -------------------------------------------------------------------------

def test_layers_identical(default_qm, random_qm):
    for qm in (default_qm, random_qm):
        g = build_graph(qm)
        g.assert_layers_identical()
        sigs = {g.layer_signature(l) for l in range(qm.config.n_layers)}
        assert len(sigs) == 1
        # ... and the signature is not trivially blind: the final norm and LM head differ
        assert len(g.layer_signature(0)) == len(g.layer_nodes(0))


def test_wrong_layer_binding_is_caught(default_qm):
    g = build_graph(default_qm)

    def bind_l2_wq_to_l1(ns):
        p = ns["l2.wq"].params["w"]
        ns["l2.wq"].params["w"] = dataclasses.replace(p, layer=1, refs=(ParamRef("wq", 1),))
    bad = rebuilt(g, bind_l2_wq_to_l1)
    with pytest.raises(GraphError, match=r"layer 2 differs from layer 0 at node 'wq'"):
        bad.assert_layers_identical()
    # and the interpreter is then no longer bit-exact
    with pytest.raises(AssertionError):
        assert_same_steps(bad, default_qm, [1, 2])

    def scale_of_another_layer(ns):   # only the m reference points elsewhere
        p = ns["l4.w_up"].params["rq"]
        ns["l4.w_up"].params["rq"] = dataclasses.replace(
            p, refs=(ParamRef("w_up_m", 0), ParamRef("w_up_s", 4)))
    with pytest.raises(GraphError, match="layer 4 differs"):
        rebuilt(g, scale_of_another_layer).assert_layers_identical()


def test_structural_difference_is_caught(default_qm):
    g = build_graph(default_qm)

    def widen(ns):
        n = ns["l3.swiglu"]
        n.attrs["out_bits"] = 8
    with pytest.raises(GraphError, match="layer 3 differs from layer 0 at node 'swiglu' .attrs."):
        rebuilt(g, widen).assert_layers_identical()

    def drop(ns):
        del ns["l1.residual_ffn"].inputs["y"]
    # l1.down is then a dead end, still a valid graph; layer 1 differs in its inputs
    with pytest.raises(GraphError, match="layer 1 differs"):
        rebuilt(g, drop).assert_layers_identical()


def test_swapped_bindings_break_bit_exactness(default_qm):
    """Bindings that keep every layer identical but are wrong are caught by execution."""
    g = build_graph(default_qm)

    def swap_gate_up(ns):
        for l in range(default_qm.config.n_layers):
            a, b = ns[f"l{l}.w_gate"], ns[f"l{l}.w_up"]
            a.params["w"], b.params["w"] = b.params["w"], a.params["w"]
    bad = rebuilt(g, swap_gate_up)
    bad.assert_layers_identical()
    with pytest.raises(AssertionError):
        assert_same_steps(bad, default_qm, [4, 5, 6])

    def swap_cos_sin(ns):
        for n in ns.values():
            if n.kind == "rope":
                n.params["cos"], n.params["sin"] = n.params["sin"], n.params["cos"]
    with pytest.raises(AssertionError):
        assert_same_steps(rebuilt(g, swap_cos_sin), default_qm, [4, 5, 6])


def test_undeclared_parameter_is_refused(default_qm):
    """A pattern that reads a table the node does not bind is an error, not a silent read."""
    g = build_graph(default_qm)

    def forget_rsqrt(ns):
        del ns["l0.norm_ffn"].params["rsqrt"]
    with pytest.raises(GraphError, match=r"l0.norm_ffn: its pattern reads qm.rsqrt"):
        run_graph(rebuilt(g, forget_rsqrt), default_qm, GoldenDecoder(default_qm), 1)

    def forget_const(ns):
        ns["final_norm"].consts = ("ss_shift", "eps_int")
    with pytest.raises(GraphError, match="qm.rsqrt_bits"):
        run_graph(rebuilt(g, forget_const), default_qm, GoldenDecoder(default_qm), 1)


def test_declared_widths_are_checked(default_qm):
    g = build_graph(default_qm)

    def narrow(ns):     # q is int16; declaring it int8 must be refused when values exceed it
        for name in ("l0.wq", "l0.rope_q"):
            port = "y" if name == "l0.wq" else "x"
            t = (ns[name].outputs if port == "y" else ns[name].inputs)[port]
            (ns[name].outputs if port == "y" else ns[name].inputs)[port] = \
                dataclasses.replace(t, bits=8)
    with pytest.raises(GraphError, match="l0.q holds values outside int8"):
        run_graph(rebuilt(g, narrow), default_qm, GoldenDecoder(default_qm), 300)


# ---- describe and figures ---------------------------------------------------------------------

def test_describe(default_qm):
    g = build_graph(default_qm)
    text = g.describe(pos=0)
    lines = text.splitlines()
    node_lines = [ln for ln in lines if ln.startswith("  ") and not ln.startswith("  *")
                  and not ln.startswith("  node")]
    assert len(node_lines) == len(g.nodes)
    wq = next(ln for ln in node_lines if ln.split()[0] == "l0.wq")
    # 64x64 int8 + 64 requant words = 4,352 B; input and output with shapes and widths
    assert "gemv" in wq and "4,352" in wq and "l0.h_attn[64]i8 -> l0.q[8x8]i16" in wq
    lm = next(ln for ln in node_lines if ln.split()[0] == "lm_head")
    assert "logits[512]i32" in lm
    at = lambda pos: next(ln for ln in g.describe(pos).splitlines() if "l0.attn_scores" in ln)
    assert "32" in at(0).split()[2] and "8,192" == at(255).split()[2]


def test_logical_hbm_figures(default_qm):
    g = build_graph(default_qm)
    c = default_qm.config
    kv_read = lambda pos: 2 * c.n_layers * (pos + 1) * c.kv_dim
    base = g.hbm_read_bytes(0) - kv_read(0)
    assert g.hbm_read_bytes(255) - kv_read(255) == base         # only the KV part grows
    # weights + requant words dominate: at least every int8 weight once
    assert base >= default_qm.weight_bytes()
    assert sum(n.hbm_write_bytes(0) for n in g.nodes) == \
        2 * c.n_layers * c.kv_dim + 4 * c.vocab_size + 4

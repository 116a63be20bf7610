"""The decode program (``sw/compiler/program.py``): HBM map and op-mode kernel calls for the
shipped model and a range of shapes, and the errors for what cannot be compiled."""

import numpy as np
import pytest

from hdl.params import DEFAULT_PARAMS
from sw.compiler.program import CompileError, compile_decode
from sw.golden import quantized
from sw.model import LlamaConfig, random_model
from sw.frontend import load_model

from compiler_shapes import DEFAULT_MODEL, RANDOM_CONFIGS


@pytest.fixture(scope="module")
def qm_default():
    return quantized(load_model(DEFAULT_MODEL))


def _qm(config, seed=3):
    return quantized(random_model(config, seed=seed))


def _check_map(prog):
    p = prog.params
    spans = sorted((a, a + len(d)) for a, d in prog.images())
    for (a0, e0), (a1, e1) in zip(spans, spans[1:]):
        assert e0 <= a1, f"images overlap: [{a0:#x}, {e0:#x}) and [{a1:#x}, {e1:#x})"
    assert spans[-1][1] <= p.hbm_bytes
    acts = sorted((a, a + prog.act_bytes[n]) for n, a in prog.act.items())
    for (a0, e0), (a1, _) in zip(acts, acts[1:]):
        assert e0 <= a1
    assert acts[-1][1] <= spans[0][0]
    assert prog.layer_stride % (p.beat_bytes * p.hbm_burst_beats * p.hbm_channels) == 0
    for a, _ in spans:
        assert a % p.beat_bytes == 0


def test_default_model_map_and_calls(qm_default):
    prog = compile_decode(qm_default, DEFAULT_PARAMS, mode="op")
    _check_map(prog)
    assert prog.compile_seconds < 5
    c = qm_default.config
    calls = prog.token_calls(3, 17)
    assert len(calls) == 1 + 17 * c.n_layers + 3
    assert [k.iteration for k in calls if k.label.startswith("l2.")] == [2] * 17
    # per-layer kernels are built once and launched per layer at iteration = layer
    assert calls[1].kernel is calls[1 + 17].kernel
    # every kernel's bitstream is valid and names only units the chip has
    for call in calls:
        assert call.kernel.unit_ids
        assert len(call.bitstream) > 0
    assert "HBM map" in prog.report()


@pytest.mark.parametrize("name", ["mha-d32-l1-tied", "gqa-d64-l2-untied", "gqa-d96-l3-tied",
                                  "gqa-d128-l4-untied"])
def test_shapes_compile(name):
    prog = compile_decode(_qm(RANDOM_CONFIGS[name]), DEFAULT_PARAMS, mode="op")
    _check_map(prog)
    calls = prog.token_calls(0, 1)
    assert len(calls) == 1 + 17 * RANDOM_CONFIGS[name].n_layers + 3


def test_eight_layers_mqa_untied_compiles():
    """The top of the issue's shape range: 8 layers, MQA (one KV head), untied embeddings."""
    c = LlamaConfig(dim=64, n_layers=8, n_heads=4, n_kv_heads=1, hidden_dim=128,
                    vocab_size=320, max_seq_len=24, tie_embeddings=False)
    prog = compile_decode(_qm(c), DEFAULT_PARAMS, mode="op")
    _check_map(prog)
    calls = prog.token_calls(23, 5)
    assert len(calls) == 1 + 17 * 8 + 3
    assert {k.iteration for k in calls if k.label.startswith("l7.")} == {7}


def test_errors(qm_default):
    with pytest.raises(CompileError, match="unknown mode"):
        compile_decode(qm_default, mode="fast")
    with pytest.raises(CompileError, match="context"):
        compile_decode(qm_default, context=10_000)
    small = DEFAULT_PARAMS.replace(hbm_bytes=256 * 1024)
    with pytest.raises(CompileError, match="HBM"):
        compile_decode(qm_default, small)
    with pytest.raises(CompileError, match="multiple of the 16 lanes.*304"):
        compile_decode(_qm(RANDOM_CONFIGS["mqa-d48-l3-untied"]))
    many = LlamaConfig(dim=64, n_layers=1, n_heads=32, n_kv_heads=32, hidden_dim=64,
                       vocab_size=256, max_seq_len=8)
    with pytest.raises(CompileError, match="32 heads"):
        compile_decode(_qm(many))
    hd12 = LlamaConfig(dim=48, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64,
                       vocab_size=256, max_seq_len=8)
    with pytest.raises(CompileError, match=r"head_dim 12.*\[4, 8, 16, 32\]"):
        compile_decode(_qm(hd12))
    prog = compile_decode(qm_default)
    with pytest.raises(ValueError):
        prog.token_calls(0, qm_default.config.vocab_size)        # token outside the vocabulary


# ---- layer and looped modes: programs of sections ------------------------------------------

from sw.compiler.program import (HEAD_SECTIONS, LAYER_SECTIONS, POSITION_SECTIONS,  # noqa: E402
                                 Section)

FUSED_SHAPES = {
    **{n: RANDOM_CONFIGS[n] for n in ("mha-d32-l1-tied", "gqa-d64-l2-untied", "gqa-d96-l3-tied",
                                      "gqa-d128-l4-untied")},
    "mqa-d64-l8-untied": LlamaConfig(dim=64, n_layers=8, n_heads=4, n_kv_heads=1, hidden_dim=128,
                                     vocab_size=320, max_seq_len=24, tie_embeddings=False),
    "gqa-d128-l8-untied": LlamaConfig(dim=128, n_layers=8, n_heads=4, n_kv_heads=2,
                                      hidden_dim=128, vocab_size=1024, max_seq_len=16,
                                      tie_embeddings=False),
}


def _expected_launches(mode, L):
    return {"op": 1 + 17 * L + 3, "layer": 1 + L + 1, "looped": 3}[mode]


def _check_sections(prog):
    """Slots: one per table entry, in order, 64-B aligned, inside the config region, overlapping
    no other region or image; the pos-0 bitstream in every slot; table entries = slots."""
    p = prog.params
    assert len(prog.sections) == len(LAYER_SECTIONS) + len(HEAD_SECTIONS) <= p.program_entries
    assert [s.name for s in prog.sections] == list(LAYER_SECTIONS + HEAD_SECTIONS)
    assert [s.entry for s in prog.sections] == list(range(20))
    assert prog.programs() == {"layer": (0, 17), "head": (17, 3)}
    lo, hi = prog.config_base, prog.config_base + prog.config_bytes
    assert hi == prog.hbm_end <= p.hbm_bytes
    spans = []
    for s in prog.sections:
        assert s.slot % 64 == 0 and s.slot_bytes % 64 == 0
        assert lo <= s.slot and s.slot + s.slot_bytes <= hi
        assert s.position_dependent == (s.name in POSITION_SECTIONS)
        spans.append((s.slot, s.slot + s.slot_bytes))
    # no slot overlaps another region of the map (the KV cache, blobs, activations, ...)
    others = [(a, a + n) for name, g, a, n in prog.regions if g != "config"]
    for a0, e0 in spans:
        for a1, e1 in others:
            assert e0 <= a1 or e1 <= a0, f"slot [{a0:#x}, {e0:#x}) overlaps [{a1:#x}, {e1:#x})"
    spans.sort()
    for (a0, e0), (a1, _) in zip(spans, spans[1:]):
        assert e0 <= a1
    images = dict(prog.images())
    for s, (addr, n) in zip(prog.sections, prog.table_entries()):
        assert addr == s.slot and images[s.slot] == prog.section_bitstream(s.entry, 0)
        assert n == len(images[s.slot]) <= s.slot_bytes


@pytest.mark.parametrize("name", sorted(FUSED_SHAPES))
def test_fused_modes_compile_across_shapes(name):
    """Every mode compiles across the issue's shape range (dim 32..128, 1..8 layers, MHA /
    GQA / MQA, vocab 256..1024, tied / untied); launches per token: op 1 + 17L + 3, layer
    1 + L + 1, looped 3; the section bitstreams are the op kernels' bitstreams."""
    cfg = FUSED_SHAPES[name]
    qm = _qm(cfg)
    L = cfg.n_layers
    op = compile_decode(qm, DEFAULT_PARAMS, mode="op")
    last = op.context - 1
    for mode in ("op", "layer", "looped"):
        prog = op if mode == "op" else compile_decode(qm, DEFAULT_PARAMS, mode=mode)
        _check_map(prog)
        for pos in (0, last):
            launches = prog.token_launches(pos, 1)
            assert len(launches) == _expected_launches(mode, L)
            assert launches[0].kind == "call" and launches[0].label == "embed"
            if mode == "op":
                assert all(x.kind == "call" for x in launches)
                continue
            _check_sections(prog)
            progs = launches[1:]
            assert all(x.kind == "program" for x in progs)
            assert progs[-1].program == "head" and (progs[-1].first, progs[-1].n_sections,
                                                    progs[-1].iteration, progs[-1].count) == \
                (17, 3, 0, 1)
            layer = progs[:-1]
            if mode == "layer":
                assert [(x.first, x.n_sections, x.iteration, x.count) for x in layer] == \
                    [(0, 17, l, 1) for l in range(L)]
            else:
                assert [(x.first, x.n_sections, x.iteration, x.count) for x in layer] == \
                    [(0, 17, 0, L)]
            assert sum(x.n_sections * x.count for x in progs) == 17 * L + 3
            # the op calls of layer 0 and of the head, kernel by kernel, are the sections
            calls = op.token_calls(pos, 1)
            op_bytes = [c.bitstream for c in calls[1:18]] + [c.bitstream for c in calls[-3:]]
            assert [k.to_bytes() for k in prog.section_kernels(pos)] == op_bytes
            # the position's bitstreams ride on the first layer-program launch only
            dep = [s for s in prog.sections if s.position_dependent]
            assert layer[0].updates == [(s.slot, prog.section_bitstream(s.entry, pos))
                                        for s in dep]
            assert layer[0].table == [(s.entry, s.slot, len(prog.section_bitstream(s.entry, pos)))
                                      for s in dep]
            assert all(not x.updates and not x.table for x in progs[1:])
            # every kernel's AGCU program stays inside the data map: no kernel touches a slot
            assert all(x.budget() > 0 for x in progs)


def test_default_model_fused_modes(qm_default):
    c = qm_default.config
    for mode in ("layer", "looped"):
        prog = compile_decode(qm_default, DEFAULT_PARAMS, mode=mode)
        assert prog.compile_seconds < 5
        _check_map(prog)
        _check_sections(prog)
        assert len(prog.token_launches(7, 3)) == _expected_launches(mode, c.n_layers)
        # token_calls still describes the same kernels one by one
        assert len(prog.token_calls(7, 3)) == 1 + 17 * c.n_layers + 3
        # the layout below the config region is op mode's: same kernels, same bitstreams
        op = compile_decode(qm_default, DEFAULT_PARAMS, mode="op")
        assert [r for r in prog.regions if r[1] != "config"] == op.regions
        # a position-dependent slot holds the bitstream of every position of the context
        for s in prog.sections:
            if s.position_dependent:
                for pos in range(0, prog.context, 51):
                    assert len(prog.section_bitstream(s.entry, pos)) <= s.slot_bytes
        text = prog.report()
        assert "config" in text and "section 19: head argmax" in text


def _image_digest(mode):
    import hashlib
    prog = compile_decode(quantized(load_model(DEFAULT_MODEL)), DEFAULT_PARAMS, mode=mode)
    h, u = hashlib.sha256(), hashlib.sha256()
    for addr, data in prog.images():
        h.update(addr.to_bytes(8, "little") + len(data).to_bytes(8, "little") + data)
    for x in prog.token_launches(9, 4):
        u.update(x.label.encode())
        for addr, data in getattr(x, "updates", []):
            u.update(addr.to_bytes(8, "little") + data)
    return f"{h.hexdigest()}:{u.hexdigest()}"


def test_images_deterministic():
    """The HBM image and the per-token updates are the same bytes in every compile, also in
    another interpreter with another hash seed (set and dict orders)."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys; sys.path.insert(0, %r); from test_program import _image_digest; "
            "print(_image_digest('looped'), _image_digest('layer'))" % here)
    outs = set()
    for seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, cwd=os.path.dirname(here), timeout=300)
        assert r.returncode == 0, r.stderr
        outs.add(r.stdout.strip())
    outs.add(f"{_image_digest('looped')} {_image_digest('layer')}")
    assert len(outs) == 1, outs
    a, b = outs.pop().split()
    assert a.split(":")[0] == b.split(":")[0]     # layer and looped: one image


def test_fused_mode_errors(qm_default):
    few = DEFAULT_PARAMS.replace(program_entries=16)
    with pytest.raises(CompileError) as e:
        compile_decode(qm_default, few, mode="looped")
    msg = str(e.value)
    assert "\n" not in msg and "20 section-table entries" in msg and "has 16" in msg
    compile_decode(qm_default, few, mode="op")            # op mode needs no table
    # HBM that holds op mode's map but not the section bitstreams after it
    op = compile_decode(qm_default, DEFAULT_PARAMS, mode="op")
    tight = DEFAULT_PARAMS.replace(hbm_bytes=1024 * 1024)
    assert op.hbm_end < tight.hbm_bytes
    compile_decode(qm_default, tight, mode="op")
    prog = compile_decode(qm_default, DEFAULT_PARAMS, mode="layer")
    if prog.hbm_end > tight.hbm_bytes:
        with pytest.raises(CompileError, match="section bitstreams"):
            compile_decode(qm_default, tight, mode="layer")
    # a position-dependent bitstream that outgrows its slot: a clear error naming the section
    import dataclasses
    s = prog.sections[7]
    assert s.name == "attn"
    prog.sections[7] = dataclasses.replace(s, slot_bytes=64)
    with pytest.raises(CompileError) as e:
        prog.token_launches(3, 1)
    assert "\n" not in str(e.value)
    assert "section 7 (attn) at position 3" in str(e.value) and "slot" in str(e.value)
    with pytest.raises(ValueError, match="outside the compiled context"):
        compile_decode(qm_default, DEFAULT_PARAMS, mode="looped", context=8).token_launches(8, 1)


def _replay(regs: dict, data: bytes):
    from sw.bitstream import Bitstream
    for w in Bitstream.from_bytes(data, DEFAULT_PARAMS).writes:
        regs[(w.unit, w.reg)] = w.value


@pytest.mark.parametrize("name", ["default", "gqa-d128-l4-untied", "mha-d32-l1-tied"])
def test_delta_sections_leave_the_fabric_as_the_kernels_would(name, qm_default):
    """Whatever the fabric held before a program, loading its slots' delta bitstreams in order
    leaves every register as loading the kernels' own bitstreams would, after every section, at
    every sampled position (the static deltas are built once; the position-dependent ones per
    position); a program's first section is whole; slots carry no ROUTES debug data."""
    import random
    from sw.bitstream import Bitstream
    qm = qm_default if name == "default" else _qm(RANDOM_CONFIGS[name])
    prog = compile_decode(qm, DEFAULT_PARAMS, mode="looped")
    assert prog.delta
    last = prog.context - 1
    n_full = n_delta = 0
    for pos in sorted({0, 1, 2, 5, last // 3, last - 1, last}):
        images = prog.section_images(pos)
        fulls = [k.to_bytes() for k in prog.section_kernels(pos)]
        for program, (first, n) in prog.programs().items():
            rng = random.Random(pos)
            before = {}
            for f in fulls[first:first + n]:
                for w in Bitstream.from_bytes(f, DEFAULT_PARAMS).writes:
                    before[(w.unit, w.reg)] = rng.randrange(2 ** 32)
            a, b = dict(before), dict(before)
            for e in range(first, first + n):
                _replay(a, fulls[e])
                _replay(b, images[e])
                assert a == b, f"{program} program, section {e}, position {pos}"
                img = Bitstream.from_bytes(images[e], DEFAULT_PARAMS)
                full = Bitstream.from_bytes(fulls[e], DEFAULT_PARAMS)
                assert img.routes is None and img.kernels == full.kernels
                if e == first:
                    assert img.writes == full.writes
                n_full += len(full.writes)
                n_delta += len(img.writes)
    assert n_delta * 3 < n_full, (n_delta, n_full)


def test_without_delta_slots_hold_the_kernels_bitstreams(qm_default):
    prog = compile_decode(qm_default, DEFAULT_PARAMS, mode="layer", delta=False)
    assert not prog.delta
    _check_sections(prog)
    for pos in (0, 9):
        assert prog.section_images(pos) == [k.to_bytes() for k in prog.section_kernels(pos)]
    delta = compile_decode(qm_default, DEFAULT_PARAMS, mode="layer")
    assert delta.config_bytes < prog.config_bytes
    assert [r for r in delta.regions if r[1] != "config"] == \
        [r for r in prog.regions if r[1] != "config"]


def test_delta_assumption_broken_is_a_clear_error(qm_default):
    """The static sections' deltas count on registers a position-dependent section writes with
    the same value at every sampled position; a position where that fails must stop the
    decode with an error naming the section, not load a wrong configuration."""
    prog = compile_decode(qm_default, DEFAULT_PARAMS, mode="looped")
    keys, fixed = prog._assumed[7]
    k = sorted(fixed)[0]
    prog._assumed[7] = (keys, {**fixed, k: fixed[k] ^ 1})
    with pytest.raises(CompileError) as e:
        prog.token_launches(11, 1)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"section 7 (attn) at position 11 writes unit {k[0]} register {k[1]}" in msg
    assert "delta=False" in msg

"""Delta configuration (``sw/compiler/delta.py``): replaying a program's delta bitstreams leaves
every register exactly as the full bitstreams would, on the real decode sections of the shipped
model, with far fewer records; what the hardware consumes is unchanged."""

import random

import pytest

from hdl.params import DEFAULT_PARAMS as P
from sw.bitstream import Bitstream, check
from sw.compiler.delta import KnownState, delta_bitstream, section_deltas


@pytest.fixture(scope="module")
def layer_sections():
    from sw.compiler.program import compile_decode
    from sw.frontend import load_model
    from sw.golden import quantized
    qm = quantized(load_model("models/kjv-280k"))
    prog = compile_decode(qm, P, mode="op")
    calls = [c for c in prog.token_calls(3, 10) if c.label.startswith("l1.")]
    return [c.bitstream for c in calls], [c.label for c in calls]


def _replay(regs: dict, data: bytes):
    for w in Bitstream.from_bytes(data, P).writes:
        regs[(w.unit, w.reg)] = w.value


def test_deltas_leave_the_fabric_as_the_full_bitstreams_would(layer_sections):
    fulls, names = layer_sections
    deltas = section_deltas(fulls, P, names)
    rng = random.Random(3)
    # whatever ran before the program: random values everywhere the layer writes
    before = {(w.unit, w.reg): rng.randrange(2**32)
              for f in fulls for w in Bitstream.from_bytes(f, P).writes}
    a, b = dict(before), dict(before)
    for k, (full, (delta, n)) in enumerate(zip(fulls, deltas)):
        _replay(a, full)
        _replay(b, delta)
        assert a == b, f"after section {k} ({names[k]}) the delta state differs"
        got = Bitstream.from_bytes(delta, P)
        assert len(got.writes) == n
        assert got.kernels == Bitstream.from_bytes(full, P).kernels
        assert got.routes is None
    full_records = sum(len(Bitstream.from_bytes(f, P).writes) for f in fulls)
    delta_records = sum(n for _, n in deltas)
    assert delta_records * 3 < full_records, (delta_records, full_records)
    # the first section is whole: nothing is assumed about what ran before the program
    assert deltas[0][1] == len(Bitstream.from_bytes(fulls[0], P).writes)


def test_a_delta_keeps_writes_whose_value_is_unknown_or_different(layer_sections):
    fulls, names = layer_sections
    bs = Bitstream.from_bytes(fulls[1], P)
    known = KnownState()
    known.apply(bs)
    w0 = bs.writes[0]
    known.regs[(w0.unit, w0.reg)] = w0.value ^ 1        # different: must be written
    del known.regs[(bs.writes[1].unit, bs.writes[1].reg)]   # unknown: must be written
    data, n = delta_bitstream(fulls[1], known, P, names[1])
    writes = Bitstream.from_bytes(data, P).writes
    assert n == 2 and [(w.unit, w.reg, w.value) for w in writes] == \
        [(w.unit, w.reg, w.value) for w in bs.writes[:2]]


def test_deltas_are_valid_bitstreams_the_hardware_accepts(layer_sections):
    fulls, names = layer_sections
    for (data, _), full in zip(section_deltas(fulls, P, names), fulls):
        check(data, P)                       # the config controller's checks, in software
        assert len(data) < len(full)

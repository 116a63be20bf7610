"""The checked run every decode-kernel chip test makes (host side; the cocotb side is
``tb/pattern_tb.py``): write the cases, corrupt the golden image of the cases meant to fail,
run them all in one simulation (:func:`sw.kernels.patterns.run_cases`: one chip bring-up),
then check that exactly the corrupted cases failed, each at the one element flipped, and that
every other case is bit-exact and moved exactly the HBM bytes it should.

A case is ``(label, launch)``: ``launch`` is a :class:`Launch` (or anything with its
attributes, such as ``tb.attention_case.AttnCase``) or a bare
:class:`sw.kernels.patterns.PatternKernel` (launched at iteration 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from sw.kernels.patterns import PatternKernel, run_cases, write_case

__all__ = ["Launch", "declared_traffic", "image_traffic", "hbm_traffic", "run_checked"]


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a case: the runnable ``pk``, the :class:`DecodeKernel` ``k`` it was
    built from (its declared ``reads``/``writes``; None for a bare pattern), the sequencer
    ``iteration`` it is launched at (layer ``iteration``) and, for a kernel that updates its
    output region in place, the region's ``initial`` bytes (else the testbench fills it with
    the complement of the expected bytes)."""
    pk: PatternKernel
    k: object = None
    iteration: int = 0
    initial: bytes | None = None


def _launch(c) -> Launch:
    if isinstance(c, PatternKernel):
        return Launch(c)
    return Launch(c.pk, getattr(c, "k", None), getattr(c, "iteration", 0),
                  getattr(c, "initial", None))


def declared_traffic(c: Launch) -> tuple[int, int]:
    """The DecodeKernel's declared bytes: ``(sum(reads), sum(writes))``."""
    return sum(c.k.reads.values()), sum(c.k.writes.values())


def image_traffic(c: Launch) -> tuple[int, int]:
    """Every HBM image read once and the output region written once."""
    out = c.pk.output.nbytes
    return c.pk.hbm_bytes - out, out


def hbm_traffic(p, counters) -> tuple[int, int]:
    """``(bytes read, bytes written)`` over every HBM channel, from the chip's counters."""
    rd = sum(counters[f"ch{j}_rd_beats"] for j in range(p.hbm_channels))
    wr = sum(counters[f"ch{j}_wr_beats"] for j in range(p.hbm_channels))
    return rd * p.beat_bytes, wr * p.beat_bytes


def run_checked(p, tmp_path, cases, *, corrupt=None, traffic=declared_traffic, describe=None):
    """Run ``cases`` (``(label, launch)`` pairs) in one simulation of the chip ``p``.

    ``corrupt``: ``{label: element}``; the low byte of that element of the case's golden
    image is flipped (a negative element counts from the end): the run must fail, naming
    exactly these cases, each with one differing element, that one. Every other case must be
    bit-exact and move exactly ``traffic(launch)`` = ``(bytes read, bytes written)`` (measured
    after the read-back, minus the read-back's own read of the output region). ``describe``:
    ``(label, launch) -> str`` appended to the per-case line printed (its cycles). Returns the
    per-case results, in order."""
    corrupt = dict(corrupt or {})
    launches = [(label, _launch(c)) for label, c in cases]
    unknown = set(corrupt) - {label for label, _ in launches}
    assert not unknown, f"corrupt names no case: {sorted(unknown)}"
    written, flipped = [], {}
    for i, (label, c) in enumerate(launches):
        w = write_case(c.pk, tmp_path / f"case{i}", name=label, iteration=c.iteration,
                       initial=c.initial)
        if label in corrupt:
            exp = bytearray(c.pk.expected)
            n = len(exp) * 8 // c.pk.elem_bits
            elem = corrupt[label] % n
            exp[elem * c.pk.elem_bits // 8] ^= 0x01
            with open(w["expected"], "wb") as f:
                f.write(bytes(exp))
            flipped[label] = (elem, n)
        written.append(w)
    results, info, err = run_cases(p, written, tmp_path)
    print(f"simulation: {info}")
    if not flipped and err is not None:
        raise err
    if flipped:
        assert err is not None, "corrupted golden images were not reported"
        msg = str(err)
        for label, (elem, n) in flipped.items():
            assert f"{label}: 1/{n} elements differ, first element {elem}:" in msg, msg
        others = [label for label, _ in launches if label not in flipped
                  and f"{label}: " in msg]
        assert not others, (others, msg)
    for (label, c), res in zip(launches, results):
        if label in flipped:
            assert not res["bit_exact"] and res["mismatches"] == 1, (label, res)
            assert res["first_mismatch"]["index"] == flipped[label][0], (label, res)
            continue
        assert res["bit_exact"], (label, res["first_mismatch"])
        cnt = res["counters_after_readback"]        # the read-back reads the output once more
        rd, wr = hbm_traffic(p, cnt)
        assert (rd - c.pk.output.nbytes, wr) == tuple(traffic(c)), (label, cnt)
        extra = describe(label, c) if describe else ""
        print(f"{label}: {res['counters']['run_busy_cycles']} cycles{extra}")
    return results

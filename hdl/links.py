"""The fabric's link types and the unit-control interface every configurable unit shares.

Three networks join the units of the fabric (DESIGN.md section 2), each a ``lib.stream`` link
with ready/valid back-pressure; a transfer happens in a cycle where ``valid & ready``:

- **vector** links carry one beat: ``params.lanes`` words of ``params.word_bits`` bits
  (16 x 32 bit = 512 bit by default; lane ``i`` is bits ``[32*i, 32*i+32)``). Packed int8 data
  (e.g. weights for DP4) puts byte ``4*i+j`` of the beat in byte ``j`` of lane ``i``.
- **scalar** links carry one 32-bit word.
- **control** links carry tokens: a payload-less stream (``valid``/``ready`` only). A token means
  "an event happened" — a buffer became full/empty, an iteration finished — and is how producers
  and consumers hand buffers over (Plasticine-style), without a processor.

Unit control (:func:`unit_control_signature`) is the interface between the looping sequencer (or,
before it exists, the host CSR block) and every unit that runs a program (AGCU, PCU, PMU):

- ``start``: one-cycle pulse; the unit (re)starts its configured program.
- ``iteration``: the outer-loop iteration index for this start, sampled with ``start``. Units
  that support per-iteration offsets add ``iteration * <their stride register>`` to their base.
- ``busy``: high from the cycle after ``start`` until ``done``.
- ``done``: one-cycle pulse when the program has finished (all outputs delivered).
- ``status``: 0 = OK; non-zero = a unit-specific error code (documented in each unit), held
  until the next ``start``.

Signatures are seen from the unit's *controller* (sequencer): ``start``/``iteration`` are
``Out``; a unit uses ``In(unit_control_signature())`` i.e. the flipped view.
"""

from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .params import RduParams

__all__ = ["vector_link", "scalar_link", "control_link", "unit_control_signature",
           "ITERATION_BITS", "STATUS_BITS"]

ITERATION_BITS = 16
STATUS_BITS = 4


def vector_link(p: RduParams) -> stream.Signature:
    return stream.Signature(p.beat_bits)


def scalar_link(p: RduParams) -> stream.Signature:
    return stream.Signature(p.word_bits)


def control_link() -> stream.Signature:
    return stream.Signature(0)


def unit_control_signature() -> wiring.Signature:
    return wiring.Signature({
        "start": Out(1),
        "iteration": Out(ITERATION_BITS),
        "busy": In(1),
        "done": In(1),
        "status": In(STATUS_BITS),
    })

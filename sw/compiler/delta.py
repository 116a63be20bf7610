"""Delta configuration: the bitstream a section needs when the compiler knows what the fabric's
registers already hold.

Every unit's configuration registers are plain registers (``hdl/pcu.py``, ``hdl/pmu.py``,
``hdl/agcu.py``, ``hdl/switch.py``: a config write stores its value and does nothing else), so
writing a register with the value it already holds changes nothing. Inside a program of
sections (``hdl/sections.py``) the compiler knows the order in which sections run, hence the
value every register holds when a section starts -- for every register some earlier section of
the same program wrote. A section's *delta* bitstream keeps only the writes whose value is not
already known to be there. The fabric ends up in exactly the state the full bitstream would
leave it in, with far fewer records (the config bus replays one per cycle) and bytes (the
section sequencer reads them from HBM).

Which registers are known: :class:`KnownState` starts empty at a program's first section
(nothing is assumed about what ran before: that section must be loaded *full*) and after each
section holds the last value every section so far wrote, full writes counted (a delta's effect
is the full bitstream's effect). A program whose first section is entered from several
predecessors (a looped layer body entered from the embedding and from its own last section)
keeps that first section full.

Delta bitstreams carry the CONFIG and KERNELS sections and a small METADATA object, never the
ROUTES debug JSON: the hardware consumes only the first two, and every byte is read from HBM on
every launch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hdl.params import RduParams
from sw.bitstream import Bitstream

__all__ = ["KnownState", "lean_bitstream", "delta_bitstream", "section_deltas"]


@dataclass
class KnownState:
    """(unit id, register) -> value known to be in the fabric."""
    regs: dict = field(default_factory=dict)

    def apply(self, bs: Bitstream) -> None:
        for w in bs.writes:
            self.regs[(w.unit, w.reg)] = w.value

    def copy(self) -> "KnownState":
        return KnownState(dict(self.regs))


def lean_bitstream(bs: Bitstream, name: str, writes=None, **metadata) -> bytes:
    """``bs`` with ``writes`` (default: all of them), its kernel table, no ROUTES and a METADATA
    of just ``{"section": name, ...}``: what a section stored in HBM needs."""
    md = {"section": name, **metadata}
    return Bitstream(bs.params_digest, list(bs.writes if writes is None else writes),
                     list(bs.kernels), md, None, bs.flags).to_bytes()


def delta_bitstream(full: bytes, known: KnownState, p: RduParams, name: str) -> tuple[bytes, int]:
    """(delta bitstream of ``full`` given ``known``, number of records it keeps). ``known`` is
    not changed (call :meth:`KnownState.apply` with the full bitstream afterwards)."""
    bs = Bitstream.from_bytes(full, p)
    keep = [w for w in bs.writes if known.regs.get((w.unit, w.reg), None) != w.value]
    return lean_bitstream(bs, name, keep, delta=True), len(keep)


def section_deltas(fulls: list[bytes], p: RduParams, names: list[str]) -> list[tuple[bytes, int]]:
    """Bitstreams of a program's sections in run order: the first lean but full, every later one
    the delta against what the sections before it left. Returns (bytes, records) per section."""
    known = KnownState()
    out = []
    for k, (full, name) in enumerate(zip(fulls, names)):
        bs = Bitstream.from_bytes(full, p)
        if k == 0:
            out.append((lean_bitstream(bs, name), len(bs.writes)))
        else:
            out.append(delta_bitstream(full, known, p, name))
        known.apply(bs)
    return out

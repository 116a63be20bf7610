"""The chip's configurable units and their ids on the configuration bus.

Everything here is derived from :class:`~hdl.params.RduParams` alone, so the compiler (which
writes bitstreams), the config controller (which checks them) and ``rdu inspect`` (which prints
them) agree on which id names which unit.

Unit ids (8 bits, :data:`hdl.bus.CONFIG_UNIT_BITS`) are assigned in contiguous ranges, one range per
kind, in this order:

==========  ======================  ==================================================
kind        count                   position (``row, col``)
==========  ======================  ==================================================
agcu        ``n_agcus``             edge column: AGCU ``i < ceil(n/2)`` on the west
                                    (``col = -1``), the rest on the east
                                    (``col = grid_cols``); rows spread evenly
pcu         ``n_pcus``              tile ``(r, c)`` with ``(r + c)`` even, row-major order
pmu         ``n_pmus``              tile ``(r, c)`` with ``(r + c)`` odd, row-major order
switch      ``grid_rows*grid_cols`` one per tile (grid point), row-major order
sequencer   1                       none
==========  ======================  ==================================================

For the default 4 x 4 grid: agcu 0-3, pcu 4-11, pmu 12-19, switch 20-35, sequencer 36 (37 ids).
A geometry that needs more than 256 ids is refused (:class:`ValueError`).

Register counts
    Each unit of kind ``k`` has :func:`regs_per_kind` ``(k)`` configuration registers, addresses
    ``0 .. n-1`` on the config bus; the config controller refuses a bitstream that writes outside
    that range (``REG_OUT_OF_RANGE``). :data:`REGS_PER_KIND` holds the placeholder counts used
    until the unit module exists (64 each). A unit module ``hdl/<kind>.py`` declares its real
    register map at module level (imported lazily, so this module never depends on the unit
    modules):

    - the count: ``N_CONFIG_REGS`` or ``<KIND>_N_REGS`` (e.g. ``PCU_N_REGS``), 1..256 (the 8-bit
      bus address); without one, ``max(register enum) + 1``;
    - the names (for ``rdu inspect``): ``CONFIG_REGS``, an :class:`enum.IntEnum`, or else the one
      IntEnum of the module whose name ends in ``Reg``/``Regs`` (``AgcuReg``, ``PcuReg``, ...).
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass
from functools import lru_cache

from .params import RduParams

__all__ = ["UnitInfo", "KINDS", "REGS_PER_KIND", "MAX_UNITS", "unit_map", "unit_by_id",
           "units_of_kind", "unit_id", "regs_per_kind", "MAX_REGS", "register_enum", "kind_ranges"]

KINDS = ("agcu", "pcu", "pmu", "switch", "sequencer")

# Upper bound on the registers of each kind until its unit module defines CONFIG_REGS.
REGS_PER_KIND = {
    "agcu": 64,
    "pcu": 64,
    "pmu": 64,
    "switch": 64,
    "sequencer": 64,
}

MAX_UNITS = 256  # 8-bit unit id on the config bus
MAX_REGS = 256   # 8-bit register address on the config bus


@dataclass(frozen=True)
class UnitInfo:
    id: int                      # config-bus unit id
    kind: str                    # one of KINDS
    index: int                   # index among units of this kind
    n_regs: int                  # configuration registers 0 .. n_regs-1
    pos: tuple[int, int] | None  # (row, col) on the grid; edge units have col -1 / grid_cols

    @property
    def name(self) -> str:
        return f"{self.kind}{self.index}"


@lru_cache(maxsize=None)
def _unit_module(kind: str):
    try:
        return importlib.import_module(f"hdl.{kind}")
    except ModuleNotFoundError as e:
        if e.name in (f"hdl.{kind}",):
            return None
        raise


def register_enum(kind: str) -> type[enum.IntEnum] | None:
    """The IntEnum of register names of ``kind``, when its unit module defines one."""
    mod = _unit_module(kind)
    if mod is None:
        return None
    regs = getattr(mod, "CONFIG_REGS", None)
    if isinstance(regs, type) and issubclass(regs, enum.IntEnum):
        return regs
    found = [v for k, v in vars(mod).items()
             if isinstance(v, type) and issubclass(v, enum.IntEnum) and v is not enum.IntEnum
             and (k.endswith("Reg") or k.endswith("Regs")) and v.__module__ == mod.__name__]
    return found[0] if len(found) == 1 else None


def regs_per_kind(kind: str) -> int:
    """Configuration register count of a unit of ``kind`` (real count, or the bound)."""
    mod = _unit_module(kind)
    n = None
    if mod is not None:
        n = getattr(mod, "N_CONFIG_REGS", None)
        if n is None:
            n = getattr(mod, f"{kind.upper()}_N_REGS", None)
    if n is None:
        regs = register_enum(kind)
        if regs is not None and len(regs):
            n = max(int(r) for r in regs) + 1
    if n is None:
        return REGS_PER_KIND[kind]
    n = int(n)
    if not 0 < n <= MAX_REGS:
        raise ValueError(f"hdl/{kind}.py declares {n} configuration registers; the config bus "
                         f"addresses 1..{MAX_REGS}")
    return n


def _agcu_positions(p: RduParams) -> list[tuple[int, int]]:
    n = p.n_agcus
    west = (n + 1) // 2
    pos = []
    for i in range(n):
        side, k, cnt = (-1, i, west) if i < west else (p.grid_cols, i - west, n - west)
        row = (k * p.grid_rows) // cnt if cnt else 0
        pos.append((row, side))
    return pos


def kind_ranges(p: RduParams) -> list[tuple[str, int, int, int]]:
    """``[(kind, first_id, count, n_regs)]`` in id order: what the hardware checker needs."""
    counts = {"agcu": p.n_agcus, "pcu": p.n_pcus, "pmu": p.n_pmus, "switch": p.n_tiles,
              "sequencer": 1}
    out, base = [], 0
    for k in KINDS:
        out.append((k, base, counts[k], regs_per_kind(k)))
        base += counts[k]
    if base > MAX_UNITS:
        raise ValueError(f"geometry needs {base} configurable units; the 8-bit config bus "
                         f"addresses at most {MAX_UNITS}")
    return out


@lru_cache(maxsize=32)
def unit_map(p: RduParams) -> tuple[UnitInfo, ...]:
    """All configurable units of a chip with geometry ``p``, in id order (``ids == 0..n-1``)."""
    ranges = {k: (base, cnt, nregs) for k, base, cnt, nregs in kind_ranges(p)}
    tiles = [(r, c) for r in range(p.grid_rows) for c in range(p.grid_cols)]
    pos = {
        "agcu": _agcu_positions(p),
        "pcu": [t for t in tiles if (t[0] + t[1]) % 2 == 0],
        "pmu": [t for t in tiles if (t[0] + t[1]) % 2 == 1],
        "switch": tiles,
        "sequencer": [None],
    }
    units = []
    for k in KINDS:
        base, cnt, nregs = ranges[k]
        assert len(pos[k]) == cnt, (k, len(pos[k]), cnt)
        for i in range(cnt):
            units.append(UnitInfo(base + i, k, i, nregs, pos[k][i]))
    return tuple(units)


def unit_by_id(p: RduParams, uid: int) -> UnitInfo | None:
    units = unit_map(p)
    return units[uid] if 0 <= uid < len(units) else None


def units_of_kind(p: RduParams, kind: str) -> list[UnitInfo]:
    if kind not in KINDS:
        raise ValueError(f"unknown unit kind {kind!r}; kinds are {', '.join(KINDS)}")
    return [u for u in unit_map(p) if u.kind == kind]


def unit_id(p: RduParams, kind: str, index: int = 0) -> int:
    """Config-bus id of unit ``index`` of ``kind`` (e.g. ``unit_id(p, "pcu", 3)``)."""
    units = units_of_kind(p, kind)
    if not 0 <= index < len(units):
        raise ValueError(f"{kind} index {index} out of range (chip has {len(units)})")
    return units[index].id

"""What a decode pattern kernel is, for the compiler and the runtime: the contract every pattern
builder of the decode (``sw/kernels/*.py``) follows.

A decode kernel is *address-parameterised*: its builder takes the HBM byte address of every
operand it reads or writes (a :class:`Ref`) and never lays out data itself; the compiler
(``sw/compiler/``) decides the HBM map and the runtime (``sw/runtime/``) loads it. Test code
builds :class:`sw.kernels.patterns.PatternKernel` cases around a kernel (images, expected
bytes) to run it alone.

Layers. A per-layer operand (weights, REQUANT words, a layer's KV cache) is a ``Ref(addr,
iter_stride)``: the address of layer 0's copy and the bytes between consecutive layers' copies.
The kernel's AGCU programs put ``iter_stride / beat_bytes`` in their ``ITER_STRIDE`` register,
so launching the kernel at sequencer iteration ``l`` runs it on layer ``l`` (``op`` and
``layer`` modes launch it once per layer at iteration ``l``; ``looped`` runs iterations
``0..L-1`` in one call). Activations are ``Ref(addr)`` (stride 0: the same buffer every
layer).

Positions. Operands that move with the decode position (a RoPE table row, the KV-cache row
appended, the number of cached positions attended) are builder arguments (``pos``): the
kernel is built for one position. (In ``op`` mode every launch reconfigures the fabric anyway;
the fused modes patch only the registers that differ.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hdl.params import RduParams
from hdl.pcu import pcu_geometry
from hdl.pmu import PmuConfig
from sw.kernels.builder import KernelBuilder, KernelError

__all__ = ["Ref", "DecodeKernel", "as_ref", "region_kw", "int_arg", "require_pcus",
           "watchdog_cycles", "refs_metadata", "stored_pmu"]


@dataclass(frozen=True)
class Ref:
    """An HBM operand: byte ``addr`` at iteration 0, plus ``iter_stride`` bytes per iteration.
    Both must be beat-aligned (the memory system moves whole beats)."""
    addr: int
    iter_stride: int = 0

    def beat(self, p: RduParams) -> int:
        return self._beats(p, self.addr, "address")

    def beat_stride(self, p: RduParams) -> int:
        return self._beats(p, self.iter_stride, "per-iteration stride")

    def program_kw(self, p: RduParams, beats: int, iterations: int) -> dict:
        """``AgcuProgram`` keywords for a program walking ``beats`` beats from this operand in
        every iteration ``0..iterations-1``: its ``iter_stride`` and a ``region`` covering all
        the copies (an AGCU refuses addresses outside its region)."""
        st = self.beat_stride(p)
        return region_kw(self.beat(p), beats, st, iterations)

    def at(self, offset: int) -> "Ref":
        """The same operand ``offset`` bytes further (same stride)."""
        return Ref(self.addr + offset, self.iter_stride)

    @staticmethod
    def _beats(p: RduParams, v: int, what: str) -> int:
        if v % p.beat_bytes:
            raise KernelError(f"HBM {what} {v} is not a multiple of the {p.beat_bytes}-byte beat")
        return v // p.beat_bytes


def region_kw(first: int, span: int, stride: int, iterations: int) -> dict:
    """``AgcuProgram`` keywords (beats): ``iter_stride`` and a ``region`` covering beats
    ``[first, first + span)`` of every iteration ``0..iterations-1`` (an AGCU refuses
    addresses outside its region)."""
    if iterations < 1:
        raise KernelError(f"iterations must be >= 1, got {iterations}")
    lo = first + min(0, (iterations - 1) * stride)
    return {"iter_stride": stride, "region": (lo, span + (iterations - 1) * abs(stride))}


def as_ref(v) -> Ref:
    """``Ref`` from a Ref, an int (stride 0) or an ``(addr, iter_stride)`` pair."""
    if isinstance(v, Ref):
        return v
    if isinstance(v, int):
        return Ref(v)
    addr, stride = v
    return Ref(int(addr), int(stride))


def int_arg(v, what: str, lo: int | None = None, hi: int | None = None, *, why: str = "",
            error=KernelError) -> int:
    """``v`` as an int; else (not an integer, a bool, or outside ``lo..hi``) ``error``: "``what``
    must be an integer [in lo..hi | >= lo] [(``why``)], got ``v``"."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) \
            or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = (f" in {lo}..{hi}" if lo is not None and hi is not None else
               f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
        raise error(f"{what} must be an integer{rng}{f' ({why})' if why else ''}, got {v!r}")
    return int(v)


def require_pcus(p: RduParams, what: str, *, stages=None, n_vin=None, n_sin=None,
                 error=KernelError) -> None:
    """Refuse a chip whose PCUs lack what kernel ``what`` needs: ``stages`` (FU stages),
    ``n_vin`` (vector inputs), ``n_sin`` (scalar inputs), each ``(minimum, what for)``."""
    g = pcu_geometry(p)
    for key, need, form in (("stages", stages, ">= {} FU stages"),
                            ("n_vin", n_vin, "{} vector inputs"),
                            ("n_sin", n_sin, "{} scalar inputs")):
        if need is not None and g[key] < need[0]:
            raise error(f"{what} needs PCUs with {form.format(need[0])} ({need[1]}); this chip "
                        f"has {g[key]}")


def watchdog_cycles(p: RduParams, beats: int) -> int:
    """A generous cycle budget for a launch moving ``beats`` beats: HBM latency and fill, then
    up to 16 cycles per beat (gather conflicts serialise up to 16 bank reads per beat)."""
    return 20_000 + 16 * beats + 4 * p.hbm_read_latency


def stored_pmu(beats: int, **read) -> PmuConfig:
    """A PMU that stores one stream of ``beats`` beats (``win``, one write pass) in a single
    SYNC buffer from word 0, then runs the read program ``read`` (``PmuConfig`` keywords) over
    it: a constants blob, a vector read again or gathered from."""
    return PmuConfig(sync=True, buf_base=0, buf_size=beats, n_buf=1, wr_passes=1,
                     wr_counts=(beats,), wr_strides=(1,), **read)


def refs_metadata(**refs) -> dict:
    """``{name: [addr, iter_stride]}`` of the operands' Refs, for a kernel's metadata."""
    return {name: [r.addr, r.iter_stride] for name, r in refs.items()}


@dataclass
class DecodeKernel:
    """One built decode kernel.

    ``reads``/``writes``: operand name -> bytes moved per launch (one iteration), whole beats,
    for the compiler's HBM-bytes-per-token figure and the runtime's checks. ``watchdog``: a
    generous cycle budget for one launch (one iteration). ``outputs``: operand name -> Ref of
    what the kernel writes (the runtime can read them back to compare with the golden trace)."""
    pattern: str
    params: RduParams
    builder: KernelBuilder
    roles: dict
    watchdog: int
    reads: dict = field(default_factory=dict)
    writes: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def unit_ids(self) -> list[int]:
        return self.builder.unit_ids()

    @property
    def hbm_bytes(self) -> int:
        return sum(self.reads.values()) + sum(self.writes.values())

    def to_bytes(self) -> bytes:
        return self.builder.to_bytes()

    def describe(self) -> str:
        return self.builder.describe()

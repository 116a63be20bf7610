"""Looping sequencer: runs one kernel call of ``count`` iterations over a set of units, letting
every unit run ahead into its next iteration as soon as its own true dependence allows.

This is the hardware half of kernel looping (DESIGN.md section 3). A *kernel call* is
(``mask``, ``base``, ``count``): every unit in ``mask`` runs iterations ``base, base+1, ...,
base+count-1``; a unit's iteration index is what it adds its per-iteration offsets to (an AGCU
reading layer ``i``'s weights at ``base_addr + i * stride``). ``layer`` mode calls a kernel
``count = 1`` times per layer; ``looped`` mode calls it once with ``count = n_layers``.

Scheduling (per unit, independently)
    A unit is *started* for its next iteration (``unit_start`` pulse, ``unit_iteration`` =
    ``base`` + iterations it has completed in this call) when it takes part, is not running
    (its previous iteration has pulsed ``unit_done``), has iterations left, and its dependence
    (below) is met. Nothing else waits: a weight-streaming AGCU that finished layer ``i``
    starts layer ``i+1`` at once and fills the buffers downstream while the layer ``i``
    compute drains; the stream back-pressure of the fabric keeps it from overrunning anyone.
    Several units may start in the same cycle, but only units starting the *same* iteration
    (``unit_iteration`` is one bus): the eligible units with the lowest next iteration go
    first, the others a cycle later. A launch therefore starts every unit in the cycle after
    ``launch``.

Dependences (``DEP`` register per unit, written through ``dep_we``/``dep_unit``/``dep_data``)
    ``[0]`` enable, ``[1]`` same iteration, ``[15:8]`` producer unit id. Enabled, the unit's
    ``k``-th iteration of the call waits until the producer has completed ``k`` iterations
    (``[1]`` = 0: "my next iteration needs your previous one", e.g. the AGCU loading layer
    ``i+1``'s input waits for the AGCU storing layer ``i``'s output), or ``k+1`` iterations
    (``[1]`` = 1: "my iteration needs your same iteration"). A producer that does not take
    part in the call never blocks. Dependences that only data carries (a PCU waiting for its
    FIFOs) need no register: the fabric's ready/valid handles them.

Status
    ``busy``: a call is in progress. ``done`` (level): every unit of the last call has
    completed ``count`` iterations (also right after reset with an empty mask: 0).
    ``dep_stall`` (per cycle, for a performance counter): some unit could start but for its
    dependence. Unit errors are the host's business (it latches ``status`` at ``done``); the
    sequencer keeps going, and the host's watchdog names units still running.

Cycle-level contract
    ``launch`` in cycle t: units start in t+1 (those without a dependence on iteration 0 of
    another); a ``unit_done`` in cycle t lets that unit (and units depending on it) start in
    t+1; ``done`` rises in the cycle after the last ``unit_done``. ``mask``/``base``/``count``
    are sampled at ``launch``; a ``launch`` while busy restarts the call. ``count = 0`` is
    treated as 1. DEP registers are plain flops; change them only between calls.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .links import ITERATION_BITS

__all__ = ["LoopSequencer", "dep_word", "DEP_BITS"]

DEP_BITS = 16


def dep_word(producer: int | None, same_iteration: bool = False) -> int:
    """DEP register value: wait for unit ``producer`` (``None``: no dependence)."""
    if producer is None:
        return 0
    if not 0 <= producer < 256:
        raise ValueError(f"unit id {producer} out of range")
    return 1 | int(same_iteration) << 1 | producer << 8


class LoopSequencer(wiring.Component):
    """See the module docstring."""

    def __init__(self, n_units: int):
        self.n_units = n_units
        super().__init__({
            "launch": In(1),
            "mask": In(n_units),
            "base": In(ITERATION_BITS),
            "count": In(ITERATION_BITS),
            "dep_we": In(1),
            "dep_unit": In(8),
            "dep_data": In(DEP_BITS),
            "dep_rd_unit": In(8),
            "dep_rd_data": Out(DEP_BITS),
            "unit_start": Out(n_units),
            "unit_iteration": Out(ITERATION_BITS),
            "unit_done": In(n_units),
            "busy": Out(1),
            "done": Out(1),
            "dep_stall": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n_units
        IB = ITERATION_BITS

        deps = Array(Signal(DEP_BITS, name=f"dep{u}") for u in range(n))
        with m.If(self.dep_we & (self.dep_unit < n)):
            m.d.sync += deps[self.dep_unit].eq(self.dep_data)
        m.d.comb += self.dep_rd_data.eq(Mux(self.dep_rd_unit < n, deps[self.dep_rd_unit], 0))

        mask = Signal(n)
        base = Signal(IB)
        count = Signal(IB)
        active = Signal()                   # a call has been launched (done or not)
        running = Signal(n)
        completed = Array(Signal(IB, name=f"completed{u}") for u in range(n))

        finished = Signal(n)
        for u in range(n):
            m.d.comb += finished[u].eq(~mask[u] | (completed[u] == count))
        m.d.comb += [self.done.eq(active & finished.all()),
                     self.busy.eq(active & ~finished.all())]

        # Eligibility: taking part, idle, iterations left, dependence met.
        ready = Signal(n)            # could start but for the dependence
        eligible = Signal(n)
        for u in range(n):
            dep = deps[u]
            producer = dep[8:16]
            need = completed[u] + dep[1]            # producer iterations required
            producer_done = Signal(IB, name=f"producer_done{u}")
            m.d.comb += producer_done.eq(completed[producer])
            taking_part = Signal(name=f"producer_in_call{u}")
            m.d.comb += taking_part.eq((producer < n) & mask.bit_select(producer, 1))
            dep_ok = ~dep[0] | ~taking_part | (producer_done >= need)
            m.d.comb += [ready[u].eq(active & mask[u] & ~running[u] & ~finished[u]),
                         eligible[u].eq(ready[u] & dep_ok)]
        m.d.comb += self.dep_stall.eq((ready & ~eligible).any())

        # The lowest next iteration among eligible units starts this cycle.
        # (one signal per step: a Mux chain that reuses its own expression twice per step
        # would grow as 2**n when emitted)
        best = Const((1 << IB) - 1, IB)
        for u in range(n):
            step = Signal(IB, name=f"lowest_upto{u}")
            m.d.comb += step.eq(Mux(eligible[u] & (completed[u] < best), completed[u], best))
            best = step
        starting = Signal(n)
        for u in range(n):
            m.d.comb += starting[u].eq(eligible[u] & (completed[u] == best))
        m.d.comb += [self.unit_start.eq(starting), self.unit_iteration.eq(base + best)]

        with m.If(self.launch):
            m.d.sync += [mask.eq(self.mask), base.eq(self.base),
                         count.eq(Mux(self.count == 0, 1, self.count)), active.eq(1),
                         running.eq(0)]
            m.d.sync += [completed[u].eq(0) for u in range(n)]
        with m.Else():
            for u in range(n):
                with m.If(starting[u]):
                    m.d.sync += running[u].eq(1)
                with m.Elif(running[u] & self.unit_done[u]):
                    m.d.sync += [running[u].eq(0), completed[u].eq(completed[u] + 1)]
        return m

"""LoopSequencer in Amaranth's simulator, with model units of random latency: every unit runs
every iteration once and in order, dependences hold, and units without one run ahead."""

import random

import pytest
from amaranth.sim import Simulator

from hdl.sequencer import LoopSequencer, dep_word

N = 6


def simulate(mask, base, count, deps, latency, *, max_cycles=20000, relaunch=None):
    """Run one call. ``latency[u]``: cycles (or a callable(iteration) -> cycles) from start to
    done. Returns (starts, dones, done_cycle, dep_stall_cycles): starts[u] = [(cycle, iter)]."""
    dut = LoopSequencer(N)
    starts = {u: [] for u in range(N)}
    dones = {u: [] for u in range(N)}
    out = {}

    async def bench(ctx):
        for u, d in deps.items():
            ctx.set(dut.dep_we, 1)
            ctx.set(dut.dep_unit, u)
            ctx.set(dut.dep_data, d)
            await ctx.tick()
        ctx.set(dut.dep_we, 0)
        for u, d in deps.items():
            ctx.set(dut.dep_rd_unit, u)
            assert ctx.get(dut.dep_rd_data) == d
        ctx.set(dut.mask, mask)
        ctx.set(dut.base, base)
        ctx.set(dut.count, count)
        ctx.set(dut.launch, 1)
        await ctx.tick()
        ctx.set(dut.launch, 0)
        due = {}
        stall = 0
        for cycle in range(max_cycles):
            bits = 0
            for u, t in list(due.items()):
                if t == cycle:
                    bits |= 1 << u
                    dones[u].append(cycle)
                    del due[u]
            ctx.set(dut.unit_done, bits)
            if ctx.get(dut.done) and not due:
                out["done"] = cycle
                break
            assert ctx.get(dut.busy)
            stall += ctx.get(dut.dep_stall)
            st = ctx.get(dut.unit_start)
            it = ctx.get(dut.unit_iteration)
            for u in range(N):
                if st >> u & 1:
                    assert mask >> u & 1, f"unit {u} started but not in the call"
                    assert u not in due, f"unit {u} started while running"
                    starts[u].append((cycle, it))
                    lat = latency[u](it) if callable(latency[u]) else latency[u]
                    due[u] = cycle + max(1, lat)
            await ctx.tick()
        out["stall"] = stall

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert "done" in out, "the call never finished (watchdog)"
    return starts, dones, out["done"], out["stall"]


def check_iterations(starts, mask, base, count):
    for u in range(N):
        its = [i for _, i in starts[u]]
        if mask >> u & 1:
            assert its == list(range(base, base + count)), (u, its)
        else:
            assert its == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_unit_every_iteration_in_order(seed):
    rng = random.Random(seed)
    mask = rng.randrange(1, 1 << N) | 1
    lat = {u: (lambda it, r=random.Random(seed * 10 + u): r.randint(1, 40)) for u in range(N)}
    starts, _, _, _ = simulate(mask, base=rng.randrange(100), count=rng.randint(1, 7), deps={},
                               latency=lat)
    check_iterations(starts, mask, starts[0][0][1], len(starts[0]))


def test_units_without_dependence_run_ahead():
    """A fast unit (an AGCU streaming weights) finishes all its iterations while a slow one is
    still in its first: no barrier between iterations."""
    starts, dones, _, stall = simulate(0b11, base=0, count=5, deps={},
                                       latency={0: 3, 1: 100, **{u: 1 for u in range(2, N)}})
    check_iterations(starts, 0b11, 0, 5)
    assert dones[0][-1] < dones[1][0]
    assert stall == 0


@pytest.mark.parametrize("same", [False, True])
def test_dependence_previous_and_same_iteration(same):
    """Unit 2 (loads layer i+1's input) waits for unit 1 (stores layer i's output); unit 0
    (weights) runs free."""
    lat = {0: 5, 1: lambda it: 20 + 7 * it, 2: 4, **{u: 1 for u in range(3, N)}}
    count = 4
    starts, dones, done_cycle, stall = simulate(0b111, base=10, count=count,
                                                deps={2: dep_word(1, same_iteration=same)},
                                                latency=lat)
    check_iterations(starts, 0b111, 10, count)
    for k, (t, it) in enumerate(starts[2]):
        need = k + 1 if same else k
        done_before = sum(1 for d in dones[1] if d < t)
        assert done_before >= need, (k, t, dones[1])
        if need:   # and it starts the cycle after the producer's done, not later
            assert t == dones[1][need - 1] + 1, (k, t, dones[1])
    assert stall > 0
    assert done_cycle == max(max(dones[u]) for u in range(3)) + 1


def test_dependence_on_unit_outside_the_call_is_ignored():
    starts, _, _, _ = simulate(0b001, base=0, count=3, deps={0: dep_word(5)},
                               latency={u: 2 for u in range(N)})
    check_iterations(starts, 0b001, 0, 3)


def test_units_start_together_at_launch_and_count_zero_is_one():
    starts, _, _, _ = simulate(0b110110, base=7, count=0, deps={},
                               latency={u: 3 for u in range(N)})
    check_iterations(starts, 0b110110, 7, 1)
    assert len({t for u in range(N) for t, _ in starts[u]}) == 1


def test_dep_word_range():
    with pytest.raises(ValueError):
        dep_word(300)
    assert dep_word(None) == 0 and dep_word(3, True) == 0x0303

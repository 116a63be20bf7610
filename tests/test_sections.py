"""SectionSequencer in Amaranth's simulator, with a model of its surroundings (DMA engine,
config controller with a kernel table, looping sequencer): sections run in table order for
every iteration, each loaded before it is launched and launched only after the previous one
finished; refusals and aborts stop the program and say why."""

import random

import pytest
from amaranth.sim import Simulator

from hdl.params import DEFAULT_PARAMS as P
from hdl.sections import Phase, SectionError, SectionSequencer

N_UNITS = 12


class Env:
    """What the sequencer talks to: ``bitstreams[addr] = (mask, cc_status, kt_count)`` and
    random DMA, config and run latencies."""

    def __init__(self, bitstreams, seed=1, bad_unit_at=None):
        self.bitstreams = bitstreams
        self.rng = random.Random(seed)
        self.bad_unit_at = bad_unit_at      # (load index) after whose run an error is latched


def run(table, *, first, sections, base, count, env, max_cycles=50_000, preset_error=False):
    """Run one program call against models of the DMA + config controller (loads take a random
    time, a ``hold`` load stops checked until ``release``, the replay takes a random time) and of
    the looping sequencer (a section runs a random time). Checks on the way: no load starts
    while the controller is busy, nothing is replayed while a section runs, a launch follows
    the replay of its own section."""
    dut = SectionSequencer(P, N_UNITS)
    log = {"loads": [], "launches": [], "done": None, "prefetched": 0}

    async def bench(ctx):
        for i, (addr, length) in enumerate(table):
            ctx.set(dut.tbl_we, 1)
            ctx.set(dut.tbl_index, i)
            ctx.set(dut.tbl_addr, addr)
            ctx.set(dut.tbl_length, length)
            await ctx.tick()
        ctx.set(dut.tbl_we, 0)
        ctx.set(dut.first, first)
        ctx.set(dut.sections, sections)
        ctx.set(dut.iter_base, base)
        ctx.set(dut.iter_count, count)
        ctx.set(dut.abort, int(preset_error))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cc = None                     # controller: {"addr", "hold", "state", "t"}
        replayed = None               # addr of the last bitstream replayed (configured)
        run_due = None
        error_latched = preset_error
        for cycle in range(max_cycles):
            running = run_due is not None and cycle < run_due
            done = held = 0
            if cc is not None and cc["t"] == cycle:
                mask, status, kt = env.bitstreams[cc["addr"]]
                if cc["state"] == "load" and status != 0:
                    done = 1
                    ctx.set(dut.cc_status, status)
                    error_latched = True
                    cc = None
                elif cc["state"] == "load" and cc["hold"]:
                    cc["state"], cc["t"] = "held", None
                elif cc["state"] == "load":
                    assert not running, "cold replay while a section runs"
                    cc["state"], cc["t"] = "replay", cycle + 1 + env.rng.randrange(1, 40)
                else:                                       # replay finished
                    done = 1
                    ctx.set(dut.cc_status, 0)
                    ctx.set(dut.kt_count, kt)
                    ctx.set(dut.kt_units, mask)
                    replayed = cc["addr"]
                    cc = None
            held = int(cc is not None and cc["state"] == "held")
            ctx.set(dut.cc_done, done)
            ctx.set(dut.cc_held, held)
            ctx.set(dut.run_done, int(not running))
            ctx.set(dut.abort, int(error_latched))
            if ctx.get(dut.done):
                log["done"] = cycle
                log["error"] = SectionError(ctx.get(dut.error))
                log["entry"], log["iteration"] = ctx.get(dut.entry), ctx.get(dut.iteration)
                break
            assert ctx.get(dut.busy) and ctx.get(dut.to_config)
            if ctx.get(dut.cc_release):
                assert held, "release without a held load"
                assert not running, "replay released while a section runs"
                cc["state"], cc["t"] = "replay", cycle + 1 + env.rng.randrange(1, 40)
            if ctx.get(dut.dma_start):
                assert ctx.get(dut.cc_start), "DMA and controller start together"
                assert cc is None, "load started while the controller is busy"
                addr, length = ctx.get(dut.dma_addr), ctx.get(dut.cc_length)
                assert ctx.get(dut.dma_beats) == -(-length // P.beat_bytes)
                hold = ctx.get(dut.cc_hold)
                log["prefetched"] += hold
                log["loads"].append((cycle, addr, length, hold))
                cc = {"addr": addr, "hold": hold, "state": "load",
                      "t": cycle + 1 + env.rng.randrange(1, 200)}
            if ctx.get(dut.launch):
                assert not running, "launch while a section runs"
                assert replayed is not None, "launch before any replay"
                log["launches"].append((ctx.get(dut.mask), ctx.get(dut.iteration),
                                        ctx.get(dut.entry)))
                assert ctx.get(dut.mask) == env.bitstreams[replayed][0], \
                    "launched units are not those of the section just configured"
                replayed = None
                run_due = cycle + 2 + env.rng.randrange(0, 300)
                if env.bad_unit_at is not None and len(log["launches"]) == env.bad_unit_at + 1:
                    error_latched = True
            await ctx.tick()
        else:
            raise AssertionError("program did not finish")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return log


def program(n, seed=0):
    rng = random.Random(seed)
    bitstreams, table = {}, []
    for e in range(n):
        addr = 100 + 37 * e
        mask = rng.randrange(1, 1 << N_UNITS)
        bitstreams[addr] = (mask, 0, 1)
        table.append((addr, rng.randrange(68, 4000)))
    return table, bitstreams


@pytest.mark.parametrize("seed", range(4))
def test_sections_run_in_order_for_every_iteration(seed):
    table, bs = program(7, seed)
    first, sections, base, count = 2, 4, 3, 3
    log = run(table, first=first, sections=sections, base=base, count=count,
              env=Env(bs, seed))
    assert log["error"] == SectionError.OK
    want = [(e, it) for it in range(base, base + count) for e in range(first, first + sections)]
    assert [(addr, length) for _, addr, length, _ in log["loads"]] == \
        [table[e] for e, _ in want]
    assert log["launches"] == [(bs[table[e][0]][0], it, e) for e, it in want]
    # every section but the first is prefetched while its predecessor runs
    assert [h for *_, h in log["loads"]] == [0] + [1] * (len(want) - 1)


def test_count_zero_counts_as_one():
    table, bs = program(3)
    log = run(table, first=0, sections=3, base=0, count=0, env=Env(bs))
    assert len(log["launches"]) == 3 and log["error"] == SectionError.OK


@pytest.mark.parametrize("first,sections", [(0, 0), (30, 3), (P.program_entries - 1, 2)])
def test_bad_range_is_refused_before_anything_moves(first, sections):
    table, bs = program(3)
    log = run(table, first=first, sections=sections, base=0, count=1, env=Env(bs))
    assert log["error"] == SectionError.BAD_RANGE
    assert log["loads"] == [] and log["launches"] == []


def test_entry_past_the_end_of_hbm_is_refused_before_the_load():
    table, bs = program(3)
    table[1] = (P.hbm_beats - 2, 4 * P.beat_bytes)
    log = run(table, first=0, sections=3, base=0, count=1, env=Env(bs))
    assert log["error"] == SectionError.BAD_ENTRY and log["entry"] == 1
    assert len(log["loads"]) == 1 and len(log["launches"]) == 1


def test_refused_bitstream_aborts_at_that_section():
    table, bs = program(4)
    mask, _, kt = bs[table[2][0]]
    bs[table[2][0]] = (mask, 6, 0)           # the config controller refuses it (BAD_CRC)
    log = run(table, first=0, sections=4, base=0, count=2, env=Env(bs))
    assert log["error"] == SectionError.ABORTED
    assert (log["entry"], log["iteration"]) == (2, 0)
    assert len(log["launches"]) == 2          # sections 0 and 1 only


def test_section_without_kernel_is_refused():
    table, bs = program(3)
    mask, _, _ = bs[table[1][0]]
    bs[table[1][0]] = (mask, 0, 0)
    log = run(table, first=0, sections=3, base=0, count=1, env=Env(bs))
    assert log["error"] == SectionError.NO_KERNEL and log["entry"] == 1
    assert len(log["launches"]) == 1


def test_error_latched_during_a_section_stops_at_its_end():
    table, bs = program(5)
    log = run(table, first=0, sections=5, base=0, count=2, env=Env(bs, bad_unit_at=6))
    assert log["error"] == SectionError.ABORTED
    assert len(log["launches"]) == 7 and (log["entry"], log["iteration"]) == (1, 1)


def test_phase_reads_idle_after_done():
    dut = SectionSequencer(P, 4)
    out = {}

    async def bench(ctx):
        ctx.set(dut.sections, 0)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick()
        out["phase"] = ctx.get(dut.phase)
        out["busy"] = ctx.get(dut.busy)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert out == {"phase": Phase.IDLE, "busy": 0}

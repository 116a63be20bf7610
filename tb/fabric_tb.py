"""cocotb side of the fabric test (toplevel :class:`tb.fabric_top.FabricTop`).

Arguments (env ``MINIRDU_ARGS``, JSON): ``params`` (``RduParams.to_dict()``), ``seed``,
``rounds`` (random AGCU-to-AGCU rounds), ``beats`` (upper bound of beats per source per
round), ``speed_beats`` (beats per AGCU of the full-rate speed round; 0: none), ``result`` (optional path: a JSON with cycles and wall time per round).

Rounds
    - *edge rounds*: a random set of streams from AGCU ``rd`` ports to AGCU ``wr`` ports
      (some multicast to two sinks), routed with :meth:`FabricTopology.route_multicast`,
      random per-port source gaps and sink stalls, random beat counts.
    - *unit round*: ``agcu -> PMU (double-buffered, N_BUF 2, several passes) -> PCU
      (pass-through, 6 FU stages) -> agcu`` and ``agcu -> PMU (resident vector read twice)
      -> agcu``, PMUs and PCU configured with :class:`hdl.pmu.PmuConfig` /
      :class:`hdl.pcu.PcuConfig` over the config bus, started through unit control, under
      random back-pressure.

Every round is checked exactly: each sink's beat count, XOR and position-weighted sum
against the sequence of source beats it must have received (in order), unrouted sinks
receive nothing, units report ``done`` with status 0, and no switch holds data afterwards.
Every wait has a watchdog that names the sources, sinks, units and switches that are stuck.
"""

import json
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from hdl.fabric import FabricTopology
from hdl.params import RduParams
from hdl.pcu import PcuConfig, Red
from hdl.pmu import PmuConfig, pmu_depth
from hdl.unitmap import unit_map
from tb.traffic import source_beat

M32 = 0xFFFFFFFF


def expected(p, tag, seq):
    """(beats, xor, sum_lo) a TrafficSink computes for source ``tag``'s beats ``seq``."""
    x = s = 0
    for n, k in enumerate(seq):
        b = source_beat(tag, k, p.lanes)
        x ^= b
        s = (s + (n + 1) * (b & M32)) & M32
    return len(seq), x, s


class Fab:
    def __init__(self, dut, p):
        self.dut, self.p = dut, p
        self.topo = FabricTopology(p)
        self.units = {u.name: u for u in unit_map(p)}
        self.first = self.units["pcu0"].id
        self.n_units = p.n_pcus + p.n_pmus
        self.cycles = 0

    async def cfg(self, writes):
        d = self.dut
        for uid, a, v in writes:
            d.cfg_we.value = 1
            d.cfg_unit.value = uid
            d.cfg_addr.value = int(a)
            d.cfg_data.value = int(v) & M32
            await RisingEdge(d.clk)
        d.cfg_we.value = 0

    async def start_units(self, names):
        mask = sum(1 << (self.units[n].id - self.first) for n in names)
        self.dut.unit_start.value = mask
        await RisingEdge(self.dut.clk)
        self.dut.unit_start.value = 0

    def get(self, name):
        return int(getattr(self.dut, name).value)

    def describe(self, want, units=()):
        """One line per lagging sink/source/unit plus the switches holding data."""
        parts = []
        for i in range(self.p.n_agcus):
            s, lim = self.get(f"src{i}_beats"), self.get(f"src{i}_limit")
            if s < lim:
                parts.append(f"source agcu{i}.rd sent {s}/{lim}")
        for i, n in want.items():
            got = self.get(f"sink{i}_beats")
            if got != n:
                parts.append(f"sink agcu{i}.wr got {got}/{n}")
        busy, done = self.get("unit_busy"), self.get("unit_done")
        st = self.get("unit_status")
        for name in units:
            k = self.units[name].id - self.first
            parts.append(f"{name} busy={busy >> k & 1} done={done >> k & 1} "
                         f"status={st >> 4 * k & 0xF}")
        held = self.get("held")
        sws = [info.name for (r, c), info in self.topo.switches.items()
               if held >> (r * self.p.grid_cols + c) & 1]
        parts.append(f"switches holding data: {', '.join(sws) or 'none'}")
        return "; ".join(parts)

    async def wait(self, cond, limit, what, want, units=()):
        """Wait until ``cond()`` (polled every 32, 64, ... 1024 cycles); fail after about
        ``limit`` cycles naming what is stuck."""
        n, step = 0, 32
        while True:
            await ReadOnly()
            if cond():
                break
            if n >= limit:
                raise AssertionError(f"watchdog: {what} not finished after {n} cycles: "
                                     f"{self.describe(want, units)}")
            await ClockCycles(self.dut.clk, step)
            n += step
            step = min(2 * step, 1024)      # poll rarely: each poll costs VPI reads
        await RisingEdge(self.dut.clk)
        self.cycles += n

    async def run_round(self, routes, flows, gaps, stalls, units=(), unit_writes=(),
                        what="round"):
        """``routes``: Route objects; ``flows``: {sink index: (tag, [source beat indices])};
        ``gaps``/``stalls``: per AGCU; sources limited to the beats their flows need."""
        d, p = self.dut, self.p
        d.src_hold.value = 1
        d.sink_clear.value = 1
        await RisingEdge(d.clk)
        limits = {i: 0 for i in range(p.n_agcus)}
        for tag, seq in flows.values():
            limits[tag] = max(limits[tag], max(seq) + 1 if seq else 0)
        for i in range(p.n_agcus):
            getattr(d, f"src{i}_limit").value = limits[i]
            getattr(d, f"src{i}_gap").value = gaps[i]
            getattr(d, f"sink{i}_stall").value = stalls[i]
        writes = [w for r in routes for w in r.writes] + list(unit_writes)
        await self.cfg(writes)
        if units:
            await self.start_units(units)
        d.src_hold.value = 0
        d.sink_clear.value = 0
        want = {i: len(flows[i][1]) if i in flows else 0 for i in range(p.n_agcus)}
        total = sum(want.values())
        worst = max([g for g in gaps] + [s for s in stalls])
        limit = int((total + 200) * 8 * 65536 / max(1, 65536 - worst)) + 2000
        t0, c0 = time.monotonic(), self.get("cycles")

        def finished():
            return (all(self.get(f"src{i}_beats") >= limits[i] for i in range(p.n_agcus))
                    and all(self.get(f"sink{i}_beats") >= want[i] for i in range(p.n_agcus))
                    and all(self.get("unit_done") >> (self.units[n].id - self.first) & 1
                            for n in units))
        await self.wait(finished, limit, what, want, units)
        # Let anything that should not be there show up, then require quiet.
        await ClockCycles(d.clk, 40)
        await ReadOnly()
        cycles = self.get("cycles") - c0
        wall = time.monotonic() - t0
        errors = []
        for i in range(p.n_agcus):
            got = (self.get(f"sink{i}_beats"), self.get(f"sink{i}_xor"), self.get(f"sink{i}_sum"))
            if i in flows:
                tag, seq = flows[i]
                exp = expected(p, tag, seq)
                if got != exp:
                    errors.append(f"sink agcu{i}.wr (from agcu{tag}.rd, {len(seq)} beats): "
                                  f"beats {got[0]} vs {exp[0]}, xor "
                                  f"{'ok' if got[1] == exp[1] else 'BAD'}, sum "
                                  f"{got[2]:#x} vs {exp[2]:#x}")
            elif got[0]:
                errors.append(f"sink agcu{i}.wr is unrouted but got {got[0]} beats")
        st = self.get("unit_status")
        for name in units:
            k = self.units[name].id - self.first
            if st >> 4 * k & 0xF:
                errors.append(f"{name} status {st >> 4 * k & 0xF}")
        if self.get("held"):
            errors.append(f"data left in the fabric: {self.describe({}, ())}")
        if self.get("busy"):
            errors.append(f"units still busy: {self.describe({}, units)}")
        await RisingEdge(d.clk)
        # Tear the routes down (back to "no input").
        await self.cfg([w for r in routes for w in r.clear_writes])
        if errors:
            raise AssertionError(f"{what}: " + "; ".join(errors))
        return {"what": what, "beats": total, "cycles": cycles, "wall_s": wall}


def random_edge_round(p, topo, rng, max_beats):
    """Random AGCU rd -> AGCU wr streams (some multicast). Returns (routes, flows)."""
    n = p.n_agcus
    sinks = list(range(n))
    rng.shuffle(sinks)
    srcs = rng.sample(range(n), rng.randint(1, n))
    routes, flows, used = [], {}, set()
    for s in srcs:
        if not sinks:
            break
        k = min(len(sinks), rng.choice([1, 1, 2]))
        dst, sinks = sinks[:k], sinks[k:]
        r = topo.route_multicast("vec", f"agcu{s}.rd", [f"agcu{j}.wr" for j in dst], used)
        used |= r.outputs
        routes.append(r)
        nb = rng.randint(1, max_beats)
        for j in dst:
            flows[j] = (s, list(range(nb)))
    return routes, flows


@cocotb.test()
async def fabric_random(dut):
    args = json.loads(os.environ["MINIRDU_ARGS"])
    p = RduParams.from_dict(args["params"])
    rng = random.Random(int(args.get("seed", 1)))
    fab = Fab(dut, p)
    topo = fab.topo
    Clock(dut.clk, 10, unit="ns", impl="gpi").start()
    dut.rst.value = 1
    dut.cfg_we.value = 0
    dut.unit_start.value = 0
    dut.src_hold.value = 1
    dut.sink_clear.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    log = []
    stall_choices = [0, 0x4000, 0x8000, 0xC000]

    for rnd in range(int(args.get("rounds", 4))):
        routes, flows = random_edge_round(p, topo, rng, int(args.get("beats", 400)))
        gaps = [rng.choice(stall_choices) for _ in range(p.n_agcus)]
        stalls = [rng.choice(stall_choices) for _ in range(p.n_agcus)]
        desc = ", ".join(f"{r.src}->{'+'.join(r.dsts)} ({max(r.latency.values())} hops)"
                         for r in routes)
        log.append(await fab.run_round(routes, flows, gaps, stalls,
                                       what=f"edge round {rnd}: {desc}"))

    # ---- speed round: every AGCU streams across the grid at full rate (cycles/s figure) ----
    n_speed = int(args.get("speed_beats", 0))
    if n_speed:
        used, routes, flows = set(), [], {}
        for i in range(p.n_agcus):
            j = (i + p.n_agcus // 2) % p.n_agcus
            r = topo.route("vec", f"agcu{i}.rd", f"agcu{j}.wr", used)
            used |= r.outputs
            routes.append(r)
            flows[j] = (i, list(range(n_speed)))
        zero = [0] * p.n_agcus
        log.append(await fab.run_round(routes, flows, zero, zero, what="speed round"))

    # ---- units: AGCU -> PMU -> PCU -> AGCU and AGCU -> PMU (read twice) -> AGCU ----------
    # Tiles apart from each other so the paths cross the grid (4x4: pmu7 (3,2), pcu4 (2,0),
    # pmu2 (1,0)).
    u = fab.units
    pmu_a, pcu_b, pmu_c = f"pmu{p.n_pmus - 1}", f"pcu{p.n_pcus // 2}", f"pmu{p.n_pmus // 4}"
    bpb, passes, n_res = 16, 6, 24
    used = set()
    chain = [("agcu0.rd", f"{pmu_a}.win"), (f"{pmu_a}.rout", f"{pcu_b}.vin0"),
             (f"{pcu_b}.vout", "agcu3.wr"), ("agcu1.rd", f"{pmu_c}.win"),
             (f"{pmu_c}.rout", "agcu2.wr")]
    routes = []
    for src, dst in chain:
        r = topo.route("vec", src, dst, used)
        used |= r.outputs
        routes.append(r)
    unit_writes = [(u[pmu_a].id, a, v) for a, v in
                   PmuConfig.double_buffer(bpb, n_buffers=2, passes=passes, base=8).writes(p)]
    pc = PcuConfig(p).counters(bpb, passes)
    pc.vin(0).emit(0).reduce(Red.OFF).output(vout=True)
    unit_writes += [(u[pcu_b].id, a, v) for a, v in pc.writes()]
    unit_writes += [(u[pmu_c].id, a, v) for a, v in
                    PmuConfig.resident_vector(n_res, repeat=2, base=pmu_depth(p) - n_res).writes(p)]
    flows = {3: (0, list(range(bpb * passes))), 2: (1, list(range(n_res)) * 2)}
    for k in range(2):
        gaps = [rng.choice(stall_choices) for _ in range(p.n_agcus)]
        stalls = [rng.choice(stall_choices) for _ in range(p.n_agcus)]
        desc = ", ".join(f"{r.src}->{r.dsts[0]} ({r.latency[r.dsts[0]]} hops)" for r in routes)
        log.append(await fab.run_round(routes, flows, gaps, stalls,
                                       units=(pmu_a, pcu_b, pmu_c), unit_writes=unit_writes,
                                       what=f"unit round {k}: {desc}"))
    if args.get("result"):
        with open(args["result"], "w") as f:
            json.dump(log, f, indent=1)

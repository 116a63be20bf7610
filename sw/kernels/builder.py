"""Kernel builder: the low-level API the compiler targets.

A *kernel* is a set of configured units (PCUs, PMUs, AGCUs), the routes between their ports on
the switch networks, and one entry of the sequencer's kernel table. :class:`KernelBuilder`
collects them, checks them as it goes and writes a bitstream (:mod:`sw.bitstream`)::

    kb = KernelBuilder(p, "gemv")
    kb.agcu(0, AgcuProgram.read(base=0, counts=(4, 64), strides=(1, 4)), role="W")
    kb.pmu(0, PmuConfig.resident_vector(4, repeat=64), role="x")
    kb.pcu(0, PcuConfig.gemv(p, 64, 4, m, s), role="dot")
    kb.agcu(2, AgcuProgram.write(base=..., counts=(1,), strides=(1,)))
    kb.route("agcu0.rd", "pcu0.vin0")
    kb.route("agcu1.rd", ["pmu0.win", "pmu1.win"])     # multicast
    data = kb.to_bytes()                                 # or kb.bitstream()
    print(kb.describe())

Units are named as in :mod:`hdl.unitmap` (``pcu0``, ``pmu3``, ``agcu1``); their configuration
is a list of ``(register, value)`` writes, produced by the unit's config helper
(:class:`hdl.pcu.PcuConfig`, :class:`hdl.pmu.PmuConfig`, :class:`AgcuProgram` here).
Ports are named as in :mod:`hdl.fabric` (``pcu0.vin1``, ``pmu3.rout``, ``agcu0.rd``), and the
interconnect is :class:`hdl.fabric.FabricTopology` (the single source of truth of it).

Checks (all raise :class:`KernelError`, whose message names the units involved):

- a unit that does not exist on this chip, or is configured twice;
- a port that does not exist, is of the wrong direction, or on another network than the
  route's other end (``unreachable``);
- a consumer port driven by two routes; a producer port that is the source of two routes (a
  producer has one switch input: use one multicast route);
- a route with no free path because earlier routes hold the switch outputs it needs
  (``conflict``: the message names those routes), or no path at all;
- at :meth:`bitstream`, a route whose end is a unit the kernel does not configure.

The bitstream holds the unit writes (in the order the units were added), then the routes'
switch writes, then (``clear_unused_switches``, default on) a "no input" write for every
other switch output of the chip, so that routes left by an earlier kernel cannot fork this
kernel's streams into idle units.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from hdl.agcu import AgcuMode, AgcuReg, agcu_count_reg, agcu_stride_reg
from hdl.fabric import FabricTopology, Route, RouteError
from hdl.params import RduParams
from hdl.unitmap import UnitInfo, regs_per_kind, unit_map, units_of_kind
from sw.bitstream import Bitstream, Kernel, config_buffer_bytes

__all__ = ["KernelBuilder", "KernelError", "AgcuProgram", "UnitConfig", "agcu_writable_counters"]

_NET_LONG = {"vec": "vector", "scl": "scalar", "ctl": "control"}


class KernelError(ValueError):
    """A kernel description is inconsistent (bad unit, bad port, route conflict...)."""


def agcu_writable_counters(p: RduParams) -> int:
    """AGCU counters whose COUNT/STRIDE registers a bitstream can write: the config controller
    refuses registers at or past the unit's declared count (``hdl.unitmap.regs_per_kind``)."""
    n = regs_per_kind("agcu")
    k = 0
    while k < p.agcu_counters and agcu_stride_reg(k) < n:
        k += 1
    return k


@dataclass(frozen=True)
class AgcuProgram:
    """An AGCU address program (``hdl/agcu.py``): ``mode``, beat ``base``, counter chain
    ``counts``/``strides`` (innermost first, beats), per-iteration ``iter_stride`` and the
    region it may touch (default: exactly the beats the program walks for iteration 0)."""
    mode: AgcuMode
    base: int
    counts: tuple
    strides: tuple
    iter_stride: int = 0
    region: tuple | None = None       # (first beat, beats)

    @classmethod
    def read(cls, base, counts, strides, **kw) -> "AgcuProgram":
        return cls(AgcuMode.READ, base, tuple(counts), tuple(strides), **kw)

    @classmethod
    def write(cls, base, counts, strides, **kw) -> "AgcuProgram":
        return cls(AgcuMode.WRITE, base, tuple(counts), tuple(strides), **kw)

    @property
    def beats(self) -> int:
        n = 1
        for c in self.counts:
            n *= c
        return n

    def span(self) -> tuple[int, int]:
        """(lowest beat, highest beat + 1) the program touches at iteration 0."""
        lo = hi = self.base
        for c, s in zip(self.counts, self.strides):
            if c > 1:
                if s < 0:
                    lo += (c - 1) * s
                else:
                    hi += (c - 1) * s
        return lo, hi + 1

    def writes(self, p: RduParams) -> list[tuple[int, int]]:
        n = p.agcu_counters
        if len(self.counts) != len(self.strides):
            raise KernelError("AGCU program: counts and strides differ in length")
        if len(self.counts) > n:
            raise KernelError(f"AGCU program has {len(self.counts)} counters, an AGCU has {n}")
        if any(c < 1 for c in self.counts):
            raise KernelError(f"AGCU program counts must be >= 1: {self.counts}")
        lo, hi = self.span()
        rb, rn = self.region if self.region is not None else (lo, hi - lo)
        if lo < rb or hi > rb + rn or rb < 0 or rb + rn > p.hbm_beats:
            raise KernelError(f"AGCU program beats [{lo}, {hi}) outside its region "
                              f"[{rb}, {rb + rn}) or the HBM ({p.hbm_beats} beats)")
        w = [(AgcuReg.MODE, int(self.mode)), (AgcuReg.REGION_BASE, rb),
             (AgcuReg.REGION_BEATS, rn), (AgcuReg.BASE, self.base),
             (AgcuReg.ITER_STRIDE, self.iter_stride & 0xFFFFFFFF)]
        writable = agcu_writable_counters(p)
        if len(self.counts) > writable:
            raise KernelError(f"AGCU program needs {len(self.counts)} counters, but only "
                              f"{writable} can be configured by a bitstream (hdl/agcu.py "
                              f"declares registers up to 0x{regs_per_kind('agcu') - 1:02x})")
        for k in range(writable):
            c = self.counts[k] if k < len(self.counts) else 1
            s = self.strides[k] if k < len(self.strides) else 0
            w += [(agcu_count_reg(k), c), (agcu_stride_reg(k), s & 0xFFFFFFFF)]
        return [(int(a), int(v)) for a, v in w]

    def summary(self, beat_bytes: int) -> str:
        lo, hi = self.span()
        return (f"{self.mode.name.lower()} {self.beats} beats ({self.beats * beat_bytes} B), "
                f"base beat {self.base}, counts {list(self.counts)} strides "
                f"{list(self.strides)}, span beats [{lo}, {hi})")


@dataclass
class UnitConfig:
    unit: UnitInfo
    writes: list                      # [(reg, value)]
    role: str = ""
    summary: str = ""


@dataclass
class _RouteEntry:
    route: Route
    what: str = ""

    @property
    def label(self) -> str:
        r = self.route
        return f"{r.src} -> {', '.join(r.dsts)}" + (f" ({self.what})" if self.what else "")


class KernelBuilder:
    """Collect units and routes of one kernel; see the module docstring."""

    def __init__(self, params: RduParams, name: str = "kernel", *, kernel_id: int = 0,
                 topology: FabricTopology | None = None, clear_unused_switches: bool = True):
        self.params = params
        self.name = name
        self.kernel_id = kernel_id
        self.topo = topology or FabricTopology(params)
        self.clear_unused_switches = clear_unused_switches
        self.units: dict[str, UnitConfig] = {}
        self.routes: list[_RouteEntry] = []
        self.metadata: dict = {}
        self._by_name = {u.name: u for u in unit_map(params)}
        self._used: dict[str, _RouteEntry] = {}      # switch output -> route holding it
        self._driven: dict[str, _RouteEntry] = {}    # consumer port -> route driving it
        self._sources: dict[str, _RouteEntry] = {}   # producer port -> its route

    # ---- units -------------------------------------------------------------------------------
    def _unit(self, kind: str, which) -> UnitInfo:
        name = which if isinstance(which, str) else f"{kind}{int(which)}"
        u = self._by_name.get(name)
        if u is None or u.kind != kind:
            n = sum(1 for x in self._by_name.values() if x.kind == kind)
            raise KernelError(f"no unit {name!r} on this chip ({n} {kind.upper()}s: "
                              f"{kind}0..{kind}{n - 1})")
        return u

    def add_unit(self, kind: str, which, writes, role: str = "", summary: str = "") -> UnitInfo:
        """Configure unit ``which`` (index or name) of ``kind`` with ``(reg, value)`` writes."""
        u = self._unit(kind, which)
        if u.name in self.units:
            prev = self.units[u.name].role
            raise KernelError(f"{u.name} is configured twice"
                              + (f" (already used as {prev!r})" if prev else ""))
        ws = []
        for reg, value in writes:
            reg, value = int(reg), int(value)
            if not 0 <= reg < u.n_regs:
                raise KernelError(f"{u.name}: register 0x{reg:02x} out of range "
                                  f"(the unit has {u.n_regs})")
            ws.append((reg, value & 0xFFFFFFFF))
        self.units[u.name] = UnitConfig(u, ws, role, summary)
        return u

    def pcu(self, which, cfg, role: str = "", summary: str = "") -> UnitInfo:
        """A PCU configured by a :class:`hdl.pcu.PcuConfig`."""
        return self.add_unit("pcu", which, cfg.writes(), role, summary)

    def pmu(self, which, cfg, role: str = "", summary: str = "") -> UnitInfo:
        """A PMU configured by a :class:`hdl.pmu.PmuConfig`."""
        return self.add_unit("pmu", which, cfg.writes(self.params), role, summary)

    def agcu(self, which, prog: AgcuProgram, role: str = "", summary: str = "") -> UnitInfo:
        """An AGCU running :class:`AgcuProgram` ``prog``."""
        return self.add_unit("agcu", which, prog.writes(self.params), role,
                             summary or prog.summary(self.params.beat_bytes))

    # ---- routes ------------------------------------------------------------------------------
    def _port(self, port: str, producer: bool) -> str:
        want = "producer (output)" if producer else "consumer (input)"
        if not isinstance(port, str) or "." not in port:
            raise KernelError(f"bad port name {port!r} (expected 'unit.port', e.g. 'pcu0.vin1')")
        unit, pname = port.split(".", 1)
        if unit not in self._by_name or self._by_name[unit].kind not in ("pcu", "pmu", "agcu"):
            raise KernelError(f"port {port!r}: no unit {unit!r} with fabric ports on this chip")
        table = self.topo._sink if producer else self.topo._driver
        if port not in table:
            other = self.topo._driver if producer else self.topo._sink
            if port in other:
                raise KernelError(f"port {port!r} of {unit} is a "
                                  f"{'consumer (input)' if producer else 'producer (output)'}, "
                                  f"not a {want}")
            have = sorted({n.split(".", 1)[1] for n in list(self.topo._sink)
                           + list(self.topo._driver) if n.split(".", 1)[0] == unit})
            raise KernelError(f"{unit} has no port {pname!r} (its ports: {', '.join(have)})")
        return port

    def route(self, src: str, dsts, *, what: str = "") -> Route:
        """Route producer ``src`` to consumer ``dsts`` (one port, or a list = multicast) on the
        network of ``src``; shortest free path given the routes made so far."""
        multi = not isinstance(dsts, str)
        dsts = list(dsts) if multi else [dsts]
        if not dsts:
            raise KernelError(f"route from {src}: no destination")
        self._port(src, True)
        for d in dsts:
            self._port(d, False)
        net = self.topo.net_of(src)
        for d in dsts:
            dn = self.topo.net_of(d)
            if dn != net:
                raise KernelError(f"{d} is unreachable from {src}: {src} is on the "
                                  f"{_NET_LONG[net]} network, {d} on the {_NET_LONG[dn]} network")
        if len(set(dsts)) != len(dsts):
            raise KernelError(f"route from {src} lists a destination twice: {dsts}")
        for d in dsts:
            if d in self._driven:
                raise KernelError(f"{d} would be driven twice: by {src} and already by "
                                  f"{self._driven[d].route.src} (route {self._driven[d].label})")
        if src in self._sources:
            raise KernelError(f"{src} is already the source of route {self._sources[src].label}; "
                              f"a producer feeds one route - make it one multicast route")
        try:
            r = self.topo.route_multicast(net, src, dsts, frozenset(self._used))
        except RouteError as e:
            raise KernelError(self._explain(net, src, dsts, e)) from None
        entry = _RouteEntry(r, what)
        self.routes.append(entry)
        for o in r.outputs:
            self._used[o] = entry
        for d in dsts:
            self._driven[d] = entry
        self._sources[src] = entry
        return r

    def _explain(self, net, src, dsts, err) -> str:
        """Turn a RouteError into a message naming the routes in the way."""
        try:
            free = self.topo.route_multicast(net, src, dsts, frozenset())
        except RouteError:
            return (f"{', '.join(dsts)} unreachable from {src} on the {_NET_LONG[net]} "
                    f"network even on an empty fabric ({err})")
        blockers = []
        for o in free.outputs:
            if o in self._used and self._used[o] not in blockers:
                blockers.append(self._used[o])
        names = "; ".join(f"{b.label} holds {', '.join(sorted(o for o in b.route.outputs if o in free.outputs))}"
                          for b in blockers)
        return (f"route conflict: no free {_NET_LONG[net]} path {src} -> {', '.join(dsts)}; "
                f"the switch outputs it needs are taken by: {names or 'other routes'}")

    # ---- output ------------------------------------------------------------------------------
    def _check_complete(self):
        for e in self.routes:
            for port in (e.route.src,) + tuple(e.route.dsts):
                unit = port.split(".", 1)[0]
                if unit not in self.units:
                    raise KernelError(f"route {e.label} uses {unit}, which the kernel does not "
                                      f"configure (add it with pcu()/pmu()/agcu())")

    def unit_ids(self) -> list[int]:
        """Config-bus ids of the configured units (the ones to start)."""
        return sorted(cfg.unit.id for cfg in self.units.values())

    def writes(self) -> list[tuple[int, int, int]]:
        """All config writes ``(unit id, reg, value)`` in bitstream order."""
        self._check_complete()
        out = [(cfg.unit.id, reg, v) for cfg in self.units.values() for reg, v in cfg.writes]
        for e in self.routes:
            out += list(e.route.writes)
        if self.clear_unused_switches:
            for info in self.topo.switches.values():
                for net, (_, outs) in info.ports.items():
                    for o in outs:
                        port = f"{info.name}.{net}.out.{o}"
                        if port not in self._used:
                            out.append(self.topo.select(port, None))
        return out

    def routes_json(self) -> dict:
        units = {str(cfg.unit.id): cfg.unit.name + (f" ({cfg.role})" if cfg.role else "")
                 for cfg in self.units.values()}
        for info in self.topo.switches.values():
            if any(o.startswith(info.name + ".") for o in self._used):
                units[str(info.unit_id)] = f"switch {info.name}"
        rs = []
        for e in self.routes:
            j = e.route.to_json()
            j["latency"] = {d: e.route.latency[d] for d in e.route.dsts}
            if e.what:
                j["what"] = e.what
            rs.append(j)
        return {"units": units, "routes": rs}

    def kernel(self) -> Kernel:
        return Kernel(self.kernel_id, self.name, tuple(self.unit_ids()))

    def bitstream(self) -> Bitstream:
        md = {"kernel": self.name, "compiler": "sw.kernels.builder"}
        md.update(self.metadata)
        return Bitstream.for_params(self.params, writes=self.writes(), kernels=[self.kernel()],
                                    metadata=md, routes=self.routes_json())

    def to_bytes(self) -> bytes:
        data = self.bitstream().to_bytes()
        limit = config_buffer_bytes(self.params)
        if len(data) > limit:
            raise KernelError(f"kernel {self.name!r}: bitstream of {len(data)} B exceeds the config "
                              f"controller's {limit} B buffer")
        return data

    def describe(self) -> str:
        """A readable summary: units (with roles and positions), routes with hop counts."""
        p = self.params
        lines = [f"kernel {self.name!r} (id {self.kernel_id}) on a {p.grid_rows}x{p.grid_cols} "
                 f"grid: {len(self.units)} units, {len(self.routes)} routes"]
        lines.append("units:")
        for cfg in sorted(self.units.values(), key=lambda c: c.unit.id):
            u = cfg.unit
            pos = "" if u.pos is None else f" @({u.pos[0]},{u.pos[1]})"
            lines.append(f"  {u.name:<7} id {u.id:<3}{pos:<9} {cfg.role:<14} "
                         f"{len(cfg.writes):>3} writes  {cfg.summary}".rstrip())
        lines.append("routes:")
        for e in self.routes:
            r = e.route
            hops = ", ".join(f"{d}: {r.latency[d]} hop{'s' if r.latency[d] != 1 else ''}"
                             for d in r.dsts)
            lines.append(f"  [{r.net}] {r.src} -> {', '.join(r.dsts)}  ({hops}; "
                         f"{len(r.hops)} switch outputs)" + (f"  {e.what}" if e.what else ""))
        n_sw = len(self.writes()) - sum(len(c.writes) for c in self.units.values())
        lines.append(f"config writes: {sum(len(c.writes) for c in self.units.values())} unit, "
                     f"{n_sw} switch")
        return "\n".join(lines)


def place(p: RduParams, *, pcus=(), pmus=(), agcus=(), fixed=None, edges=(), build,
          tries: int = 300, error=KernelError):
    """Assign roles to units and build the kernel: candidate assignments of ``pcus``/``pmus``/
    ``agcus`` (role names) to distinct units of each kind, ordered by the total Manhattan
    distance of ``edges`` (pairs of roles; ``fixed`` maps further roles to grid positions);
    the first of the ``tries`` best for which ``build(role -> unit name)`` does not raise
    :class:`KernelError` (a route conflict) wins. Returns ``build``'s result; raises ``error``
    when the chip has too few units or nothing routes."""
    kinds = [("pcu", list(pcus)), ("pmu", list(pmus)), ("agcu", list(agcus))]
    pools = {}
    for kind, roles in kinds:
        units = units_of_kind(p, kind)
        if len(roles) > len(units):
            raise error(f"the mapping needs {len(roles)} {kind.upper()}s; the chip has "
                        f"{len(units)}")
        pools[kind] = list(itertools.permutations(units, len(roles)))
    cands = []
    for pc, pm, ag in itertools.product(pools["pcu"], pools["pmu"], pools["agcu"]):
        units = {}
        for (kind, roles), chosen in zip(kinds, (pc, pm, ag)):
            units.update(zip(roles, chosen))
        pos = {**(fixed or {}), **{r: u.pos for r, u in units.items()}}
        cost = sum(abs(pos[a][0] - pos[b][0]) + abs(pos[a][1] - pos[b][1]) for a, b in edges)
        cands.append((cost, len(cands), units))
    cands.sort(key=lambda c: c[:2])
    last = None
    for _, _, units in cands[:tries]:
        try:
            return build({role: u.name for role, u in units.items()})
        except KernelError as e:
            last = e
    raise error(f"no placement routes without conflicts: {last}")

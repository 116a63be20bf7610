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
- a route with no path at all, or none even when every route of the kernel is rerouted
  (``conflict``: the message names the routes holding the switch outputs its shortest path
  needs, and the outputs the negotiated router could not share out, with the routes fighting
  for each);
- at :meth:`bitstream`, a route whose end is a unit the kernel does not configure.

Routing: :meth:`KernelBuilder.route` routes each stream at once, greedily, on the shortest path
whose switch outputs are still free (:meth:`hdl.fabric.FabricTopology.route_multicast`), so a
kernel that routes that way keeps exactly those routes. When a stream finds no free path (an
earlier route holds what it needs), every stream recorded so far is rerouted together with it
by negotiated-congestion routing (:mod:`sw.kernels.router`, PathFinder); on success those
routes replace the earlier ones (later streams are again routed greedily on top of them, with
the same fallback), otherwise the route is refused and the kernel keeps its earlier routes.
``KernelBuilder(..., negotiate=False)`` keeps the greedy router alone (so do the builders
:func:`place` creates after its first ``negotiate_tries`` candidates failed).

The bitstream holds the unit writes (in the order the units were added), then the routes'
switch writes, then (``clear_unused_switches``, default on) a "no input" write for every
other switch output of the chip, so that routes left by an earlier kernel cannot fork this
kernel's streams into idle units.
"""

from __future__ import annotations

import contextvars
import heapq
import re
from dataclasses import dataclass, field

from hdl.agcu import AgcuMode, AgcuReg, agcu_count_reg, agcu_stride_reg
from hdl.fabric import FabricTopology, Route, RouteError
from hdl.params import RduParams
from hdl.unitmap import UnitInfo, regs_per_kind, unit_map, units_of_kind
from sw.bitstream import Bitstream, Kernel, config_buffer_bytes
from sw.kernels.router import NegotiatedRouter, Net

__all__ = ["KernelBuilder", "KernelError", "AgcuProgram", "UnitConfig", "agcu_writable_counters",
           "place_roles"]

_NET_LONG = {"vec": "vector", "scl": "scalar", "ctl": "control"}

# default of KernelBuilder(negotiate=None); place() turns it off past its negotiate_tries
_NEGOTIATE = contextvars.ContextVar("sw_kernels_negotiate", default=True)


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
                 topology: FabricTopology | None = None, clear_unused_switches: bool = True,
                 negotiate: bool | None = None):
        self.params = params
        self.name = name
        self.kernel_id = kernel_id
        self.topo = topology or FabricTopology(params)
        self.clear_unused_switches = clear_unused_switches
        self.negotiate = _NEGOTIATE.get() if negotiate is None else negotiate
        self.negotiations: list[tuple[int, int]] = []   # (routes, iterations) per reroute
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
        network of ``src``: the shortest free path given the routes made so far, else every
        route rerouted together (module docstring; the routes returned earlier may then be
        replaced: :attr:`routes` holds the current ones)."""
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
            msg = self._explain(net, src, dsts, e)
            if not self.negotiate or not msg.startswith("route conflict"):
                raise KernelError(msg) from None
            return self._reroute_all(src, dsts, what, msg)
        self._record(_RouteEntry(r, what))
        return r

    def _record(self, entry: _RouteEntry):
        r = entry.route
        self.routes.append(entry)
        for o in r.outputs:
            self._used[o] = entry
        for d in r.dsts:
            self._driven[d] = entry
        self._sources[r.src] = entry

    def _reroute_all(self, src, dsts, what, conflict: str) -> Route:
        """Negotiated routing of every recorded route and the new one (``conflict``: the
        greedy router's message, kept in the error when this fails too)."""
        entries = self.routes + [_RouteEntry(None, what)]
        nets = [Net(e.route.src, e.route.dsts, e.label) for e in self.routes]
        nets.append(Net(src, tuple(dsts), f"{src} -> {', '.join(dsts)}"
                        + (f" ({what})" if what else "")))
        router = NegotiatedRouter(self.topo)
        try:
            routes = router.route(nets)
        except RouteError as e:
            raise KernelError(f"{conflict}; rerouting all {len(nets)} routes together does not "
                              f"help either: {e}") from None
        self.routes, self._used, self._driven, self._sources = [], {}, {}, {}
        for e, r in zip(entries, routes):
            self._record(_RouteEntry(r, e.what))
        self.negotiations.append((len(nets), router.iterations))
        return routes[-1]

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
        how = ""
        if self.negotiations:
            n, it = self.negotiations[-1]
            how = (f" (the first {n} rerouted together by the negotiated router, {it} "
                   f"iteration{'s' if it != 1 else ''})")
        lines.append("routes:" + how)
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
          tries: int = 300, negotiate_tries: int = 20, error=KernelError):
    """Assign roles to units and build the kernel: candidate assignments of ``pcus``/``pmus``/
    ``agcus`` (role names) to distinct units of each kind, ordered by the total Manhattan
    distance of ``edges`` (pairs of roles; ``fixed`` maps further roles to grid positions);
    the first of the ``tries`` best for which ``build(role -> unit name)`` does not raise
    :class:`KernelError` (a route conflict) wins. Returns ``build``'s result; raises ``error``
    when the chip has too few units, a role is unknown or named twice, or nothing routes (the
    message names the best candidate tried and the KernelError it raised: the route that
    failed).

    The candidates come lazily from :class:`_Placer`: exactly in increasing route length (ties
    in a fixed order) as long as an exact best-first search stays within its budget, which
    covers the kernels so far and 6 PCU + 6 PMU + 4 AGCU dataflow graphs on the default chip;
    beyond it, in about increasing length from a beam and a local search. Each candidate is
    tried once; the first takes a few ms (at most ~50 ms).

    Routing: the first ``negotiate_tries`` candidates are built with the negotiated fallback
    of :meth:`KernelBuilder.route` (a set that cannot be routed costs up to ~0.1 s there),
    the later ones greedily (~1 ms), so that a kernel no candidate routes fails in a few
    seconds at most, not minutes."""
    if tries < 1:
        raise error(f"place: tries = {tries}; at least one candidate must be tried")
    placer = _Placer(p, pcus, pmus, agcus, fixed or {}, edges, error)
    tried, best, lengths = 0, None, []
    for cost, names in placer.candidates():
        tried += 1
        lengths.append(cost)
        token = _NEGOTIATE.set(False) if tried > negotiate_tries else None
        try:
            return build(names)
        except KernelError as e:
            if best is None or cost < best[0]:
                best = (cost, names, e)
        finally:
            if token is not None:
                _NEGOTIATE.reset(token)
        if tried >= tries:
            break
    cost, names, e = best
    shown = ", ".join(f"{r}={u}" for r, u in names.items())
    span = f"length {cost}" if min(lengths) == max(lengths) else \
        f"lengths {min(lengths)}..{max(lengths)}"
    raise error(f"no placement routes without conflicts ({tried} candidate"
                f"{'s' if tried != 1 else ''} tried, {span}); the best ({shown}; length "
                f"{cost}) failed with: {e}")


def place_roles(p: RduParams, *, build, what: str, roles: dict | None = None, pcus=(), pmus=(),
                agcus=(), edges=(), error=KernelError):
    """Build a kernel whose roles are ``pcus``/``pmus``/``agcus``: with ``roles`` (role -> unit
    name) when given, else by :func:`place` (``edges``). ``build`` gets every role and its unit
    (other roles given are dropped) and returns :func:`place`'s result. ``error`` (naming the
    kernel: ``what``) when a role is missing or the mapping does not route."""
    need = list(dict.fromkeys([*pcus, *pmus, *agcus]))
    if roles is not None:
        missing = set(need) - set(roles)
        if missing:
            raise error(f"{what} roles: missing {sorted(missing)}")
        try:
            return build({r: roles[r] for r in need})
        except KernelError as e:
            raise error(f"{what} mapping {roles} does not route: {e}") from None
    return place(p, pcus=list(pcus), pmus=list(pmus), agcus=list(agcus), edges=list(edges),
                 build=build, error=error)


class _Placer:
    """The candidate placements of :func:`place`, shortest first, each once.

    Roles are numbered by *depth*, the order the exact search assigns them: AGCU roles with
    edges first (4 units at the chip's edges: the most constrained), then roles with an edge
    to a fixed or numbered role before the others, more edges first, then more edges to fixed
    and numbered roles, then the given order. An assignment is a tuple of *slots* (indices into
    the chip's PCUs, PMUs and AGCUs in that order; the fixed roles' positions are the slots
    after them), one per depth.

    Exact phase: best-first over partial assignments keyed ``(bound, -depth, lex)``.
    ``bound`` is a lower bound of the route length of every completion: the edges between
    assigned or fixed roles exactly, plus half of a sum over the unassigned roles, each on the
    free unit of its kind minimising twice its edges to assigned/fixed roles plus, per edge to
    another unassigned role, the distance to the nearest other unit of that role's kind (so an
    edge between two unassigned roles is counted half from each end). A complete assignment's
    key is its length, so they leave the heap in increasing length; among equal bounds the
    deepest node goes first (a dive), then the lowest ``lex`` (the assigned slots in the given
    role order, -1 for the others): deterministic. The phase gives up after ``exact_first``
    expansions without a candidate, or ``exact_all`` in all (~15 us each).

    Local phase (only past that budget): the seeds are the candidates already given, else the
    leaves of a beam search (``beam`` nodes of the lowest ``(bound, lex)`` kept per depth), the
    best ``descents`` of them improved by moves (a role to a free unit of its kind) and swaps
    (two roles of a kind) while the length drops; then best-first over that neighbourhood with
    a seen-set: about increasing length, each candidate once."""

    exact_first = 1600
    exact_all = 20000
    beam = 32
    descents = 4

    def __init__(self, p, pcus, pmus, agcus, fixed, edges, error):
        kinds = ("pcu", "pmu", "agcu")
        roles, kind_of = [], {}
        for k, rs in zip(range(3), (pcus, pmus, agcus)):
            rs = list(rs)
            units = units_of_kind(p, kinds[k])
            if len(rs) > len(units):
                raise error(f"the mapping needs {len(rs)} {kinds[k].upper()}s; the chip has "
                            f"{len(units)}")
            for r in rs:
                if r in kind_of or r in fixed:
                    raise error(f"placement role {r!r} is named twice (roles must be distinct, "
                                f"and distinct from the fixed ones)")
                kind_of[r] = k
                roles.append(r)
        edges = [tuple(e) for e in edges]
        for a, b in edges:
            for r in (a, b):
                if r not in kind_of and r not in fixed:
                    raise error(f"placement edge ({a!r}, {b!r}): role {r!r} is neither placed "
                                f"(pcus/pmus/agcus) nor fixed")
        self.slots = [u for k in kinds for u in units_of_kind(p, k)]
        self.kslots = [[i for i, u in enumerate(self.slots) if u.kind == k] for k in kinds]
        pos = [u.pos for u in self.slots] + [tuple(fixed[r]) for r in fixed]
        fslot = {r: len(self.slots) + i for i, r in enumerate(fixed)}
        self.dist = dist = [[abs(a[0] - b[0]) + abs(a[1] - b[1]) for b in pos] for a in pos]
        self.roles = roles
        n = self.n = len(roles)

        # depth order
        deg = dict.fromkeys(roles, 0)
        for a, b in edges:
            for r in {a, b}:
                if r in deg:
                    deg[r] += 1
        order, known, left = [], set(fixed), list(roles)
        while left:
            best = max(left, key=lambda r: (kind_of[r] == 2 and deg[r] > 0,
                                            any(r in e and (set(e) - {r}) & known
                                                for e in edges),
                                            deg[r],
                                            sum((a == r and b in known) + (b == r and a in known)
                                                for a, b in edges)))
            order.append(best)
            known.add(best)
            left.remove(best)
        at = self.at = {r: i for i, r in enumerate(order)}
        self.kind = [kind_of[r] for r in order]
        self.opos = [roles.index(r) for r in order]     # depth -> index in the given order

        # edges by depth: exact length, neighbours (j >= 0: depth j, j < 0: fixed slot ~j)
        self.const = 0
        self.pairs = []                 # (depth, depth) placed-placed
        self.pins = []                  # (depth, slot) placed-fixed
        self.nbrs = [[] for _ in range(n)]
        for a, b in edges:
            if a == b:
                continue
            if a in fixed and b in fixed:
                self.const += dist[fslot[a]][fslot[b]]
            elif a in fixed or b in fixed:
                r, f = (b, a) if a in fixed else (a, b)
                self.pins.append((at[r], fslot[f]))
                self.nbrs[at[r]].append(~fslot[f])
            else:
                self.pairs.append((at[a], at[b]))
                self.nbrs[at[a]].append(at[b])
                self.nbrs[at[b]].append(at[a])
        # the edges that assigning depth d completes: j < d (depth) or ~slot
        self.closes = [[j for j in self.nbrs[d] if j < d] for d in range(n)]

        # bound terms, in half units: each unassigned role i on the free unit v of its kind
        # minimising 2 * (its edges to assigned/fixed roles) + for each edge to an unassigned
        # role j the distance from v to the nearest other unit of j's kind (_near; each such
        # edge is so counted half from both ends). terms[c]: (kind, deps, fixed slots, open kinds) of the
        # roles i >= c when roles < c are assigned; split[d]: terms[d + 1] into those that do
        # not depend on the unit given to depth d (static) and the others.
        terms = []
        for c in range(n + 1):
            tc = []
            for i in range(c, n):
                deps = tuple(j for j in self.nbrs[i] if 0 <= j < c)
                fx = tuple(~j for j in self.nbrs[i] if j < 0)
                ok = tuple(sorted(self.kind[j] for j in self.nbrs[i] if j >= c))
                if deps or fx or ok:
                    tc.append((self.kind[i], deps, fx, ok))
            terms.append(tc)
        self.root_terms = terms[0]
        self.split = []
        for d in range(n):
            k = self.kind[d]
            stat = [t for t in terms[d + 1] if t[0] != k and d not in t[1]]
            same = [t for t in terms[d + 1] if t[0] == k and d not in t[1]]
            nbr = [t for t in terms[d + 1] if d in t[1]]
            self.split.append((stat, same, nbr))
        self._near = [[min((dist[v][g] for g in ks if g != v), default=0)
                       for ks in self.kslots] for v in range(len(self.slots))]
        self._memo = {}
        self.expansions = 0

    # ---- helpers ---------------------------------------------------------------------------

    def length(self, a) -> int:
        d = self.dist
        return (self.const + sum(d[a[i]][a[j]] for i, j in self.pairs)
                + sum(d[a[i]][s] for i, s in self.pins))

    def names(self, a) -> dict:
        return {r: self.slots[a[self.at[r]]].name for r in self.roles}

    def _table(self, k, ends, ok):
        """``[(twice the bound, unit)]`` of a role of kind ``k`` with edges to units ``ends``
        and edges to unassigned roles of kinds ``ok``, for every unit of its kind, best first."""
        key = (k, ends, ok)
        t = self._memo.get(key)
        if t is None:
            dist, near = self.dist, self._near
            t = sorted((2 * sum(dist[g][e] for e in ends) + sum(near[g][kj] for kj in ok), g)
                       for g in self.kslots[k])
            self._memo[key] = t
        return t

    def _bound2(self, terms, a, masks) -> int:
        """Twice a lower bound of the unassigned roles' share of the route length."""
        total, memo = 0, self._memo
        for k, deps, fx, ok in terms:
            ends = tuple([a[j] for j in deps]) + fx if deps else fx
            t = memo.get((k, ends, ok)) or self._table(k, ends, ok)
            m = masks[k]
            for v, g in t:
                if m >> g & 1:
                    total += v
                    break
        return total

    # ---- the two phases ----------------------------------------------------------------------

    def candidates(self):
        """Yield ``(route length, {role: unit name})``, each assignment once."""
        given = []
        if (yield from self._exact(given)):
            yield from self._local(given)

    def _exact(self, given):
        """The exact phase: appends each candidate it yields to ``given``; returns True when it
        ran out of budget (candidates may remain), False when it gave them all."""
        n = self.n
        masks0 = tuple(sum(1 << g for g in ks) for ks in self.kslots)
        if n == 0:
            given.append(())
            yield self.const, {}
            return False
        root = self.const + (self._bound2(self.root_terms, (), masks0) + 1) // 2
        heap = [(root, 0, (-1,) * n, 0, (), masks0, self.const)]
        count = 1
        while heap:
            if self.expansions >= (self.exact_all if given else self.exact_first):
                return True
            node = heapq.heappop(heap)
            if len(node[4]) == n:
                given.append(node[4])
                yield node[6], self.names(node[4])
                continue
            self.expansions += 1
            for f, lex, a, masks, exact in self._expand(node):
                heapq.heappush(heap, (f, -len(a), lex, count, a, masks, exact))
                count += 1
        return False

    def _expand(self, node):
        """The children of a search node: ``(bound, lex, assignment, free masks, exact)``."""
        _, _, lex, _, a, masks, exact = node
        d = len(a)
        dist, memo, table = self.dist, self._memo, self._table
        k = self.kind[d]
        m = masks[k]
        o = self.opos[d]
        stat, same, nbr = self.split[d]
        static = self._bound2(stat, a, masks)
        # roles of depth d's kind: their best free unit, or the next one if the child takes it
        best2 = []
        for tk, deps, fx, ok in same:
            ends = tuple([a[j] for j in deps]) + fx if deps else fx
            first = None
            for v, h in memo.get((tk, ends, ok)) or table(tk, ends, ok):
                if m >> h & 1:
                    if first is not None:
                        best2.append((first[0], first[1], v))
                        break
                    first = (v, h)
            else:
                best2.append((first[0], first[1], first[0]))
        closes = self.closes[d]
        last = d + 1 == self.n
        head, tail = lex[:o], lex[o + 1:]
        out = []
        for g in self.kslots[k]:
            bit = 1 << g
            if not m & bit:
                continue
            ex = exact
            dg = dist[g]
            for j in closes:
                ex += dg[a[j]] if j >= 0 else dg[~j]
            na = a + (g,)
            if last:
                out.append((ex, head + (g,) + tail, na, masks, ex))
                continue
            nm = masks[:k] + (m & ~bit,) + masks[k + 1:]
            b2 = static
            for tk, deps, fx, ok in nbr:
                ends = tuple([na[j] for j in deps]) + fx
                mk = nm[tk]
                for v, h in memo.get((tk, ends, ok)) or table(tk, ends, ok):
                    if mk >> h & 1:
                        b2 += v
                        break
            for v1, h, v2 in best2:
                b2 += v2 if h == g else v1
            out.append((ex + (b2 + 1) // 2, head + (g,) + tail, na, nm, ex))
        return out

    def _beam(self):
        """Beam search: each depth keeps the ``beam`` children of the lowest ``(bound, lex)``;
        returns the leaves, best first."""
        masks0 = tuple(sum(1 << g for g in ks) for ks in self.kslots)
        level = [(0, 0, (-1,) * self.n, 0, (), masks0, self.const)]
        for _ in range(self.n):
            children = [(f, 0, lex, 0, a, masks, ex)
                        for node in level for f, lex, a, masks, ex in self._expand(node)]
            level = heapq.nsmallest(self.beam, children)
        return level

    def _moves(self, a, cost):
        """``(length, assignment)`` one move (a role to a free unit of its kind) or one swap
        (two roles of a kind) away from ``a`` of length ``cost``."""
        dist, nbrs, kslots, kind = self.dist, self.nbrs, self.kslots, self.kind
        owner = {g: i for i, g in enumerate(a)}
        for i in range(self.n):
            gi = a[i]
            ends = [a[j] if j >= 0 else ~j for j in nbrs[i]]
            di = dist[gi]
            here = sum(di[e] for e in ends)
            for g in kslots[kind[i]]:
                j = owner.get(g)
                if j is None:
                    dg = dist[g]
                    yield cost + sum(dg[e] for e in ends) - here, a[:i] + (g,) + a[i + 1:]
                elif j > i:
                    dj = dist[g]
                    delta = sum(dj[a[l] if l >= 0 else ~l] - di[a[l] if l >= 0 else ~l]
                                for l in nbrs[i] if l != j)
                    delta += sum(di[a[l] if l >= 0 else ~l] - dj[a[l] if l >= 0 else ~l]
                                 for l in nbrs[j] if l != i)
                    b = list(a)
                    b[i], b[j] = g, gi
                    yield cost + delta, tuple(b)

    def _descend(self, a):
        """Best-improvement local search from ``a`` over moves and swaps."""
        cost = self.length(a)
        while True:
            c, b = min(self._moves(a, cost), default=(cost, a))
            if c >= cost:
                return cost, a
            cost, a = c, b

    def _local(self, given):
        """The local phase: candidates not in ``given``, about shortest first."""
        seen = set(given)
        heap = []

        def push(c, b):
            if b not in seen:
                seen.add(b)
                heapq.heappush(heap, (c, b))

        if given:
            for a in given:
                for c, b in self._moves(a, self.length(a)):
                    push(c, b)
        else:
            leaves = self._beam()
            for node in leaves[:self.descents]:
                push(*self._descend(node[4]))
            for node in leaves:
                push(node[6], node[4])
        while heap:
            cost, a = heapq.heappop(heap)
            yield cost, self.names(a)
            for c, b in self._moves(a, cost):
                push(c, b)

"""The compute fabric: the grid of PCUs and PMUs, one switch per tile, the mesh between the
switches and the edge attachment points of the AGCUs — and its topology as plain Python.

:class:`FabricTopology` is the single source of truth for the interconnect: it lists every
link (producer port -> consumer port) of every network, every switch's ports and, for every
(switch output, switch input) pair, the configuration write that joins them. :class:`Fabric`
elaborates its RTL from the same tables (one ``wiring.connect`` per topology link), and the
mapper/kernel builder uses :meth:`FabricTopology.route` /
:meth:`FabricTopology.route_multicast` to find paths and emit the switch configuration.

Port names (strings, used everywhere in the topology)
    - switch ports: ``"sw(r,c).{net}.in.{P}"`` / ``"sw(r,c).{net}.out.{P}"`` with ``net`` in
      ``vec scl ctl`` and ``P`` a switch port (``N0``, ``E1``, ``L2``, see :mod:`hdl.switch`);
    - unit ports: ``"{unit}.{port}"`` where ``unit`` is the unit-map name (kind + index among
      its kind, as in ``rdu inspect``: ``pcu0`` is unit id 4 on the default chip, ``pmu0`` id
      12) and ``port`` the unit's member, array elements with their index appended
      (``pcu0.vin1``, ``pcu0.ctl_out0``, ``pmu3.win``, ``pmu3.rout``);
    - AGCU attachment points: ``"agcu{i}.rd"`` (producer: data from memory into the fabric)
      and ``"agcu{i}.wr"`` (consumer: data from the fabric to memory), vector network only.

Mesh
    Switch output ``{D}{t}`` of ``sw(r,c)`` drives input ``{opposite D}{t}`` of the neighbour
    in direction ``D`` (N: row - 1, S: row + 1, E: col + 1, W: col - 1), on every network
    and track ``t < switch_tracks``. The local unit's outputs drive switch inputs ``L0..``
    and switch outputs ``L0..`` drive the unit's inputs, in :func:`unit_local_ports` order.
    AGCU ``i`` at ``(row, -1)`` (west) uses track 0 (1, ... if several share a row) of the
    ``W`` side of ``sw(row, 0)``; an east AGCU at ``(row, grid_cols)`` the ``E`` side of
    ``sw(row, grid_cols - 1)``. Ports towards the outside of the grid that no AGCU uses do
    not exist.

Timing
    Each switch on a path adds one cycle (registered hop, see :mod:`hdl.switch`); a path
    ``agcu0.rd -> pmu0.win`` through ``h`` switches delivers a word ``h`` cycles after the
    AGCU offered it when nothing stalls, at one word per cycle.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .bus import config_bus_signature
from .links import unit_control_signature, vector_link
from .params import RduParams
from .pcu import Pcu, pcu_geometry
from .pmu import Pmu
from .switch import (DIRS, NET_NAMES, NETS, OPPOSITE, Switch, sel_code, switch_reg,
                     switch_tracks)
from .unitmap import unit_map, units_of_kind

__all__ = ["Fabric", "FabricTopology", "Link", "Route", "SwitchInfo", "RouteError",
           "unit_local_ports", "switch_name"]


def unit_local_ports(p: RduParams, kind: str) -> dict:
    """``{net: (outputs, inputs)}`` of a tile unit, in switch local-port order (``L0, L1..``).

    ``outputs`` drive switch inputs ``Lk``; ``inputs`` are driven by switch outputs ``Lk``.
    """
    if kind == "pcu":
        g = pcu_geometry(p)
        return {"vec": (("vout",), tuple(f"vin{k}" for k in range(g["n_vin"]))),
                "scl": (("sout",), tuple(f"sin{k}" for k in range(g["n_sin"]))),
                "ctl": (("ctl_out0", "ctl_out1"), ("ctl_in0", "ctl_in1"))}
    if kind == "pmu":
        return {"vec": (("rout",), ("win", "gidx")),
                "scl": (("sout",), ("swin", "waddr", "sidx")),
                "ctl": (("ctl_out0", "ctl_out1"), ("ctl_in0", "ctl_in1"))}
    raise ValueError(f"no tile unit of kind {kind!r}")


def switch_name(pos) -> str:
    return f"sw({pos[0]},{pos[1]})"


_SW_PORT = re.compile(r"^sw\((\d+),(\d+)\)\.(vec|scl|ctl)\.(in|out)\.([NESWL]\d+)$")


class RouteError(ValueError):
    """No free path exists (or the ports are not of the right kind)."""


@dataclass(frozen=True)
class Link:
    """One point-to-point stream of the fabric: ``src`` (producer port) drives ``dst``."""
    net: str
    src: str
    dst: str


@dataclass(frozen=True)
class SwitchInfo:
    name: str                    # "sw(r,c)"
    pos: tuple[int, int]
    unit_id: int                 # config-bus id of the switch
    unit: str                    # name of the local unit ("pcu0", "pmu3")
    ports: dict                  # {net: (input port names, output port names)}


@dataclass(frozen=True)
class Route:
    """A configured path (or multicast tree) on one network.

    ``hops``: ``(switch output port, switch input port it selects)`` pairs, source side first
    (for a tree: in discovery order). ``writes``: the config writes ``(unit_id, addr, value)``
    that set it up. ``latency[dst]``: switches (= cycles) from ``src`` to ``dst``.
    """
    net: str
    src: str
    dsts: tuple[str, ...]
    hops: tuple[tuple[str, str], ...]
    writes: tuple[tuple[int, int, int], ...]
    latency: dict = field(default_factory=dict, compare=False)

    @property
    def outputs(self) -> frozenset:
        """Switch output ports this route occupies (add them to ``used`` for the next one)."""
        return frozenset(o for o, _ in self.hops)

    @property
    def clear_writes(self) -> tuple[tuple[int, int, int], ...]:
        """Writes that tear the route down (each output back to "no input")."""
        return tuple((u, a, 0) for u, a, _ in self.writes)

    def to_json(self) -> dict:
        """Entry of a bitstream's ROUTES section (see ``sw/bitstream.py``)."""
        return {"net": NET_NAMES[self.net], "src": self.src,
                "dst": self.dsts[0] if len(self.dsts) == 1 else list(self.dsts),
                "hops": [o.rsplit(".", 3)[0] + "." + o.rsplit(".", 1)[1] + "<-"
                         + i.rsplit(".", 1)[1] for o, i in self.hops]}


class FabricTopology:
    """Pure-Python description of the fabric interconnect of geometry ``p``.

    Attributes:
        ``params``, ``tracks``;
        ``switches``: ``{(r, c): SwitchInfo}``;
        ``links``: list of :class:`Link` (every stream in the fabric, all networks);
        ``tile_units``: ``{(r, c): UnitInfo}`` of the PCU/PMU in each tile;
        ``agcu_side``: ``{agcu index: (pos of its switch, switch port)}``.

    Lookups: :meth:`sink_of` (producer port -> consumer port), :meth:`driver_of` (consumer
    -> producer), :meth:`net_of`, :meth:`producers` / :meth:`consumers` (unit and AGCU ports
    of a network), :meth:`select` (the config write joining a switch input to an output).
    Routing: :meth:`route`, :meth:`route_multicast`.
    """

    def __init__(self, p: RduParams):
        self.params = p
        self.tracks = T = switch_tracks(p)
        R, Cn = p.grid_rows, p.grid_cols
        units = unit_map(p)
        self.tile_units = {u.pos: u for u in units if u.kind in ("pcu", "pmu")}
        sw_units = {u.pos: u for u in units if u.kind == "switch"}
        links: list[Link] = []

        def swp(pos, net, io, port):
            return f"{switch_name(pos)}.{net}.{io}.{port}"

        step = {"N": (-1, 0), "S": (1, 0), "E": (0, 1), "W": (0, -1)}
        for (r, c) in sw_units:
            for d in DIRS:
                nr, nc = r + step[d][0], c + step[d][1]
                if not (0 <= nr < R and 0 <= nc < Cn):
                    continue
                for net in NETS:
                    for t in range(T):
                        links.append(Link(net, swp((r, c), net, "out", f"{d}{t}"),
                                          swp((nr, nc), net, "in", f"{OPPOSITE[d]}{t}")))
            u = self.tile_units[(r, c)]
            for net, (outs, ins) in unit_local_ports(p, u.kind).items():
                for k, name in enumerate(outs):
                    links.append(Link(net, f"{u.name}.{name}", swp((r, c), net, "in", f"L{k}")))
                for k, name in enumerate(ins):
                    links.append(Link(net, swp((r, c), net, "out", f"L{k}"), f"{u.name}.{name}"))
        self.agcu_side = {}
        per_side: dict = {}
        for a in units_of_kind(p, "agcu"):
            row, col = a.pos
            if col < 0:
                pos, d = (row, 0), "W"
            elif col >= Cn:
                pos, d = (row, Cn - 1), "E"
            else:
                raise ValueError(f"AGCU {a.index} at {a.pos} is not on the west/east edge")
            t = per_side.get((pos, d), 0)
            per_side[(pos, d)] = t + 1
            if t >= T:
                raise ValueError(f"more AGCUs on the {d} side of {switch_name(pos)} than "
                                 f"switch_tracks ({T})")
            self.agcu_side[a.index] = (pos, f"{d}{t}")
            links.append(Link("vec", f"agcu{a.index}.rd", swp(pos, "vec", "in", f"{d}{t}")))
            links.append(Link("vec", swp(pos, "vec", "out", f"{d}{t}"), f"agcu{a.index}.wr"))
        self.links = links
        self._sink = {l.src: l.dst for l in links}
        self._driver = {l.dst: l.src for l in links}
        self._net = {}
        for l in links:
            self._net[l.src] = self._net[l.dst] = l.net
        assert len(self._sink) == len(links) and len(self._driver) == len(links)

        ports = {pos: {net: (set(), set()) for net in NETS} for pos in sw_units}
        for name in list(self._sink) + list(self._driver):
            mt = _SW_PORT.match(name)
            if mt:
                pos = (int(mt[1]), int(mt[2]))
                ports[pos][mt[3]][0 if mt[4] == "in" else 1].add(mt[5])

        def order(names):
            return tuple(sorted(names, key=lambda n: ("NESWL".index(n[0]), int(n[1:]))))
        self.switches = {
            pos: SwitchInfo(switch_name(pos), pos, sw_units[pos].id, self.tile_units[pos].name,
                            {net: (order(i), order(o)) for net, (i, o) in ports[pos].items()})
            for pos in sorted(sw_units)}
        # switch input port -> switch output ports of the same switch and network
        self._outs_of = {}
        for info in self.switches.values():
            for net, (ins, outs) in info.ports.items():
                o_names = tuple(f"{info.name}.{net}.out.{o}" for o in outs)
                for i in ins:
                    self._outs_of[f"{info.name}.{net}.in.{i}"] = o_names

    # ---- lookups -------------------------------------------------------------------------
    def sink_of(self, producer: str) -> str:
        return self._sink[producer]

    def driver_of(self, consumer: str) -> str:
        return self._driver[consumer]

    def net_of(self, port: str) -> str:
        return self._net[port]

    @staticmethod
    def is_switch_port(port: str) -> bool:
        return port.startswith("sw(")

    def producers(self, net: str) -> list[str]:
        """Unit/AGCU ports that drive ``net`` (valid ``src`` of a route)."""
        return [l.src for l in self.links if l.net == net and not self.is_switch_port(l.src)]

    def consumers(self, net: str) -> list[str]:
        """Unit/AGCU ports fed by ``net`` (valid ``dst`` of a route)."""
        return [l.dst for l in self.links if l.net == net and not self.is_switch_port(l.dst)]

    def select(self, out_port: str, in_port: str | None) -> tuple[int, int, int]:
        """Config write ``(switch unit id, register, value)`` making switch output
        ``out_port`` take ``in_port`` (same switch and network; ``None`` = no input)."""
        mo = _SW_PORT.match(out_port)
        if not mo or mo[4] != "out":
            raise ValueError(f"{out_port!r} is not a switch output port")
        sw = self.switches[(int(mo[1]), int(mo[2]))]
        if in_port is None:
            return (sw.unit_id, switch_reg(mo[3], mo[5]), 0)
        mi = _SW_PORT.match(in_port)
        if not mi or mi[4] != "in" or mi.group(1, 2, 3) != mo.group(1, 2, 3):
            raise ValueError(f"{in_port!r} is not an input of the switch/network of {out_port!r}")
        return (sw.unit_id, switch_reg(mo[3], mo[5]), sel_code(mi[5]))

    # ---- routing -------------------------------------------------------------------------
    def _check_ends(self, net, src, dsts):
        if net not in NETS:
            raise RouteError(f"unknown network {net!r} (one of {', '.join(NETS)})")
        if src not in self._sink or self.is_switch_port(src) or self._net[src] != net:
            raise RouteError(f"{src!r} is not a {net} producer port")
        for d in dsts:
            if d not in self._driver or self.is_switch_port(d) or self._net[d] != net:
                raise RouteError(f"{d!r} is not a {net} consumer port")

    def _bfs(self, starts, dst, used):
        """Shortest path from any switch input in ``starts`` to ``dst`` over free outputs.
        Returns ``[(out, in), ...]`` from the start input to ``dst``."""
        prev = {s: None for s in starts}
        q = deque(starts)
        while q:
            i = q.popleft()
            for o in self._outs_of[i]:
                if o in used:
                    continue
                nxt = self._sink[o]
                if nxt == dst:
                    path = [(o, i)]
                    while prev[i] is not None:
                        po, pi = prev[i]
                        path.append((po, pi))
                        i = pi
                    return path[::-1]
                if self.is_switch_port(nxt) and nxt not in prev:
                    prev[nxt] = (o, i)
                    q.append(nxt)
        return None

    def route(self, net: str, src: str, dst: str, used=frozenset()) -> Route:
        """Shortest path ``src`` -> ``dst`` on ``net`` avoiding the switch outputs in ``used``.

        Raises :class:`RouteError` when there is none. Add ``route.outputs`` to ``used``
        before routing the next stream.
        """
        return self.route_multicast(net, src, [dst], used)

    def route_multicast(self, net: str, src: str, dsts, used=frozenset()) -> Route:
        """A tree from ``src`` to every port in ``dsts`` (multicast, synchronous fork).

        Destinations are added one at a time, each by the shortest path from any switch input
        the tree already reaches over free outputs (so branches share the trunk).
        """
        dsts = tuple(dsts)
        if not dsts or len(set(dsts)) != len(dsts):
            raise RouteError("route needs distinct destinations")
        self._check_ends(net, src, dsts)
        used = set(used)
        first = self._sink[src]
        depth = {first: 1}          # switch input -> switches from src up to and including it
        hops, latency = [], {}
        for d in dsts:
            path = self._bfs(list(depth), d, used)
            if path is None:
                raise RouteError(f"no free {net} path {src} -> {d}")
            for o, i in path:
                used.add(o)
                hops.append((o, i))
                nxt = self._sink[o]
                if self.is_switch_port(nxt):
                    depth[nxt] = depth[i] + 1
            latency[d] = depth[path[-1][1]]
        writes = tuple(self.select(o, i) for o, i in hops)
        return Route(net, src, dsts, tuple(hops), writes, latency)


# ---------------------------------------------------------------------------------------------

def _port_obj(unit, name: str):
    """The member of ``unit`` named ``name`` (``vin1`` -> ``unit.vin[1]``)."""
    if hasattr(unit, name):
        return getattr(unit, name)
    m = re.match(r"^(.*?)(\d+)$", name)
    if m and hasattr(unit, m[1]):
        return getattr(unit, m[1])[int(m[2])]
    raise AttributeError(f"{type(unit).__name__} has no port {name!r}")


class Fabric(wiring.Component):
    """The compute fabric of geometry ``params`` (topology: :class:`FabricTopology`).

    Members:

    - ``cfg``: ``In(config_bus_signature())``, broadcast to every PCU, PMU and switch (each
      decodes its own unit id; AGCUs live in the memory system and see the same bus there).
    - ``agcu_rd[i]``: ``In(vector_link)``: beats from AGCU ``i``'s ``rd`` stream (memory ->
      fabric); enter switch port ``W0``/``E0`` of its edge switch.
    - ``agcu_wr[i]``: ``Out(vector_link)``: beats to AGCU ``i``'s ``wr`` stream.
    - ``units[k]``: ``In(unit_control_signature())`` of tile unit ``k`` in unit-id order
      (PCUs then PMUs; ``k = unit_id - first PCU id``, see :meth:`ctrl_of`).
    - ``busy``: any PCU/PMU busy. ``held``: ``Out(n_tiles)``, bit ``r * grid_cols + c`` = the
      switch at ``(r, c)`` holds a word in some output buffer (data in flight or stuck);
      watchdogs name the switches from it.

    Submodules are built in ``__init__`` (``self.pcus``, ``self.pmus``, ``self.switches``
    keyed by position, ``self.tile_unit`` keyed by position) so enclosing testbenches can
    reach them.

    In the chip: ``connect(m, memsys.agcu[i].rd, fabric.agcu_rd[i])``,
    ``connect(m, fabric.agcu_wr[i], memsys.agcu[i].wr)`` for every AGCU, the config
    controller's bus to ``cfg`` (next to the memory system's), and one unit-control
    interface per PCU/PMU from the sequencer to ``units``. Write routes before the
    producers start (a multicast route written while data flows may deliver the first
    words to only some of its branches).
    """

    def __init__(self, params: RduParams, topology: FabricTopology | None = None):
        self.params = p = params
        self.topology = topo = topology or FabricTopology(params)
        self.n_units = p.n_pcus + p.n_pmus
        super().__init__({
            "cfg": In(config_bus_signature()),
            "agcu_rd": In(vector_link(p)).array(p.n_agcus),
            "agcu_wr": Out(vector_link(p)).array(p.n_agcus),
            "units": In(unit_control_signature()).array(self.n_units),
            "busy": Out(1),
            "held": Out(p.n_tiles),
        })
        self.pcus = [Pcu(p, u.id) for u in units_of_kind(p, "pcu")]
        self.pmus = [Pmu(p, u.id) for u in units_of_kind(p, "pmu")]
        self.first_unit_id = units_of_kind(p, "pcu")[0].id
        self.tile_unit = {}
        for u, mod in zip(units_of_kind(p, "pcu") + units_of_kind(p, "pmu"),
                          self.pcus + self.pmus):
            self.tile_unit[u.pos] = mod
        self.switches = {pos: Switch(p, info.unit_id, ports=info.ports)
                         for pos, info in topo.switches.items()}
        self._by_name = {u.name: mod for u, mod in
                         zip(units_of_kind(p, "pcu") + units_of_kind(p, "pmu"),
                             self.pcus + self.pmus)}

    def ctrl_of(self, unit_id: int):
        """The ``units`` element controlling the PCU/PMU with config-bus id ``unit_id``."""
        k = unit_id - self.first_unit_id
        if not 0 <= k < self.n_units:
            raise ValueError(f"unit id {unit_id} is not a PCU/PMU")
        return self.units[k]

    def _endpoint(self, name: str):
        mt = _SW_PORT.match(name)
        if mt:
            sw = self.switches[(int(mt[1]), int(mt[2]))]
            return getattr(sw, f"{mt[3]}_{mt[4]}_{mt[5]}")
        unit, port = name.split(".", 1)
        if unit.startswith("agcu"):
            i = int(unit[4:])
            return wiring.flipped(self.agcu_rd[i] if port == "rd" else self.agcu_wr[i])
        return _port_obj(self._by_name[unit], port)

    def elaborate(self, platform):
        p = self.params
        m = Module()
        for k, u in enumerate(self.pcus):
            m.submodules[f"pcu{k}"] = u
        for k, u in enumerate(self.pmus):
            m.submodules[f"pmu{k}"] = u
        for (r, c), sw in self.switches.items():
            m.submodules[f"sw_{r}_{c}"] = sw
        wiring.connect(m, wiring.flipped(self.cfg), *(u.cfg for u in self.pcus + self.pmus),
                       *(sw.cfg for sw in self.switches.values()))
        for k, u in enumerate(self.pcus + self.pmus):
            wiring.connect(m, wiring.flipped(self.units[k]), u.ctrl)
        for l in self.topology.links:
            wiring.connect(m, self._endpoint(l.src), self._endpoint(l.dst))
        m.d.comb += self.busy.eq(Cat(u.ctrl.busy for u in self.pcus + self.pmus).any())
        for (r, c), sw in self.switches.items():
            m.d.comb += self.held[r * p.grid_cols + c].eq(sw.held)
        return m

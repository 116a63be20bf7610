"""Negotiated-congestion routing of a kernel's streams (PathFinder, McMurchie & Ebeling 1995).

:meth:`hdl.fabric.FabricTopology.route_multicast` routes one stream at a time on the shortest
path that is still free, so an early stream can take the switch outputs a later one needs
and a routable kernel fails. :func:`route_nets` routes a whole set of streams together:

Routing graph (derived from the topology's public tables, per network)
    The resources are the *switch outputs* (``sw(r,c).{net}.out.{P}``), each with capacity
    one: an output's route register selects one input. A switch input is driven by exactly
    one producer (a neighbour's switch output, a unit output or an AGCU), so a stream that
    wants an input must hold the output driving it; the inputs are therefore not resources
    of their own. Edges: switch input ``i`` -> every output of the same switch and network
    (:mod:`hdl.switch`: any input may feed any output, U-turns included); output ``o`` ->
    the switch input it drives (``topology.sink_of(o)``), or a unit/AGCU consumer port, where
    a path ends. A stream from producer ``src`` starts at ``topology.sink_of(src)``; it
    reaches consumer ``d`` by holding ``topology.driver_of(d)``.

A net = one stream: a producer port and its consumer ports (several = multicast). Its route
is a Steiner tree grown from the source: starting from the source's switch input, the nearest
remaining destination (by the current costs) is joined by a cheapest path that leaves the
tree anywhere (every switch input the tree reaches is a free starting point, so branches
share the trunk), until every destination is reached; each output of the tree selects one
input, so the tree is a legal multicast (synchronous fork) for the switches.

Negotiation
    Every iteration rips up and reroutes every net (the first in the given order, the later
    ones in an order shuffled by a generator seeded with the iteration number, so no net
    always has the first pick), each under the cost of an output
    ``(1 + h(o)) * (1 + p * occ(o))``: ``1`` per switch (= per cycle of latency), ``occ``
    the number of *other* nets holding it now (present congestion), ``p`` the present factor
    (``pres_first``, times ``pres_growth`` after each iteration) and ``h`` the history
    (``+ hist_step * overuse`` after each iteration the output ends overused), so the nets
    that have other ways out give way to the ones that have none. Overuse is allowed while
    negotiating; the routing is legal, and returned, once no output is held twice.
    ``blocked`` outputs (held by routes outside the set) are never used. Defaults
    (``max_iterations`` 100, ``pres_first`` 0.5, ``pres_growth`` 1.3, ``hist_step`` 1.0)
    were chosen on random placements of the decode kernels (see ``tests/test_router.py``):
    rerouting every net, in a shuffled order, solved every instance any variant solved, where
    rerouting only the congested nets or keeping the order missed a few.

Result: one :class:`hdl.fabric.Route` per net, in the form
:meth:`~hdl.fabric.FabricTopology.route_multicast` gives (``dsts`` in the given order,
``hops`` from the source side in the order the tree was grown, ``writes`` =
``topology.select(out, in)`` per hop, ``latency[dst]`` = switches from ``src``), so the
kernel builder's switch writes and ``rdu inspect`` need nothing new. Deterministic: the same
nets in the same order on the same topology give the same routes (ties go to the output
listed first in ``topology.switches``).

Failure (:class:`RoutingError`, a :class:`hdl.fabric.RouteError`): a destination unreachable
even on an empty fabric (or only through ``blocked`` outputs) at once; otherwise after
``max_iterations`` the message names the switch outputs still overused in the least
congested iteration and the nets fighting for each.

Cost: one Dijkstra per destination per net and iteration over the ~200 outputs of a network
of the default chip, stopped at the nearest destination (~0.25 ms). The decode kernels' 13-14
streams on random placements that greedy routing cannot route converge in 1-13 iterations,
~12 ms on average (at most ~30 ms); random sets of 15 streams in 3-11 iterations, 13-30 ms; a
hopeless set of 15 streams gives up after 100 iterations in ~0.1 s.
"""

from __future__ import annotations

import heapq
import random
import weakref
from dataclasses import dataclass

from hdl.fabric import FabricTopology, Route, RouteError

__all__ = ["Net", "RoutingError", "RoutingGraph", "route_nets", "NegotiatedRouter"]

_NET_LONG = {"vec": "vector", "scl": "scalar", "ctl": "control"}


class RoutingError(RouteError):
    """Negotiated routing found no legal routing. ``congested``: ``{switch output: [labels
    of the nets holding it]}`` of the least congested iteration (empty when a destination is
    unreachable outright); ``iterations``: iterations run."""

    def __init__(self, msg: str, congested: dict | None = None, iterations: int = 0):
        super().__init__(msg)
        self.congested = congested or {}
        self.iterations = iterations


@dataclass(frozen=True)
class Net:
    """One stream to route: producer port ``src`` to consumer ports ``dsts`` (its network is
    the source's). ``label`` names it in errors (default ``"src -> d1, d2"``)."""
    src: str
    dsts: tuple
    label: str = ""

    def __post_init__(self):
        d = (self.dsts,) if isinstance(self.dsts, str) else tuple(self.dsts)
        object.__setattr__(self, "dsts", d)
        if not self.label:
            object.__setattr__(self, "label", f"{self.src} -> {', '.join(d)}")


class RoutingGraph:
    """The switch-output graph of a :class:`FabricTopology` as integer tables (see the module
    docstring). Outputs are numbered in ``topology.switches`` order (switch, network, port)."""

    def __init__(self, topo: FabricTopology):
        self.topo = topo
        outs, ins = [], []
        outs_of_in = []
        for info in topo.switches.values():
            for net, (in_ports, out_ports) in info.ports.items():
                first = len(outs)
                outs += [f"{info.name}.{net}.out.{o}" for o in out_ports]
                group = tuple(range(first, len(outs)))
                for i in in_ports:
                    ins.append(f"{info.name}.{net}.in.{i}")
                    outs_of_in.append(group)
        self.out_names, self.in_names = outs, ins
        self.out_id = {n: k for k, n in enumerate(outs)}
        self.in_id = {n: k for k, n in enumerate(ins)}
        self.outs_of_in = outs_of_in
        # output -> switch input it drives (-1: it drives a unit/AGCU consumer port)
        self.sink_in = []
        for o in outs:
            s = topo.sink_of(o)
            self.sink_in.append(self.in_id[s] if topo.is_switch_port(s) else -1)
        self.n_outs = len(outs)

    def start_of(self, src: str) -> int:
        """The switch input a producer port drives."""
        return self.in_id[self.topo.sink_of(src)]

    def target_of(self, dst: str) -> int:
        """The switch output that drives a consumer port."""
        return self.out_id[self.topo.driver_of(dst)]


_graphs: "weakref.WeakKeyDictionary[FabricTopology, RoutingGraph]" = weakref.WeakKeyDictionary()


def routing_graph(topo: FabricTopology) -> RoutingGraph:
    """The (cached) :class:`RoutingGraph` of ``topo``."""
    g = _graphs.get(topo)
    if g is None:
        g = _graphs[topo] = RoutingGraph(topo)
    return g


class _Tree:
    __slots__ = ("outs", "hops", "depth", "reached")

    def __init__(self, start: int):
        self.outs: list = []            # output ids, in growth order
        self.hops: list = []            # (output id, input id) in growth order
        self.depth = {start: 1}         # switch input -> switches from src up to it
        self.reached: dict = {}         # dst -> latency


class NegotiatedRouter:
    """PathFinder over a topology; :meth:`route` routes a list of :class:`Net`. Parameters
    (module docstring): ``max_iterations``, ``pres_first``, ``pres_growth``, ``hist_step``.
    After :meth:`route`, ``iterations`` and ``reroutes`` (nets routed in all) tell the
    effort."""

    def __init__(self, topo: FabricTopology, *, max_iterations: int = 100,
                 pres_first: float = 0.5, pres_growth: float = 1.3, hist_step: float = 1.0):
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.topo = topo
        self.graph = routing_graph(topo)
        self.max_iterations = max_iterations
        self.pres_first = pres_first
        self.pres_growth = pres_growth
        self.hist_step = hist_step
        self.iterations = 0
        self.reroutes = 0

    # ---- checks -----------------------------------------------------------------------------
    def _prepare(self, nets, blocked):
        topo, g = self.topo, self.graph
        prepared, sources, driven = [], {}, {}
        for n in nets:
            if not isinstance(n, Net):
                n = Net(*n) if isinstance(n, tuple) else n
            if not n.dsts or len(set(n.dsts)) != len(n.dsts):
                raise RoutingError(f"net {n.label}: needs distinct destinations")
            net = self._net_of(n)
            if n.src in sources:
                raise RoutingError(f"{n.src} is the source of two nets ({sources[n.src]}; "
                                   f"{n.label}): a producer feeds one (multicast) net")
            sources[n.src] = n.label
            for d in n.dsts:
                if d in driven:
                    raise RoutingError(f"{d} is a destination of two nets ({driven[d]}; "
                                       f"{n.label})")
                driven[d] = n.label
            targets = tuple(g.target_of(d) for d in n.dsts)
            for d, t in zip(n.dsts, targets):
                if t in blocked:
                    raise RoutingError(f"net {n.label}: {d} is driven by "
                                       f"{g.out_names[t]}, which is blocked")
            prepared.append((n, net, g.start_of(n.src), targets))
        return prepared

    def _net_of(self, n: Net) -> str:
        """The network of ``n``, after checking its ends are unit/AGCU ports of one network."""
        topo = self.topo
        try:
            net = topo.net_of(n.src)
            topo.sink_of(n.src)
        except KeyError:
            net = None
        if net is None or topo.is_switch_port(n.src):
            raise RoutingError(f"net {n.label}: {n.src!r} is not a producer port of the fabric")
        for d in n.dsts:
            try:
                dn = topo.net_of(d)
                topo.driver_of(d)
            except KeyError:
                dn = None
            if dn is None or topo.is_switch_port(d):
                raise RoutingError(f"net {n.label}: {d!r} is not a consumer port of the fabric")
            if dn != net:
                raise RoutingError(f"net {n.label}: {d} is on the {_NET_LONG[dn]} network, "
                                   f"{n.src} on the {_NET_LONG[net]} network")
        return net

    # ---- one net ----------------------------------------------------------------------------
    def _grow(self, start, targets, blocked, congestion=None):
        """Steiner tree from switch input ``start`` to output ids ``targets`` (nearest first)
        under the costs of ``congestion = (hist, occ, pres)`` (``None``: one per output).
        Returns a :class:`_Tree`, or the index of an unreachable target."""
        if congestion is None:
            cost = None
        else:
            hist, occ, pres = congestion

            def cost(o):
                return (1.0 + hist[o]) * (1.0 + pres * occ[o])
        g = self.graph
        outs_of_in, sink_in = g.outs_of_in, g.sink_in
        tree = _Tree(start)
        in_tree = set()
        left = {t: k for k, t in enumerate(targets)}
        # outputs that end at a consumer port (sink -1) are only worth entering as targets
        while left:
            dist = {}
            via = {}                    # output -> (input it selects, previous output or -1)
            heap = []
            for i in tree.depth:
                for o in outs_of_in[i]:
                    if o in in_tree or o in blocked or (sink_in[o] < 0 and o not in left):
                        continue
                    c = 1.0 if cost is None else cost(o)
                    if c < dist.get(o, float("inf")):
                        dist[o] = c
                        via[o] = (i, -1)
                        heapq.heappush(heap, (c, o))
            done = set()
            hit = -1
            while heap:
                d, o = heapq.heappop(heap)
                if o in done:
                    continue
                done.add(o)
                if o in left:
                    hit = o
                    break
                i = sink_in[o]
                if i < 0 or i in tree.depth:
                    continue
                for o2 in outs_of_in[i]:
                    if (o2 in done or o2 in in_tree or o2 in blocked
                            or (sink_in[o2] < 0 and o2 not in left)):
                        continue
                    nd = d + (1.0 if cost is None else cost(o2))
                    if nd < dist.get(o2, float("inf")):
                        dist[o2] = nd
                        via[o2] = (i, o)
                        heapq.heappush(heap, (nd, o2))
            if hit < 0:
                return min(left.values())
            path = []
            o = hit
            while o >= 0:
                i, prev = via[o]
                path.append((o, i))
                o = prev
            path.reverse()
            for o, i in path:
                in_tree.add(o)
                tree.outs.append(o)
                tree.hops.append((o, i))
                s = sink_in[o]
                if s >= 0:
                    tree.depth[s] = tree.depth[i] + 1
            tree.reached[hit] = tree.depth[path[-1][1]]
            del left[hit]
        return tree

    def _to_route(self, n: Net, net: str, targets, tree: _Tree) -> Route:
        g, topo = self.graph, self.topo
        hops = tuple((g.out_names[o], g.in_names[i]) for o, i in tree.hops)
        writes = tuple(topo.select(o, i) for o, i in hops)
        latency = {d: tree.reached[t] for d, t in zip(n.dsts, targets)}
        return Route(net, n.src, tuple(n.dsts), hops, writes, latency)

    # ---- all nets ---------------------------------------------------------------------------
    def route(self, nets, blocked=frozenset()) -> list[Route]:
        """Routes for ``nets`` (:class:`Net` or ``(src, dsts[, label])``), in their order,
        none using an output in ``blocked`` (switch output names) nor one another's outputs.
        Raises :class:`RoutingError`."""
        g = self.graph
        blocked_ids = set()
        for b in blocked:
            if b not in g.out_id:
                raise RoutingError(f"blocked port {b!r} is not a switch output")
            blocked_ids.add(g.out_id[b])
        prepared = self._prepare(list(nets), blocked_ids)
        self.iterations = self.reroutes = 0
        # unreachable destinations fail at once, with the congestion-free tree
        for n, net, start, targets in prepared:
            t = self._grow(start, targets, blocked_ids)
            if not isinstance(t, _Tree):
                d = n.dsts[t]
                extra = " outside the blocked outputs" if blocked_ids else ""
                raise RoutingError(f"no {_NET_LONG[net]} path {n.src} -> {d}{extra} "
                                   f"(net {n.label})")
        N = g.n_outs
        occ = [0] * N
        hist = [0.0] * N
        trees: list = [None] * len(prepared)
        pres = self.pres_first
        best = None                     # (total overuse, {output: [net index]})
        for it in range(1, self.max_iterations + 1):
            self.iterations = it
            order = list(range(len(prepared)))
            if it > 1:
                random.Random(it).shuffle(order)
            for k in order:
                n, net, start, targets = prepared[k]
                old = trees[k]
                if old is not None:
                    for o in old.outs:
                        occ[o] -= 1
                t = self._grow(start, targets, blocked_ids, (hist, occ, pres))
                assert isinstance(t, _Tree)     # reachable: checked above, costs are finite
                trees[k] = t
                self.reroutes += 1
                for o in t.outs:
                    occ[o] += 1
            over = sorted({o for t in trees for o in t.outs if occ[o] > 1})
            if not over:
                return [self._to_route(n, net, targets, t)
                        for (n, net, start, targets), t in zip(prepared, trees)]
            total = sum(occ[o] - 1 for o in over)
            if best is None or total < best[0]:
                best = (total, {o: [k for k, t in enumerate(trees) if o in t.outs]
                                for o in over})
            for o in over:
                hist[o] += self.hist_step * (occ[o] - 1)
            pres *= self.pres_growth
        _, fights = best
        congested = {g.out_names[o]: [prepared[k][0].label for k in ks]
                     for o, ks in fights.items()}
        shown = "; ".join(f"{o} wanted by {' and '.join(ls)}" for o, ls in congested.items())
        raise RoutingError(
            f"negotiated routing of {len(prepared)} net{'s' if len(prepared) != 1 else ''} "
            f"found no legal routing in {self.iterations} iterations: at best "
            f"{len(congested)} switch output{'s' if len(congested) != 1 else ''} still "
            f"wanted by more than one net: {shown}", congested, self.iterations)


def route_nets(topo: FabricTopology, nets, blocked=frozenset(), **kw) -> list[Route]:
    """Route ``nets`` together on ``topo`` (:class:`NegotiatedRouter`; ``kw`` its
    parameters). One :class:`hdl.fabric.Route` per net, in order; :class:`RoutingError`
    when there is no legal routing."""
    return NegotiatedRouter(topo, **kw).route(nets, blocked)

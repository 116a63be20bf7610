"""Switch: one per tile; three independent statically routed networks (vector, scalar, control).

Networks and ports
    Every switch carries three networks, each with its own ports, registers and buffers:

    =======  =================  =========================================================
    network  link               payload
    =======  =================  =========================================================
    ``vec``  ``vector_link``    one beat (``params.beat_bits``, 512 bit by default)
    ``scl``  ``scalar_link``    one 32-bit word
    ``ctl``  ``control_link``   a token (no payload)
    =======  =================  =========================================================

    Port names (the same for inputs and outputs; the switch's own names, see
    :mod:`hdl.fabric` for how they are joined into a mesh):

    - ``N0..N{T-1}``, ``E..``, ``S..``, ``W..``: ``T = params.switch_tracks`` (default 2) tracks
      to/from the neighbour in each compass direction (north = row - 1, east = col + 1). An
      edge AGCU is the neighbour on its side (its ``rd`` drives input ``W0``/``E0``, output
      ``W0``/``E0`` feeds its ``wr``; vector network only).
    - ``L0..``: the local unit. Switch *inputs* ``Lk`` are driven by the unit's outputs, switch
      *outputs* ``Lk`` drive the unit's inputs, in the order of
      :func:`hdl.fabric.unit_local_ports` (e.g. PCU: vec out ``L0..L2`` -> ``vin0..vin2``,
      vec in ``L0`` <- ``vout``).

    A switch instance has only the ports that are connected (an edge switch has no ports
    towards the outside of the grid); the component's members are named
    ``{net}_in_{port}`` (``In(link)``) and ``{net}_out_{port}`` (``Out(link)``), e.g.
    ``vec_in_N0``, ``scl_out_L1``.

Routing (static)
    Every output port has one route register: the input it takes, or none. Any input may feed
    any output of the same network (including U-turns and local loop-back). Registers of
    ports a particular switch does not have are accepted and ignored; selecting an input the
    switch does not have means "none".

Per-hop contract (every output port, every network)
    - Latency: a word taken from an input in cycle ``t`` is valid on the output in ``t + 1``
      (one registered hop; a route through ``h`` switches adds ``h`` cycles).
    - Throughput: one word per cycle per output, sustained, with or without back-pressure
      elsewhere.
    - Buffering: each output has a two-entry elastic buffer (main register + skid register).
      The input side sees a *registered* ready: an output can accept while its skid register
      is empty. This is deliberate: with a single register accepting "when empty or being
      drained", ``ready`` would be a combinational path through every hop of a route, and the
      bidirectional mesh links would form a structural combinational loop through the
      switches' muxes (which Verilator can only iterate, UNOPTFLAT). Here no combinational
      path crosses a switch: ``in.ready`` depends only on this switch's registers and route
      registers, ``out.valid``/``out.payload`` are registers.
    - Back-pressure: an output whose downstream is not ready holds its main register; one
      more word enters the skid register; then the output stops accepting. Nothing is
      dropped or duplicated; order is kept per output.
    - An input that no output selects is never ready (its producer stalls).

Multicast (synchronous fork)
    Several outputs may select the same input. The input is consumed (``ready``) only in a
    cycle where *every* output selecting it can accept; then all of them take the word in the
    same cycle. So each selected output sees every word exactly once, in order, and the
    slowest branch paces the others (the two-entry buffers decouple branches by one word).

Configuration (``cfg``, writes with ``cfg.unit == unit_id``; :class:`SwitchReg`)
    One register per (network, output port), fixed layout independent of the geometry, so the
    map is the same for every switch and every :class:`~hdl.params.RduParams`
    (``MAX_TRACKS = 4`` track slots per direction, ``MAX_LOCAL = 4`` local slots)::

        addr = 20 * net + slot        net: 0 vec, 1 scl, 2 ctl
        slot = 4 * dir + track        dir: 0 N, 1 E, 2 S, 3 W   (track < MAX_TRACKS)
             = 16 + k                 local port Lk             (k < MAX_LOCAL)

    Value bits ``[4:0]`` (:func:`sel_code`): 0 = no input (reset), ``1 + slot(input)`` =
    take that input (same slot numbering as outputs). ``SWITCH_N_REGS = 60``.
    Registers are plain flops, writable in any cycle; change a route only while the data on
    it has drained (a word already in an output buffer is delivered to the old destination).

    =====  ===========================  =====  ===========================
    addr   register                     addr   register
    =====  ===========================  =====  ===========================
    0-15   VEC_OUT_N0 .. VEC_OUT_W3     16-19  VEC_OUT_L0 .. VEC_OUT_L3
    20-35  SCL_OUT_N0 .. SCL_OUT_W3     36-39  SCL_OUT_L0 .. SCL_OUT_L3
    40-55  CTL_OUT_N0 .. CTL_OUT_W3     56-59  CTL_OUT_L0 .. CTL_OUT_L3
    =====  ===========================  =====  ===========================

Status
    ``held`` is high while any output buffer of any network holds a word (for drain checks
    and watchdogs).
"""

from __future__ import annotations

import enum

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import shared
from .bus import config_bus_signature
from .links import control_link, scalar_link, vector_link
from .params import RduParams

__all__ = ["Switch", "SwitchReg", "SWITCH_N_REGS", "NETS", "NET_NAMES", "DIRS", "MAX_TRACKS",
           "MAX_LOCAL", "SEL_BITS", "switch_tracks", "port_slot", "switch_reg", "sel_code",
           "full_ports", "link_of"]

NETS = ("vec", "scl", "ctl")
NET_NAMES = {"vec": "vector", "scl": "scalar", "ctl": "control"}   # bitstream ROUTES names
DIRS = "NESW"
OPPOSITE = {"N": "S", "S": "N", "E": "W", "W": "E"}
MAX_TRACKS = 4
MAX_LOCAL = 4
SLOTS = 4 * MAX_TRACKS + MAX_LOCAL      # 20 registers per network
SEL_BITS = 5
SWITCH_N_REGS = len(NETS) * SLOTS       # 60


def _reg_names():
    d = {}
    for n, net in enumerate(NETS):
        for di, dname in enumerate(DIRS):
            for t in range(MAX_TRACKS):
                d[f"{net.upper()}_OUT_{dname}{t}"] = n * SLOTS + di * MAX_TRACKS + t
        for k in range(MAX_LOCAL):
            d[f"{net.upper()}_OUT_L{k}"] = n * SLOTS + 4 * MAX_TRACKS + k
    return d


SwitchReg = enum.IntEnum("SwitchReg", _reg_names())
SwitchReg.__doc__ = "Switch route registers: one per (network, output port); see the module docs."


def switch_tracks(p: RduParams) -> int:
    """Tracks per direction per network (``params.switch_tracks``, default 2)."""
    t = getattr(p, "switch_tracks", 2)
    if not 1 <= t <= MAX_TRACKS:
        raise ValueError(f"switch_tracks must be in 1..{MAX_TRACKS}, got {t}")
    return t


def port_slot(port: str) -> int:
    """Slot of a switch port name (``"N0"`` .. ``"W3"`` -> 0..15, ``"Lk"`` -> 16 + k)."""
    kind, idx = port[0], port[1:]
    if not idx.isdigit():
        raise ValueError(f"bad switch port name {port!r}")
    k = int(idx)
    if kind == "L":
        if k >= MAX_LOCAL:
            raise ValueError(f"local port {port!r}: at most {MAX_LOCAL} local ports")
        return 4 * MAX_TRACKS + k
    if kind not in DIRS or k >= MAX_TRACKS:
        raise ValueError(f"bad switch port name {port!r}")
    return DIRS.index(kind) * MAX_TRACKS + k


def switch_reg(net: str, out_port: str) -> int:
    """Register address of the route register of output ``out_port`` of network ``net``."""
    return NETS.index(net) * SLOTS + port_slot(out_port)


def sel_code(in_port: str | None) -> int:
    """Register value that makes an output take input ``in_port`` (``None``: no input)."""
    return 0 if in_port is None else 1 + port_slot(in_port)


def link_of(p: RduParams, net: str):
    return {"vec": lambda: vector_link(p), "scl": lambda: scalar_link(p),
            "ctl": control_link}[net]()


def full_ports(p: RduParams, local_in: dict, local_out: dict) -> dict:
    """Every port of a switch in the middle of the grid: ``{net: (inputs, outputs)}``.

    ``local_in[net]``: switch inputs driven by the local unit (its outputs); ``local_out[net]``:
    switch outputs driving the local unit (its inputs).
    """
    t = switch_tracks(p)
    dirs = [f"{d}{k}" for d in DIRS for k in range(t)]
    return {net: (tuple(dirs + [f"L{k}" for k in range(local_in.get(net, 0))]),
                  tuple(dirs + [f"L{k}" for k in range(local_out.get(net, 0))]))
            for net in NETS}


class Switch(wiring.Component):
    """A tile's switch; see the module docstring for ports, timing and registers.

    ``ports``: ``{net: (input port names, output port names)}`` — the ports this instance has
    (e.g. from :class:`hdl.fabric.FabricTopology`). Without it, ``local_in``/``local_out``
    (``{net: count}``) give a full switch (all directions, all tracks, via :func:`full_ports`).
    """

    def __init__(self, params: RduParams, unit_id: int | None, *, ports: dict | None = None,
                 local_in: dict | None = None, local_out: dict | None = None):
        self.params = params
        id_member = shared.unit_id_member(self, unit_id)
        if ports is None:
            ports = full_ports(params, local_in or {}, local_out or {})
        self.ports = {net: (tuple(ports.get(net, ((), ()))[0]), tuple(ports.get(net, ((), ()))[1]))
                      for net in NETS}
        members = {"cfg": In(config_bus_signature()), "held": Out(1), **id_member}
        for net in NETS:
            ins, outs = self.ports[net]
            for names in (ins, outs):
                if len(set(names)) != len(names):
                    raise ValueError(f"duplicate {net} port names {names}")
                for n in names:
                    port_slot(n)
            for n in ins:
                members[f"{net}_in_{n}"] = In(link_of(params, net))
            for n in outs:
                members[f"{net}_out_{n}"] = Out(link_of(params, net))
        super().__init__(members)

    def inp(self, net: str, port: str):
        return getattr(self, f"{net}_in_{port}")

    def out(self, net: str, port: str):
        return getattr(self, f"{net}_out_{port}")

    def elaborate(self, platform):
        if shared.active() and isinstance(self.unit_id, int):
            return shared.instance(self, repr(sorted(self.ports.items())),
                                   lambda: Switch(self.params, None, ports=self.ports))
        m = Module()
        cfg_hit = Signal()
        m.d.comb += cfg_hit.eq(self.cfg.we & (self.cfg.unit == self.unit_id))
        held = []
        for net in NETS:
            ins, outs = self.ports[net]
            width = Shape.cast(link_of(self.params, net).members["payload"].shape).width
            sel = {}
            for o in outs:
                s = sel[o] = Signal(SEL_BITS, name=f"{net}_sel_{o}")
                with m.If(cfg_hit & (self.cfg.addr == switch_reg(net, o))):
                    m.d.sync += s.eq(self.cfg.data[:SEL_BITS])
            # Output buffers: main register (drives the link) + skid register.
            main_v = {o: Signal(name=f"{net}_{o}_main_valid") for o in outs}
            skid_v = {o: Signal(name=f"{net}_{o}_skid_valid") for o in outs}
            # (control tokens have no payload: no data registers at all, no zero-width wires)
            main_d = {o: Signal(width, name=f"{net}_{o}_main") for o in outs} if width else {}
            skid_d = {o: Signal(width, name=f"{net}_{o}_skid") for o in outs} if width else {}
            # Input ready: selected by at least one output, and every selecting output has a
            # free skid register (synchronous fork).
            fire = {}
            for i in ins:
                code = sel_code(i)
                chosen = [sel[o] == code for o in outs]
                if not chosen:
                    m.d.comb += self.inp(net, i).ready.eq(0)
                    fire[i] = C(0, 1)
                    continue
                rdy = Signal(name=f"{net}_{i}_ready")
                m.d.comb += rdy.eq(Cat(chosen).any()
                                   & Cat((sel[o] != code) | ~skid_v[o] for o in outs).all())
                m.d.comb += self.inp(net, i).ready.eq(rdy)
                f = fire[i] = Signal(name=f"{net}_{i}_fire")
                m.d.comb += f.eq(rdy & self.inp(net, i).valid)
            for o in outs:
                link = self.out(net, o)
                push = Signal(name=f"{net}_{o}_push")
                data = Signal(width, name=f"{net}_{o}_in") if width else None
                with m.Switch(sel[o]):
                    for i in ins:
                        with m.Case(sel_code(i)):
                            m.d.comb += push.eq(fire[i])
                            if width:
                                m.d.comb += data.eq(self.inp(net, i).payload)
                m.d.comb += link.valid.eq(main_v[o])
                if width:
                    m.d.comb += link.payload.eq(main_d[o])
                with m.If(skid_v[o]):
                    # Not accepting (ready is low for every input this output selects).
                    with m.If(link.ready):
                        m.d.sync += skid_v[o].eq(0)
                        if width:
                            m.d.sync += main_d[o].eq(skid_d[o])
                with m.Elif(push):
                    with m.If(~main_v[o] | link.ready):
                        m.d.sync += main_v[o].eq(1)
                        if width:
                            m.d.sync += main_d[o].eq(data)
                    with m.Else():
                        m.d.sync += skid_v[o].eq(1)
                        if width:
                            m.d.sync += skid_d[o].eq(data)
                with m.Elif(link.ready):
                    m.d.sync += main_v[o].eq(0)
                held.append(main_v[o])
        m.d.comb += self.held.eq(Cat(held).any() if held else 0)
        return m

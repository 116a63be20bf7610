"""One Verilog module per kind of unit, instantiated many times (simulation builds).

Amaranth writes every instance of a component as its own Verilog module, so the default chip's
eight PCUs are eight copies of the same 2 MB of Verilog, which Verilator compiles eight times
into eight copies of the same C++. Under :func:`verilog_blackboxes` (``tb/runner.py`` turns it
on when it generates Verilog for Verilator) a unit that supports sharing elaborates instead to
an ``Instance`` of one module generated once per *variant* (same class, same
:class:`~hdl.params.RduParams`, same port set); its unit id becomes an input port tied to a
constant. Verilator then compiles the module once and, because ``verilator_config_lines`` tells it
not to inline it, runs one copy of the code for all instances (smaller build, fewer
instruction-cache misses). Behaviour is identical: the module is the same Amaranth design.

Amaranth's own simulator never sees any of this (the context is off there).

A unit opts in from its ``elaborate``::

    if shared.active() and isinstance(self.unit_id, int):
        return shared.instance(self, variant, lambda: Pcu(self.params, unit_id=None))

where the factory builds the same component with ``unit_id=None`` (the id then is an input
port ``unit_id``, :data:`UNIT_ID_BITS` wide) and ``variant`` is a string that, with the class
and the params digest, identifies equal designs.
"""

import contextlib
import hashlib

from amaranth import *
from amaranth.back import verilog
from amaranth.hdl import ValueCastable
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from .bus import CONFIG_UNIT_BITS

__all__ = ["verilog_blackboxes", "active", "instance", "unit_id_member", "UNIT_ID_BITS"]

UNIT_ID_BITS = CONFIG_UNIT_BITS


class _Collector:
    def __init__(self):
        self.modules = {}            # Verilog module name -> Verilog text
        self.texts = []              # extra Verilog sources (behavioural black boxes)

    def verilog(self) -> str:
        return "\n".join(self.texts + list(self.modules.values()))

    def verilator_config_lines(self) -> list[str]:
        """Verilator configuration lines keeping each shared module a real (shared) module."""
        lines = [f'no_inline -module "{name}"' for name in self.modules]
        if self.modules:
            # Amaranth drops zero-width connections (control-token payloads) from instances
            lines.append("lint_off -rule PINMISSING")
        return lines


_STATE = {"collector": None}


@contextlib.contextmanager
def verilog_blackboxes():
    """Within this context shared units (and :class:`hdl.ram.WideRam`) elaborate to instances of
    Verilog modules collected in the yielded object: append ``.verilog()`` to the design's
    Verilog and ``.verilator_config_lines()`` to the Verilator configuration."""
    from . import ram
    old = _STATE["collector"]
    c = _Collector()
    c.texts.append(ram.VERILOG_SOURCE)
    _STATE["collector"] = c
    try:
        with ram.use_verilog():
            yield c
    finally:
        _STATE["collector"] = old


def unit_id_member(unit, unit_id: int | None) -> dict:
    """For a sharable unit's constructor: ``unit_id`` set as the attribute ``unit.unit_id``, or
    (``None``) the signature member making it an input port ``unit_id``; returns the members
    to add to the signature."""
    if unit_id is None:
        return {"unit_id": In(UNIT_ID_BITS)}
    unit.unit_id = unit_id
    return {}


def active() -> bool:
    return _STATE["collector"] is not None


def _ports(component):
    """(Verilog port name, direction, value) for every non-empty member, as Amaranth names
    the toplevel ports of ``verilog.convert(component)``."""
    out = []
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, ValueCastable):
            value = value.as_value()
        if len(value) == 0:
            continue
        out.append(("__".join(map(str, path)), member.flow, value))
    return out


def instance(component, variant: str, make_inner):
    """An elaboratable that instantiates the shared module of ``component``'s variant.

    ``make_inner()`` builds the same design with its unit id as an input port; it is converted
    to Verilog the first time a variant is seen.
    """
    c = _STATE["collector"]
    params = getattr(component, "params", None)
    digest = params.digest().hex()[:12] if hasattr(params, "digest") else ""
    h = hashlib.sha256(f"{type(component).__qualname__}|{digest}|{variant}".encode()).hexdigest()
    name = f"minirdu_{type(component).__name__.lower()}_{h[:12]}"
    if name not in c.modules:
        inner = make_inner()
        if "unit_id" not in inner.signature.members:
            raise TypeError(f"{type(inner).__name__}(unit_id=None) must have a unit_id port")
        c.modules[name] = verilog.convert(inner, name=name, emit_src=False)
    kwargs = {"i_clk": ClockSignal(), "i_rst": ResetSignal(),
              "i_unit_id": Const(component.unit_id, UNIT_ID_BITS)}
    for port, flow, value in _ports(component):
        kwargs[("i_" if flow == In else "o_") + port] = value
    m = Module()
    m.submodules.shared = Instance(name, **kwargs)
    return m

"""Interfaces shared between units: the HBM port, the configuration bus and HBM statistics.

All signatures are written from the point of view of the *initiator* (the unit that issues
requests): ``Out`` members are driven by the initiator, ``In`` members by the target. A target
uses ``.flip()``.

HBM port (``hbm_port_signature``)
    The in-order, single-ID memory port that every HBM client (AGCUs, the host DMA engine) uses.
    - ``req``: stream of :func:`hbm_request_layout` ``{addr, beats_m1, write}``. ``addr`` is a
      *beat* address (byte address / ``params.beat_bytes``); ``beats_m1 + 1`` beats, at most
      ``params.hbm_burst_beats``, all inside one burst-aligned block
      (``addr % burst + beats <= burst``). The initiator splits longer transfers.
    - ``wdata``: for a write request exactly ``beats`` beats of write data, in request order.
      The target may accept them before or after the request; they are never reordered.
    - ``rdata``: read data, ``beats`` beats per read request, returned in request order.
      The target respects back-pressure on ``rdata``.

Configuration bus (``config_bus_signature``)
    A write-only register bus from the config controller (or the host CSR debug path) to every
    configurable unit. One write per cycle when ``we`` is high, no back-pressure: a unit must
    accept a write to any of its registers in any cycle (registers are plain flops).
    ``unit`` selects the unit (unit ids come from the chip's unit map), ``addr`` the register
    inside it, ``data`` the 32-bit value.
"""

from amaranth import unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .params import RduParams

__all__ = ["hbm_request_layout", "hbm_port_signature", "config_bus_signature",
           "hbm_stats_signature", "CONFIG_UNIT_BITS", "CONFIG_ADDR_BITS"]

CONFIG_UNIT_BITS = 8
CONFIG_ADDR_BITS = 8


def hbm_request_layout(p: RduParams) -> data.StructLayout:
    return data.StructLayout({
        "addr": unsigned(p.hbm_addr_bits),
        "beats_m1": unsigned(max(1, (p.hbm_burst_beats - 1).bit_length())),
        "write": unsigned(1),
    })


def hbm_port_signature(p: RduParams) -> wiring.Signature:
    return wiring.Signature({
        "req": Out(stream.Signature(hbm_request_layout(p))),
        "wdata": Out(stream.Signature(p.beat_bits)),
        "rdata": In(stream.Signature(p.beat_bits)),
    })


def config_bus_signature() -> wiring.Signature:
    return wiring.Signature({
        "we": Out(1),
        "unit": Out(CONFIG_UNIT_BITS),
        "addr": Out(CONFIG_ADDR_BITS),
        "data": Out(32),
    })


def hbm_stats_signature(p: RduParams) -> wiring.Signature:
    """Per-channel event strobes the HBM model drives (one cycle each) for performance counters.

    Seen from the HBM model (it drives ``Out``). ``rd_beat``/``wr_beat``: a beat moved on that
    channel's data bus this cycle. ``refresh``: the channel is blocked by refresh this cycle.
    ``row_miss``: a burst needed an activate this cycle. ``busy`` (a level, not an event): the
    channel has a request queued, write data being collected or a burst on its data bus; when
    it is low every write accepted earlier has been performed.
    """
    n = p.hbm_channels
    return wiring.Signature({
        "rd_beat": Out(n),
        "wr_beat": Out(n),
        "refresh": Out(n),
        "row_miss": Out(n),
        "busy": Out(n),
    })

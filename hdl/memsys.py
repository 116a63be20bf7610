"""MemorySystem: the HBM model, the AGCUs in front of it, and the host DMA port.

::

    cfg ──► AGCU 0 (unit agcu_unit_base+0) ──► HBM port 0 ─┐
        ──► AGCU 1 (unit agcu_unit_base+1) ──► HBM port 1 ─┤
        ...                                                ├─► HbmController (hbm_channels)
        ──► AGCU n-1                      ──► HBM port n-1 ─┤
    dma (host DMA engine, an initiator)  ──► HBM port n   ─┘

Interface (``n = params.n_agcus``):

``cfg``: ``In(config_bus_signature())``
    The configuration bus. AGCU ``i`` answers to ``cfg.unit == agcu_unit_base + i`` (default
    ``agcu_unit_base = 0``: unit ids ``0 .. n-1``); register addresses: :class:`hdl.agcu.AgcuReg`,
    :func:`hdl.agcu.agcu_count_reg`, :func:`hdl.agcu.agcu_stride_reg`. Writes to other units
    are ignored here.
``dma``: ``In(hbm_port_signature(params))``
    The host DMA engine's HBM port (it is the initiator: drives ``req``/``wdata``, takes
    ``rdata``). Same contract as every HBM port (see :mod:`hdl.bus` and :mod:`hdl.hbm`):
    beat addresses, bursts of ``1..hbm_burst_beats`` beats inside one burst-aligned block,
    write data presented with the request, read data in request order. It arbitrates
    round-robin with the AGCUs, per channel.
``agcu[i]``: ``Out(agcu_port_signature(params))``, array of ``n`` (seen from the AGCU)
    ``rd`` (Out stream, 512-bit beats from HBM to the fabric, READ mode), ``wr`` (In stream,
    beats from the fabric to HBM, WRITE mode), ``start`` (In, one-cycle pulse), ``iteration``
    (In, 16 bit, latched at ``start``: effective base = BASE + iteration * ITER_STRIDE),
    ``busy`` (Out), ``done`` (Out, one-cycle pulse in the last busy cycle), ``status`` (Out,
    :class:`hdl.agcu.AgcuStatus`, final at ``done``). Exact timing: :mod:`hdl.agcu`.
``stats``: ``Out(hbm_stats_signature(params))``
    Per-channel strobes ``rd_beat``, ``wr_beat``, ``row_miss``, ``refresh`` for counters.
``hbm_error``: ``Out(1)``
    Sticky: some initiator sent a burst crossing its block (a protocol violation; AGCUs never do).

Cycle-level contract: pure composition, no extra pipeline stages. Every latency and throughput
figure of :mod:`hdl.agcu` and :mod:`hdl.hbm` holds unchanged at these ports. Peak bandwidth is
``hbm_channels * hbm_bytes_per_cycle`` (128 B/cycle by default); each AGCU and the DMA port can
move at most one beat per cycle.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .agcu import Agcu, agcu_port_signature
from .bus import config_bus_signature, hbm_port_signature, hbm_stats_signature
from .hbm import HbmController
from .params import RduParams

__all__ = ["MemorySystem"]


class MemorySystem(wiring.Component):
    def __init__(self, params: RduParams, *, agcu_unit_base: int = 0):
        self.p = self.params = params     # ``params``: tb.runner keys its build cache on it
        self.agcu_unit_base = agcu_unit_base
        self.n_agcus = params.n_agcus
        super().__init__({
            "cfg": In(config_bus_signature()),
            "dma": In(hbm_port_signature(params)),
            "agcu": Out(agcu_port_signature(params)).array(params.n_agcus),
            "stats": Out(hbm_stats_signature(params)),
            "hbm_error": Out(1),
        })

        # Built here so that enclosing units (the chip's latency monitors) can tap their ports.
        self.hbm = HbmController(params, self.n_agcus + 1)
        self.agcus = [Agcu(params, agcu_unit_base + i) for i in range(self.n_agcus)]

    def agcu_mem_port(self, i: int):
        """AGCU ``i``'s HBM port (read-only taps for monitors; do not drive)."""
        return self.agcus[i].mem

    @property
    def dma_port_index(self) -> int:
        """Index of the DMA port among the HBM controller's ports (after the AGCUs)."""
        return self.n_agcus

    def elaborate(self, platform):
        p = self.p
        m = Module()
        m.submodules.hbm = hbm = self.hbm
        for i, agcu in enumerate(self.agcus):
            m.submodules[f"agcu{i}"] = agcu
            wiring.connect(m, agcu.mem, hbm.ports[i])
            m.d.comb += [
                agcu.cfg.we.eq(self.cfg.we), agcu.cfg.unit.eq(self.cfg.unit),
                agcu.cfg.addr.eq(self.cfg.addr), agcu.cfg.data.eq(self.cfg.data),
            ]
            ext = self.agcu[i]
            wiring.connect(m, agcu.rd, wiring.flipped(ext.rd))
            wiring.connect(m, wiring.flipped(ext.wr), agcu.wr)
            m.d.comb += [
                agcu.start.eq(ext.start), agcu.iteration.eq(ext.iteration),
                ext.busy.eq(agcu.busy), ext.done.eq(agcu.done), ext.status.eq(agcu.status),
            ]
        wiring.connect(m, wiring.flipped(self.dma), hbm.ports[self.dma_port_index])
        wiring.connect(m, hbm.stats, wiring.flipped(self.stats))
        m.d.comb += self.hbm_error.eq(hbm.error)
        return m

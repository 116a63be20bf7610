"""The minirdu chip toplevel, assembled from ``RduParams``.

Ports (all the host sees):

- ``csr``: the CSR bus of :class:`~hdl.host.HostInterface` (register map there).
- ``h2c`` / ``c2h``: the DMA data streams, one beat (``params.beat_bits``) per transfer; ``h2c``
  also carries bitstreams to the config controller (CSR ``CONFIG_CTRL`` bit 1).
- ``run_done``: high once every unit started by the last ``RUN_START`` has finished (the
  runtime sleeps on its rising edge).

Inside: the host interface (CSRs, counters, DMA engine), the config controller, the memory
system (HBM controller model + AGCUs; the host DMA engine is one more HBM client) and the
compute fabric (PCUs, PMUs, switches: ``hdl/fabric.py``) between the AGCUs' fabric-side streams.
Units are started by the host (CSRs ``RUN_MASK``/``RUN_START``) until the looping sequencer
takes over. ``Chip(params, fabric=False)`` leaves the AGCU streams (``chip.memsys.agcu[i].rd`` /
``.wr``) to an enclosing testbench toplevel instead (the HBM benchmark attaches traffic sinks
and sources there); unconnected, ``rd`` is never ready and ``wr`` never valid.

Extension CSR window (``EXT_BASE`` + offset, read-only), answered here:

==================  ==========================================================================
offset              register
==================  ==========================================================================
0x000 + 0x100*i     latency monitor of HBM client i (0 = host DMA, 1+k = AGCU k rd stream): COUNT
0x001 + 0x100*i     TOTAL bits 31:0 (sum of latencies)
0x002 + 0x100*i     TOTAL bits 47:32
0x003 + 0x100*i     MAX
0x004 + 0x100*i     OVERFLOW (1 if more reads were in flight than the monitor can track)
0x080..0x0FF +0x100*i  histogram bin (offset - 0x80); bin width/count in :data:`LATENCY_BINS`
==================  ==========================================================================

Latency is measured per read burst from request handshake to first-beat handshake at the
client's HBM port, so it includes queueing and the client's own back-pressure.
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .host import EXT_BASE, HostInterface, csr_bus_signature
from .config import ConfigController
from .memsys import MemorySystem
from .fabric import Fabric
from .unitmap import unit_id, unit_map, units_of_kind
from .params import RduParams
from .perf import LatencyMonitor

__all__ = ["Chip", "LATENCY_BINS", "LATENCY_BIN_CYCLES", "ext_latency_base"]

LATENCY_BINS = 128
LATENCY_BIN_CYCLES = 4


def ext_latency_base(client: int) -> int:
    return 0x100 * client


class Chip(wiring.Component):
    def __init__(self, params: RduParams, *, fabric: bool = True):
        self.params = p = params
        super().__init__({
            "csr": In(csr_bus_signature(p)),
            "h2c": In(stream.Signature(p.beat_bits)),
            "c2h": Out(stream.Signature(p.beat_bits)),
            "run_done": Out(1),
        })
        # Built here, not in elaborate(), so enclosing toplevels can reach their ports.
        self.units = unit_map(p)
        self.host = HostInterface(p, len(self.units))
        self.memsys = MemorySystem(p, agcu_unit_base=unit_id(p, "agcu", 0))
        self.config = ConfigController(p)
        self.fabric = Fabric(p) if fabric else None

    def elaborate(self, platform):
        p = self.params
        m = Module()
        m.submodules.host = host = self.host
        m.submodules.memsys = memsys = self.memsys
        m.submodules.config = cc = self.config
        wiring.connect(m, wiring.flipped(self.csr), host.csr)
        m.d.comb += self.run_done.eq(host.run_done)

        # Configuration: bitstreams arrive on h2c (routed by the host block), are checked, then
        # replayed on the config bus, which the host merges with its debug writes.
        wiring.connect(m, host.cc_data, cc.data)
        m.d.comb += [
            cc.start.eq(host.cc_start), cc.length.eq(host.cc_length),
            host.cc_busy.eq(cc.busy), host.cc_done.eq(cc.done), host.cc_status.eq(cc.status),
            host.cc_writes.eq(cc.writes),
            # The section sequencer launches the units of the loaded bitstream's kernel-table
            # entry 0 (its ``units`` bitmap is bytes 32..63 of the entry, sw/bitstream.py).
            cc.kt_addr.eq(0),
            cc.hold.eq(host.cc_hold), cc.release.eq(host.cc_release),
            host.cc_held.eq(cc.held),
            host.cc_kt_count.eq(cc.kt_count),
            host.cc_kt_units.eq(cc.kt_data[256:256 + len(self.units)]),
            host.cc_cfg.we.eq(cc.cfg.we), host.cc_cfg.unit.eq(cc.cfg.unit),
            host.cc_cfg.addr.eq(cc.cfg.addr), host.cc_cfg.data.eq(cc.cfg.data),
        ]
        wiring.connect(m, wiring.flipped(self.h2c), host.h2c)
        wiring.connect(m, host.c2h, wiring.flipped(self.c2h))
        wiring.connect(m, host.mem, memsys.dma)
        wiring.connect(m, host.cfg, memsys.cfg)
        m.d.comb += [
            host.hbm_stats.rd_beat.eq(memsys.stats.rd_beat),
            host.hbm_stats.wr_beat.eq(memsys.stats.wr_beat),
            host.hbm_stats.refresh.eq(memsys.stats.refresh),
            host.hbm_stats.row_miss.eq(memsys.stats.row_miss),
            host.hbm_stats.busy.eq(memsys.stats.busy),
        ]
        # The compute fabric sits between the AGCUs' fabric-side streams; it shares the config bus.
        if self.fabric is not None:
            m.submodules.fabric = fabric = self.fabric
            m.d.comb += [
                fabric.cfg.we.eq(host.cfg.we), fabric.cfg.unit.eq(host.cfg.unit),
                fabric.cfg.addr.eq(host.cfg.addr), fabric.cfg.data.eq(host.cfg.data),
            ]
            for i in range(p.n_agcus):
                wiring.connect(m, memsys.agcu[i].rd, fabric.agcu_rd[i])
                wiring.connect(m, fabric.agcu_wr[i], memsys.agcu[i].wr)
            for u in units_of_kind(p, "pcu") + units_of_kind(p, "pmu"):
                ctl = fabric.ctrl_of(u.id)
                m.d.comb += [
                    ctl.start.eq(host.unit_start[u.id]),
                    ctl.iteration.eq(host.unit_iteration),
                    host.unit_busy[u.id].eq(ctl.busy),
                    host.unit_done[u.id].eq(ctl.done),
                    host.unit_status[u.id].eq(ctl.status),
                ]

        # Unit control by unit id (hdl/unitmap.py); ids without a controllable unit read idle.
        for i in range(p.n_agcus):
            uid = unit_id(p, "agcu", i)
            ag = memsys.agcu[i]
            m.d.comb += [
                ag.start.eq(host.unit_start[uid]),
                ag.iteration.eq(host.unit_iteration),
                host.unit_busy[uid].eq(ag.busy),
                host.unit_done[uid].eq(ag.done),
                host.unit_status[uid].eq(ag.status),
            ]

        # Latency monitors on every HBM client, read through the extension window: the DMA
        # engine at its HBM port, the AGCUs at their read streams' HBM ports.
        taps = [host.mem] + [memsys.agcu_mem_port(i) for i in range(p.n_agcus)]
        m.d.comb += host.kernel_beat.eq(Cat(
            (t.rdata.valid & t.rdata.ready) | (t.wdata.valid & t.wdata.ready)
            for t in taps[1:]).any())
        monitors = []
        for i, port in enumerate(taps):
            mon = LatencyMonitor(p, bins=LATENCY_BINS, bin_cycles=LATENCY_BIN_CYCLES)
            m.submodules[f"latency{i}"] = mon
            m.d.comb += [
                mon.req_fire.eq(port.req.valid & port.req.ready),
                mon.req_write.eq(port.req.payload.write),
                mon.req_beats_m1.eq(port.req.payload.beats_m1),
                mon.rdata_fire.eq(port.rdata.valid & port.rdata.ready),
                mon.clear.eq(host.counters_clear),
            ]
            monitors.append(mon)

        # Registered extension-window read mux.
        off = Signal(host.ext_addr.shape())
        m.d.comb += off.eq(host.ext_addr - EXT_BASE)
        with m.If(host.ext_r_en):
            m.d.sync += host.ext_r_data.eq(0)
            for i, mon in enumerate(monitors):
                base = ext_latency_base(i)
                with m.If((off >= base) & (off < base + 0x100)):
                    local = Signal(8, name=f"ext_local{i}")
                    m.d.comb += [local.eq(off - base), mon.hist_index.eq(local[:7])]
                    with m.Switch(local):
                        with m.Case(0):
                            m.d.sync += host.ext_r_data.eq(mon.count)
                        with m.Case(1):
                            m.d.sync += host.ext_r_data.eq(mon.total[:32])
                        with m.Case(2):
                            m.d.sync += host.ext_r_data.eq(mon.total[32:])
                        with m.Case(3):
                            m.d.sync += host.ext_r_data.eq(mon.max)
                        with m.Case(4):
                            m.d.sync += host.ext_r_data.eq(mon.overflow)
                        with m.Case(*range(0x80, 0x100)):
                            m.d.sync += host.ext_r_data.eq(mon.hist_count)
        return m

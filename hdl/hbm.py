"""Cycle-level HBM controller and DRAM timing model with an RTL backing store.

:class:`HbmController` serves ``n_ports`` in-order memory ports (:func:`hdl.bus.hbm_port_signature`)
from ``params.hbm_channels`` independent channels. It is meant to be *timing-faithful* at the level
an architect cares about (bandwidth, latency, row-buffer locality, refresh) while staying fast
under Verilator. It is not a DRAM command-bus model: tRRD/tFAW/tCCD_L/tWTR/tRTW are not modelled
(all are below one burst of 4 beats at this clock, except tFAW, which a sequential stream
opening one row per 16 cycles per channel never reaches), nor is tRREFD between two REFsb (8 ns in
Ramulator's HBM2 preset), so REFsb to different banks may issue on consecutive cycles.

Timing sources (one channel = one HBM3 pseudo-channel, 64 bit x 6.4 Gb/s = 51.2 GB/s; fabric clock
800 MHz, tCK = 1.25 ns, so 64 B = one 512-bit beat per cycle per channel):

=========  =========  ======  =========================================================================
parameter  ns         cycles  source
=========  =========  ======  =========================================================================
tRCD       14         12      DRAMsim3 ``configs/HBM2_8Gb_x128.ini`` (tCK=1 ns, tRCDRD=tRCDWR=14); HBM3
                              (JESD238) keeps the DRAM-core array timings of HBM2. 14/1.25 = 11.2 -> 12
tRP        14         12      same file, tRP=14
tREFI      3900       3120    Ramulator2 ``src/dram/impl/HBM3.cpp`` preset nREFI=3900 at tCK_ps=1000;
                              DRAMsim3 HBM2 tREFI=3900 (the JEDEC 3.9 us refresh interval)
tRFC       350        280     Ramulator2 HBM3.cpp tRFC table {2Gb:160, 4Gb:260, 8Gb:350, 16Gb:450} ns,
                              8 Gb per pseudo-channel row
tRFCsb     160        128     Ramulator2 HBM3.cpp (and HBM2.cpp) preset nRFCSB=160 at tCK=1 ns
=========  =========  ======  =========================================================================

(values in ``RduParams``: ``hbm_t_rcd``, ``hbm_t_rp``, ``hbm_t_refi``, ``hbm_t_rfc``,
``hbm_t_rfcsb``.) ``hbm_read_latency`` (150 cycles = 188 ns) is the whole load-to-use latency of an
HBM3 controller + PHY + DRAM at an idle channel with the row open, not the DRAM CL alone.

Address map (beat address ``a``; all fields are bit slices, every size is a power of two)::

    burst block   b   = a // hbm_burst_beats           offset in block = a % hbm_burst_beats
    channel           = b % hbm_channels               (channel interleave at burst granularity)
    local block   lb  = b // hbm_channels
    column burst      = lb % bursts_per_row            (bursts_per_row = hbm_row_bytes / burst bytes)
    bank field        = (lb // bursts_per_row) % hbm_banks
    row               = lb // (bursts_per_row * hbm_banks)
    bank              = bank field XOR 2 * fold(row)   (permutation-based interleaving; fold(row)
                        XORs the row's bits in chunks of log2(banks) - 1 bits)

Why the XOR bank hash (after Zhang, Zhu, Zhang, MICRO 2000): this controller serves each channel
queue in order (no FR-FCFS reordering), so two streams that walk the banks in lockstep (e.g. two
AGCUs streaming two weight matrices) must not need the same bank at the same time. Without a hash,
streams a multiple of ``banks * row`` apart hit the same bank on different rows at every burst and
ping-pong precharge/activate. The hash term is ``2*row`` rather than ``row``: stream A can only
prepare its next bank while stream B is not still streaming from it, i.e. collisions happen when
hash(row_A) XOR hash(row_B) is one of {1, 3, 7, 15} (= f XOR f+1); for consecutive rows plain
``row`` gives exactly those values, ``2*row`` gives {2, 6, 14}. The row is *folded* (all of its
bits XORed in chunks) before doubling: with ``2*row`` alone, two streams whose rows differ by a
multiple of ``banks/2`` (any two power-of-two-aligned regions of 8 rows or more, which is how
weight matrices get laid out) hash identically and conflict on every burst — measured: 15% of
peak for four AGCUs streaming four 512 KiB quarters of HBM.

Residual conflicts are real properties of the hash, not of the timing model: for every hash some
relative offsets put two lockstep streams on the same bank (different rows) at the same time.
Example (default geometry, one row segment = 16 beats of a channel = 32 beat addresses): stream B
576 beats (one row group + 2 segments) after stream A needs bank ``(f+2) ^ 2`` while A needs bank
``f``: equal whenever bit 1 of the bank field ``f`` is 0, i.e. on half of the segments (896 beats
= one group + 12 segments is similar); at 640, 768 or 832 beats ``f ^ (f+k)`` is never 2 and the
walks never meet. Because issue is in order, the two streams' bursts then alternate in the queue
and *every burst* (not every row) pays tRP+tRCD: two 544-beat streams take 2,061 cycles with 164
activates at those offsets against 729 cycles and 68 activates at 640 (measured in Amaranth's
simulator, refresh off). A reordering (FR-FCFS) controller would pay one activate per row visit
instead; this model keeps the in-order contract, so layouts should keep concurrently streamed
regions off such offsets (``stats.row_miss`` shows them).

A sequential stream therefore reads one whole row (4 bursts, 16 cycles of data by default) from one
bank, then moves to the next bank: while one bank streams, the activates of the banks behind it in
the request queue are already under way, so a saturated channel hides tRP+tRCD (24 cycles) behind
the 8-deep queue (32 cycles of data). One AGCU stream keeps the queue almost empty (it issues one
burst per 4 cycles, alternating channels) but needs only half of each channel's bandwidth, so its
exposed activates are absorbed: 1,088 beats in 1,269 cycles (= 1,088 + 150 latency + 31).

Refresh: **per-bank (REFsb) by default** (``hbm_refresh_per_bank=True``). All-bank refresh (REFab)
blocks the whole channel for tRFC every tREFI = 280/3120 = 9.0% of the time, which alone caps a
sequential stream at 91% of peak before any row miss; HBM3 supports single-bank refresh so that a
controller can refresh idle banks while others serve traffic (as commercial HBM controllers do,
e.g. AMD PG313 "Single Bank Refresh ... can improve efficiency"). One REFsb becomes due every
tREFI/banks = 195 cycles (so each bank is still refreshed once per tREFI); every bank is refreshed
once per round before any bank is refreshed again. Each REFsb holds its bank for tRP + tRFCsb =
140 cycles: 4.5% of each bank's time, and nothing of the other 15 banks'.

What that implies for a stream: a sequential stream stays on a bank for one row segment (16 beats
of the channel: 16 cycles at one beat per cycle, 32 for one AGCU spread over two channels) and
comes back to it only after the other 15 banks, >= 240 cycles later. A REFsb on a bank the stream
has left, or will not reach within 140 cycles, costs it nothing; a REFsb on a bank it reaches
sooner stalls the head of the in-order queue (and so every port of the channel) for the rest of
the 140 cycles. So the JEDEC timing allows per-bank refresh to be free for streaming, and *which*
bank the controller picks is everything. (The previous policy here picked the lowest-numbered due
bank whenever the queue was momentarily empty, which an AGCU stream's queue is most of the time,
and its "used recently, not queued" preference also matched the bank being streamed between two
of its bursts and banks another stream was about to enter; measured: 9.7 stall cycles per REFsb
on a long stream, 42 with a slow consumer, and a 1,088-beat stream taking 1,269 to 1,431 cycles
depending on the refresh phase.)

The scheduler, in the spirit of DARP (Chang et al., "Improving DRAM Performance by Parallelizing
Refreshes with Accesses", HPCA 2014: per-bank refreshes issued out of order to banks with no
pending demand, postponed under load and pulled in when a bank is idle) and of commercial
controllers' per-bank mode (the Microchip UDDRC manual: "speculative" refreshes to banks for
which its CAM holds no transaction). This model's queue holds almost no look-ahead (an AGCU
issues at its stream's rate), so the controller predicts its streams from the addresses served:

* *Stream tracker* (per port, per channel): the row segment of the port's newest request in the
  queue (updated as requests are enqueued, so a stream is tracked from its first request on) and
  the time its last two segments took. While the port is active (a request within the last 256
  cycles), that segment (unless the request is its last column burst) and the next segments of
  its bank walk that it can reach before a REFsb issued now would end (the j-th next one if
  j * segment time < time spent in the current segment + tRP + tRFCsb, with the shorter of the
  last two segment times; always the next one; at most ceil(140/16) = 9) are *ahead* of it.
  The controller owns the address map, so it can compute the bank of any segment; a port moves
  at most one beat per cycle. A port that interleaves several regions is tracked by its last one.
* A bank is *clear* if it is due in this round, idle, not needed by a queued request or the burst
  on the bus, and not ahead of any active port. *Behind* = clear and used within the last 64
  cycles (a bank a stream has just moved on from: the best choice, about 15 segments away).
* Per cycle (one REFsb command at most): a *behind* bank is refreshed whenever one exists, paying
  a due REFsb or pulling one in ahead of time (at most ``hbm_refresh_postpone`` in advance; JEDEC
  DDR3/DDR4 allow 8 REF pulled in, AMD PG313 issues refreshes "in advance of future refresh
  requirements"); else a due REFsb goes to the lowest *clear* bank at once (an idle channel
  refreshes at once); else it is postponed, up to ``hbm_refresh_postpone`` owed (JEDEC: at most 8
  REF postponed; PG313 skips up to eight while transactions are queued), and then forced on the
  lowest due bank no queued request needs (or any idle due bank), even if that stalls a stream.
  Both limits are counted in REFsb (8 = half a round of 16 banks), stricter than JEDEC's 8 REFab
  intervals.

Measured (Amaranth simulator, default parameters, AGCU-like ports: one 4-beat burst per 4 cycles,
256 beats of credits): a 16,384-beat stream 0 stall cycles for 184 REFsb (was 1,694 for 174),
16,565 cycles = beats + latency + 31; two streams saturating both channels 0 (was 542 for 88); one
stream with a consumer taking a beat every 4 cycles 0 (was 7,071 for 168); four strided streams
(1 beat in 8) 0; 1,088-beat streams after 24 random idle gaps (0-4,000 cycles) 1,269 to 1,318
cycles (was 1,269 to 1,431); sequences of 40 short kernels (512-1,088 beats, 1 or 2 streams,
random gaps) 2 to 508 stall cycles in 1 to 6 of the 40 kernels over five seeds (was 2,410 to
5,116 in 19 to 28). What remains is inherent to per-bank refresh: a stream that *starts* while
an idle channel is refreshing a bank (an idle channel refreshes on time, so some bank is busy 140
of every 195 cycles) and needs that bank among its first few segments waits for the rest of the
140 cycles; credit pulled in by the previous stream keeps idle gaps up to ~8 x 195 cycles
refresh-free. Random traffic defeats the tracker (about 25 stall cycles per REFsb
with two ports of random bursts, as before): in-order issue lets a refreshing bank block the
whole channel, where a reordering controller would serve the other banks meanwhile.

``stats.refresh`` counts the cycles the head request waits for a refreshing bank (direct stalls;
a refresh can also delay an activate queued behind the head, which is not counted).
``hbm_refresh_per_bank=False`` selects all-bank refresh (every tREFI, all banks blocked for
tRP+tRFC, waiting for no bank to be mid-activate) for comparison.

Cycle-level contract
--------------------
* **Request intake.** Each channel grants at most one request per cycle, round-robin among the
  ports whose request targets it (the channel is a function of ``req.addr``). ``req.ready`` is
  asserted in the cycle of the grant. A read is admitted only if its channel queue has room, the
  port's order FIFO has room and the port has ``beats`` credits for that channel's response buffer
  (credits are reserved at admission and returned as the port consumes ``rdata``), so queued reads
  can always complete and a port that stops taking ``rdata`` only stops its *own* reads.
* **Writes** are collected first: after a write is granted the channel takes its ``beats`` write
  beats from the port's ``wdata`` (one per cycle while ``wdata.valid``), then enqueues the write.
  During the collection that channel grants nothing else and the port is granted nowhere else, so
  an initiator should present the data with (or before) the request. A write is performed (visible
  to later reads of any port) when it leaves the queue.
* **Issue.** Each channel queue is served strictly in order (so a port's write followed by a read of
  the same address returns the new data, and reads of different ports are served in arrival
  order). The head burst issues when its bank has its row open and is idle; then it occupies the
  channel data bus for ``beats`` cycles; the next burst may issue in the cycle the last beat moves,
  so back-to-back bursts stream at one beat per cycle per channel.
* **Row buffer.** Per bank one open row. A queued request whose bank holds another row starts
  precharge+activate (tRP + tRCD; tRCD alone if the bank is closed) as soon as no older queued
  request needs that bank and the bank is idle (one activate per channel per cycle). The
  ``stats.row_miss`` strobe marks each activate.
* **Read latency.** With an idle channel and the row open, the first beat of a read is on
  ``rdata`` (valid) exactly ``hbm_read_latency`` cycles after the cycle its request handshake
  completed; the beats of a burst follow on consecutive cycles when ``rdata.ready`` is high. A
  row miss adds tRCD (closed bank) or tRP+tRCD (other row open). Queueing adds the waiting time.
* **Read order.** Each port receives its read data in its own request order, whichever channels
  served it (per-port order FIFO of channel ids, per-port-per-channel response buffers).
  ``rdata`` honours back-pressure.
* **Stats** (one-cycle strobes per channel): ``rd_beat``/``wr_beat`` a beat moved on the data bus,
  ``row_miss`` an activate started, ``refresh`` the channel's head request is held up by a refresh
  (per-bank mode: its bank is refreshing; all-bank mode: a refresh is in progress).
* **error** (sticky until reset) is raised when a request crosses its burst block
  (``addr % burst + beats > burst``); such a request is still executed on consecutive addresses of
  its channel, which are *not* the addresses the initiator meant.
* The backing store is one :class:`hdl.ram.WideRam` (a ``lib.memory.Memory`` in simulation) of ``hbm_channel_beats`` x 512 bit per channel,
  initialised to zero.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .bus import hbm_port_signature, hbm_stats_signature
from .params import RduParams
from .ram import WideRam

__all__ = ["HbmController", "HbmGeometry", "hbm_response_buffer_beats"]


def _log2(v: int) -> int:
    assert v > 0 and v & (v - 1) == 0, v
    return v.bit_length() - 1


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def hbm_response_buffer_beats(p: RduParams) -> int:
    """Depth of each per-port-per-channel read response buffer.

    It must cover a port's credit round trip at one beat per cycle: the read latency, a full
    channel queue ahead of the request, and a few bursts of pipeline slack.
    """
    return _next_pow2(p.hbm_read_latency + p.hbm_queue_depth * p.hbm_burst_beats
                      + 4 * p.hbm_burst_beats)


class HbmGeometry:
    """Bit-field geometry of the address map (see the module docstring). Pure Python; the
    testbenches use it to predict channels, banks and rows."""

    def __init__(self, p: RduParams):
        self.p = p
        self.burst_bits = _log2(p.hbm_burst_beats)
        self.channel_bits = _log2(p.hbm_channels)
        self.bursts_per_row = p.hbm_row_bytes // (p.hbm_burst_beats * p.beat_bytes)
        self.col_bits = _log2(self.bursts_per_row)
        self.bank_bits = _log2(p.hbm_banks)
        self.local_beat_bits = _log2(p.hbm_channel_beats)
        self.local_block_bits = self.local_beat_bits - self.burst_bits
        self.row_bits = self.local_block_bits - self.col_bits - self.bank_bits
        assert self.row_bits >= 0, "hbm_bytes too small for the bank/row geometry"

    def row_hash(self, row: int) -> int:
        """Bank permutation term of a row: all row bits XOR-folded into ``bank_bits - 1`` bits,
        times two (see the module docstring)."""
        w = max(1, self.bank_bits - 1)
        f = 0
        while row:
            f ^= row & ((1 << w) - 1)
            row >>= w
        return (f << 1) & ((1 << self.bank_bits) - 1)

    def split(self, addr: int):
        """(channel, bank, row, local beat address) of a beat address."""
        b = addr >> self.burst_bits
        ch = b & ((1 << self.channel_bits) - 1)
        lb = b >> self.channel_bits
        row = lb >> (self.col_bits + self.bank_bits)
        bank = ((lb >> self.col_bits) ^ self.row_hash(row)) & ((1 << self.bank_bits) - 1)
        local = (lb << self.burst_bits) | (addr & ((1 << self.burst_bits) - 1))
        return ch, bank, row, local

    def compose(self, channel: int, bank: int, row: int, col: int = 0, offset: int = 0) -> int:
        """Beat address of (channel, bank, row, column burst, beat offset): inverse of split."""
        field = (bank ^ self.row_hash(row)) & ((1 << self.bank_bits) - 1)
        lb = (((row << self.bank_bits) | field) << self.col_bits) | col
        return (((lb << self.channel_bits) | channel) << self.burst_bits) | offset


class _Channel(Elaboratable):
    """One channel: request queue, bank/row/refresh timing, data bus, backing store, latency FIFO.

    Interface (all driven/used by :class:`HbmController`):
      ``push``/``push_entry``: enqueue one request (caller checks ``space``);
      ``wfifo_*``: write data of writes being collected, in queue order;
      ``out_valid``/``out_port``/``out_data``: a read beat leaving the latency pipe this cycle
      (the caller must be able to take it: credits guarantee that).
    """

    def __init__(self, p: RduParams, geo: HbmGeometry, n_ports: int, entry_layout):
        self.p, self.geo, self.n_ports = p, geo, n_ports
        self.entry_layout = entry_layout
        depth = p.hbm_queue_depth
        self.push = Signal()
        self.push_entry = Signal(entry_layout)
        self.count = Signal(range(depth + 1))
        self.space = Signal()                      # count < depth (queue not full)
        self.wfifo = SyncFIFO(width=p.beat_bits, depth=depth * p.hbm_burst_beats)
        self.out_valid = Signal()
        self.out_port = Signal(range(max(2, n_ports)))
        self.out_data = Signal(p.beat_bits)
        # stats
        self.rd_beat = Signal()
        self.busy = Signal()                       # queued requests or a burst on the bus
        self.wr_beat = Signal()
        self.row_miss = Signal()
        self.refresh_stall = Signal()
        self.refresh_cmd = Signal()
        self.error = Signal()

    def elaborate(self, platform):
        p, geo = self.p, self.geo
        m = Module()
        m.submodules.wfifo = self.wfifo
        depth = p.hbm_queue_depth
        nbanks = p.hbm_banks
        L = p.hbm_read_latency
        assert L >= 5, "the pipeline around the latency FIFO needs hbm_read_latency >= 5"

        # ---- request queue: a shift register, slot 0 is the oldest (the head) -------------
        slots = [Signal(self.entry_layout, name=f"slot{i}") for i in range(depth)]
        valid = [Signal(name=f"slot{i}_valid") for i in range(depth)]
        for i in range(depth):
            m.d.comb += valid[i].eq(self.count > i)
        m.d.comb += self.space.eq(self.count < depth)

        def bank_of_seg(seg):
            """Bank of a row segment (local block // bursts_per_row: bank field, then row)."""
            field = seg[:geo.bank_bits]
            row = seg[geo.bank_bits:]
            w = max(1, geo.bank_bits - 1)
            folded = 0
            for lo in range(0, geo.row_bits, w):
                folded = folded ^ row[lo:min(lo + w, geo.row_bits)]
            return field ^ Cat(C(0, 1), folded)[:geo.bank_bits]

        def bank_of(e):
            return bank_of_seg(e.lb[geo.col_bits:])

        def row_of(e):
            return e.lb[geo.col_bits + geo.bank_bits:]

        pop = Signal()
        pos = Signal(range(depth + 1))
        m.d.comb += pos.eq(self.count - pop)
        for i in range(depth):
            nxt = slots[i + 1] if i + 1 < depth else slots[i]
            with m.If(self.push & (pos == i)):
                m.d.sync += slots[i].eq(self.push_entry)
            with m.Elif(pop):
                m.d.sync += slots[i].eq(nxt)
        m.d.sync += self.count.eq(self.count + self.push - pop)

        # ---- bank state --------------------------------------------------------------------
        timer_max = max(p.hbm_t_rp + p.hbm_t_rcd, p.hbm_t_rp + p.hbm_t_rfc, p.hbm_t_rp + p.hbm_t_rfcsb)
        timer = [Signal(range(timer_max + 1), name=f"bank{k}_timer") for k in range(nbanks)]
        is_open = [Signal(name=f"bank{k}_open") for k in range(nbanks)]
        open_row = [Signal(max(1, geo.row_bits), name=f"bank{k}_row") for k in range(nbanks)]
        refreshing = [Signal(name=f"bank{k}_refreshing") for k in range(nbanks)]
        recent_window = geo.bursts_per_row * p.hbm_burst_beats * 4
        age = [Signal(range(recent_window + 1), init=recent_window, name=f"bank{k}_age")
               for k in range(nbanks)]
        timer_a, open_a, row_a, refr_a = Array(timer), Array(is_open), Array(open_row), Array(refreshing)

        # ---- data bus: the burst being transferred ----------------------------------------
        cur_left = Signal(range(p.hbm_burst_beats + 1))
        cur_addr = Signal(geo.local_beat_bits)
        cur_write = Signal()
        cur_port = Signal.like(self.out_port)
        cur_bank = Signal(max(1, geo.bank_bits))
        can_issue = Signal()
        m.d.comb += can_issue.eq(cur_left <= 1)

        head = slots[0]
        head_bank = Signal(max(1, geo.bank_bits))
        head_row = Signal(max(1, geo.row_bits))
        m.d.comb += [head_bank.eq(bank_of(head)), head_row.eq(row_of(head))]
        head_ready = Signal()
        m.d.comb += head_ready.eq(valid[0] & open_a[head_bank] & (row_a[head_bank] == head_row)
                                  & (timer_a[head_bank] == 0))
        issue = Signal()
        m.d.comb += [issue.eq(head_ready & can_issue), pop.eq(issue)]
        if p.hbm_refresh_per_bank:
            m.d.comb += self.refresh_stall.eq(valid[0] & refr_a[head_bank])
        else:
            m.d.comb += self.refresh_stall.eq(Cat(refreshing) != 0)

        with m.If(issue):
            m.d.sync += [
                cur_left.eq(head.beats_m1 + 1),
                cur_addr.eq(Cat(head.off, head.lb)),
                cur_write.eq(head.write),
                cur_port.eq(head.port),
                cur_bank.eq(head_bank),
            ]
            # a burst crossing its block runs on into the next local block: flag it
            m.d.sync += self.error.eq(self.error | ((head.off + head.beats_m1) >= p.hbm_burst_beats))
        with m.Elif(cur_left != 0):
            m.d.sync += [cur_left.eq(cur_left - 1), cur_addr.eq(cur_addr + 1)]

        # ---- backing store ------------------------------------------------------------------
        # WideRam: a lib.memory.Memory in simulation, a no-init Verilog RAM in Verilator builds.
        m.submodules.store = store = WideRam(p.beat_bits, p.hbm_channel_beats)
        beat = Signal()
        m.d.comb += beat.eq(cur_left != 0)
        m.d.comb += [
            store.r_addr.eq(cur_addr), store.r_en.eq(beat & ~cur_write),
            store.w_addr.eq(cur_addr), store.w_data.eq(self.wfifo.r_data),
            store.w_en.eq(beat & cur_write),
            self.wfifo.r_en.eq(beat & cur_write),
            self.rd_beat.eq(beat & ~cur_write),
            self.busy.eq((self.count != 0) | (cur_left != 0)),
            self.wr_beat.eq(beat & cur_write),
        ]

        # ---- latency pipe: FIFO of (release time, port, data) ------------------------------
        stamp_bits = (L + 8).bit_length()
        now = Signal(stamp_bits)
        m.d.sync += now.eq(now + 1)
        lat_layout = data.StructLayout({"release": stamp_bits, "port": len(self.out_port),
                                        "data": p.beat_bits})
        m.submodules.lat = lat = SyncFIFO(width=lat_layout.size, depth=_next_pow2(L + 8))
        rd_pending = Signal()
        rd_pending_port = Signal.like(self.out_port)
        m.d.sync += [rd_pending.eq(beat & ~cur_write), rd_pending_port.eq(cur_port)]
        lat_in = Signal(lat_layout)
        # Timing of an isolated row-hit read whose request handshakes in cycle h: enqueue h+1,
        # issue h+1 (cur loaded at its end), beat h+2, memory data h+3 -> pushed here; the port
        # shows the beat one cycle after it leaves this pipe. Release at (push time + L - 4)
        # so that rdata is valid in cycle h + L.
        m.d.comb += [
            lat_in.release.eq(now + (L - 4)),
            lat_in.port.eq(rd_pending_port),
            lat_in.data.eq(store.r_data),
            lat.w_data.eq(lat_in),
            lat.w_en.eq(rd_pending),
        ]
        lat_out = Signal(lat_layout)
        m.d.comb += lat_out.eq(lat.r_data)
        m.d.comb += [
            self.out_valid.eq(lat.r_rdy & (lat_out.release == now)),
            self.out_port.eq(lat_out.port),
            self.out_data.eq(lat_out.data),
            lat.r_en.eq(self.out_valid),
        ]

        # ---- activation scheduler: oldest queued request whose bank can be (re)opened -------
        # the timer is loaded in the command's own cycle, so it holds cost-1 afterwards: a burst
        # to a closed bank then issues exactly tRCD cycles later than a row hit would
        cost_closed = p.hbm_t_rcd - 1
        cost_open = p.hbm_t_rp + p.hbm_t_rcd - 1
        act = Signal()
        act_bank = Signal(max(1, geo.bank_bits))
        act_row = Signal(max(1, geo.row_bits))
        eligible = []
        for i in range(depth):
            b, r = bank_of(slots[i]), row_of(slots[i])
            older_same = Const(0)
            for j in range(i):
                older_same = older_same | (valid[j] & (bank_of(slots[j]) == b))
            in_bus = (cur_left > 1) & (cur_bank == b)   # its row still streams
            needs = ~open_a[b] | (row_a[b] != r)
            e = Signal(name=f"act_eligible{i}")
            m.d.comb += e.eq(valid[i] & needs & (timer_a[b] == 0) & ~older_same & ~in_bus)
            eligible.append((e, b, r))
        for i, (e, b, r) in enumerate(eligible):
            cond = m.If if i == 0 else m.Elif
            with cond(e):
                m.d.comb += [act.eq(1), act_bank.eq(b), act_row.eq(r)]
        m.d.comb += self.row_miss.eq(act)

        # ---- refresh scheduler ---------------------------------------------------------------
        # (policy and its reasoning: module docstring, "Refresh")
        ref = Signal()
        ref_all = Signal()
        ref_bank = Signal(max(1, geo.bank_bits))
        postpone = p.hbm_refresh_postpone
        debt_max = 2 * postpone + 2
        pull_max = postpone if p.hbm_refresh_per_bank else 0
        # debt < 0: refreshes pulled in ahead of their due time (credit)
        debt = Signal(range(-pull_max - 1, debt_max + 1))
        interval = (p.hbm_t_refi // nbanks) if p.hbm_refresh_per_bank else p.hbm_t_refi
        ref_timer = Signal(range(interval + 1), init=interval)
        due = Signal()
        with m.If(ref_timer == 1):
            m.d.sync += ref_timer.eq(interval)
            m.d.comb += due.eq(1)
        with m.Else():
            m.d.sync += ref_timer.eq(ref_timer - 1)
        m.d.sync += debt.eq(debt + (due & (debt != debt_max)) - ref)
        m.d.comb += self.refresh_cmd.eq(ref)

        stream_window = 4 * recent_window
        # a REFsb holds its bank for tRP + tRFCsb; a port's stream reaches its j-th next row
        # segment in about j * (its last segment time); the fastest is one beat per cycle
        ref_hold = p.hbm_t_rp + p.hbm_t_rfcsb
        seg_min = geo.bursts_per_row * p.hbm_burst_beats
        lookahead = max(1, -(-ref_hold // seg_min))

        referenced = Signal(nbanks)
        ref_expr = Const(0, nbanks)
        for i in range(depth):
            ref_expr = ref_expr | Mux(valid[i], 1 << bank_of(slots[i]), 0)
        m.d.comb += referenced.eq(ref_expr)
        bus_bank = Signal(nbanks)      # the bank whose row the data bus is still streaming
        m.d.comb += bus_bank.eq(Mux(cur_left > 1, 1 << cur_bank, 0))
        in_use = Signal(nbanks)
        m.d.comb += in_use.eq(referenced | bus_bank)
        idle = Signal(nbanks)
        m.d.comb += idle.eq(Cat(t == 0 for t in timer) & ~Mux(act, 1 << act_bank, 0))

        if p.hbm_refresh_per_bank:
            unrefreshed = Signal(nbanks, init=(1 << nbanks) - 1)
            recent = Signal(nbanks)
            m.d.comb += recent.eq(Cat(a < recent_window for a in age))
            # stream tracker: per port, the row segment of its newest request in this channel's
            # queue; while the port is active, the banks of that segment (unless the request is
            # its last column burst) and of the next segments of the bank walk it can reach
            # before a refresh issued now would end are "ahead" of the stream
            seg_bits = geo.bank_bits + geo.row_bits
            push_seg = Signal(seg_bits)
            push_last_col = Signal()
            m.d.comb += [push_seg.eq(self.push_entry.lb[geo.col_bits:]),
                         push_last_col.eq(self.push_entry.lb[:geo.col_bits] == geo.bursts_per_row - 1
                                          if geo.col_bits else 1)]
            ahead_terms = Const(0, nbanks)
            for i in range(self.n_ports):
                last_seg = Signal(seg_bits, name=f"port{i}_seg")
                last_done = Signal(name=f"port{i}_seg_done")
                p_age = Signal(range(stream_window + 1), init=stream_window, name=f"port{i}_age")
                seg_cnt = Signal(range(ref_hold + 1), name=f"port{i}_seg_cnt")
                seg_time = Signal(range(ref_hold + 1), init=seg_min, name=f"port{i}_seg_time")
                seg_prev = Signal(range(ref_hold + 1), init=seg_min, name=f"port{i}_seg_prev")
                seg_fast = Signal(range(ref_hold + 1), name=f"port{i}_seg_fast")
                m.d.comb += seg_fast.eq(Mux(seg_prev < seg_time, seg_prev, seg_time))
                active = Signal(name=f"port{i}_active")
                m.d.comb += active.eq(p_age != stream_window)
                with m.If(self.push & (self.push_entry.port == i)):
                    new_seg = push_seg != last_seg
                    m.d.sync += [last_seg.eq(push_seg), last_done.eq(push_last_col), p_age.eq(0)]
                    with m.If(~active):           # a new stream: assume the fastest
                        m.d.sync += [seg_time.eq(seg_min), seg_prev.eq(seg_min), seg_cnt.eq(0)]
                    with m.Elif(new_seg):
                        m.d.sync += [seg_time.eq(seg_cnt), seg_prev.eq(seg_time), seg_cnt.eq(0)]
                    with m.Elif(seg_cnt != ref_hold):
                        m.d.sync += seg_cnt.eq(seg_cnt + 1)
                with m.Else():
                    with m.If(active):
                        m.d.sync += p_age.eq(p_age + 1)
                    with m.If(seg_cnt != ref_hold):
                        m.d.sync += seg_cnt.eq(seg_cnt + 1)
                mask = Mux(last_done, 0, 1 << bank_of_seg(last_seg))
                for j in range(1, lookahead + 1):
                    nxt_seg = Signal(seg_bits, name=f"port{i}_seg_p{j}")
                    m.d.comb += nxt_seg.eq(last_seg + j)
                    # the stream enters segment +j about j * seg_time after it entered the
                    # current one, seg_cnt cycles ago: before a REFsb issued now would end?
                    reach = 1 if j == 1 else (seg_fast * j < seg_cnt + ref_hold)
                    mask = mask | Mux(reach, 1 << bank_of_seg(nxt_seg), 0)
                ahead_terms = ahead_terms | Mux(active, mask, 0)
            ahead = Signal(nbanks)
            m.d.comb += ahead.eq(ahead_terms)
            candidates = Signal(nbanks)    # may be refreshed without delaying a queued request
            clear = Signal(nbanks)         # ... nor a tracked stream within `lookahead` segments
            behind = Signal(nbanks)        # ... and just used: banks streams have moved on from
            forced = Signal(nbanks)
            m.d.comb += [
                candidates.eq(unrefreshed & idle & ~in_use),
                clear.eq(candidates & ~ahead),
                behind.eq(clear & recent),
                forced.eq(unrefreshed & idle & ~bus_bank),
            ]

            def lowest(mask):
                res = Signal(max(1, geo.bank_bits))
                for k in reversed(range(nbanks)):
                    with m.If(mask[k]):
                        m.d.comb += res.eq(k)
                return res

            low_behind, low_clear = lowest(behind), lowest(clear)
            low_cand, low_forced = lowest(candidates), lowest(forced)
            with m.If((behind != 0) & (debt != -pull_max)):
                # free: pays a due refresh or pulls one in
                m.d.comb += [ref.eq(1), ref_bank.eq(low_behind)]
            with m.Elif((debt > 0) & (clear != 0)):
                m.d.comb += [ref.eq(1), ref_bank.eq(low_clear)]
            with m.Elif((debt > 0) & (debt >= postpone)):
                with m.If(candidates != 0):
                    m.d.comb += [ref.eq(1), ref_bank.eq(low_cand)]
                with m.Elif(forced != 0):
                    m.d.comb += [ref.eq(1), ref_bank.eq(low_forced)]
            with m.If(ref):
                left_after = unrefreshed & ~(1 << ref_bank)
                m.d.sync += unrefreshed.eq(Mux(left_after == 0, (1 << nbanks) - 1, left_after))
        else:
            # all-bank refresh: wait until no bank is mid-activate, then block every bank
            with m.If((debt > 0) & (idle == (1 << nbanks) - 1) & ~act):
                m.d.comb += [ref.eq(1), ref_all.eq(1)]

        # ---- per-bank state update -----------------------------------------------------------
        for k in range(nbanks):
            kref = ref & (ref_all | (ref_bank == k)) if p.hbm_refresh_per_bank else ref_all
            t_rfc = p.hbm_t_rfcsb if p.hbm_refresh_per_bank else p.hbm_t_rfc
            with m.If(act & (act_bank == k)):
                m.d.sync += [timer[k].eq(Mux(is_open[k], cost_open, cost_closed)),
                             is_open[k].eq(1), open_row[k].eq(act_row), refreshing[k].eq(0)]
            with m.Elif(kref):
                m.d.sync += [timer[k].eq(Mux(is_open[k], p.hbm_t_rp, 0) + t_rfc - 1),
                             is_open[k].eq(0), refreshing[k].eq(1)]
            with m.Elif(timer[k] != 0):
                m.d.sync += timer[k].eq(timer[k] - 1)
            with m.Else():
                m.d.sync += refreshing[k].eq(0)
            with m.If(issue & (head_bank == k)):
                m.d.sync += age[k].eq(0)
            with m.Elif(age[k] != recent_window):
                m.d.sync += age[k].eq(age[k] + 1)

        return m


class HbmController(wiring.Component):
    """The HBM model: ``n_ports`` in-order ports over ``hbm_channels`` channels.

    Members: ``ports`` (array of ``In(hbm_port_signature(p))``; port index = arbitration identity),
    ``stats`` (``Out(hbm_stats_signature(p))``), ``error`` (``Out(1)``, sticky protocol error),
    ``refresh_cmd`` (``Out(hbm_channels)``, one-cycle strobe per REFsb/REFab command issued).
    See the module docstring for the cycle-level contract.
    """

    def __init__(self, params: RduParams, n_ports: int):
        assert n_ports >= 1
        self.p = params
        self.n_ports = n_ports
        self.geo = HbmGeometry(params)
        super().__init__({
            "ports": In(hbm_port_signature(params)).array(n_ports),
            "stats": Out(hbm_stats_signature(params)),
            "error": Out(1),
            "refresh_cmd": Out(params.hbm_channels),
        })

    def elaborate(self, platform):
        p, geo, n = self.p, self.geo, self.n_ports
        m = Module()
        C = p.hbm_channels
        port_bits = max(1, (n - 1).bit_length())
        bm1_bits = max(1, (p.hbm_burst_beats - 1).bit_length())
        entry_layout = data.StructLayout({
            "lb": geo.local_block_bits, "off": max(1, geo.burst_bits), "beats_m1": bm1_bits,
            "write": 1, "port": port_bits,
        })
        chans = []
        for c in range(C):
            ch = _Channel(p, geo, n, entry_layout)
            m.submodules[f"ch{c}"] = ch
            chans.append(ch)
        m.d.comb += [
            self.stats.rd_beat.eq(Cat(ch.rd_beat for ch in chans)),
            self.stats.wr_beat.eq(Cat(ch.wr_beat for ch in chans)),
            self.stats.row_miss.eq(Cat(ch.row_miss for ch in chans)),
            self.stats.refresh.eq(Cat(ch.refresh_stall for ch in chans)),
            self.error.eq(Cat(ch.error for ch in chans) != 0),
            self.refresh_cmd.eq(Cat(ch.refresh_cmd for ch in chans)),
        ]

        rbuf_depth = hbm_response_buffer_beats(p)
        order_layout = data.StructLayout({"channel": max(1, geo.channel_bits), "beats_m1": bm1_bits})

        # per-port decode of the request at the head of each port
        req_ch = [Signal(max(1, geo.channel_bits), name=f"p{i}_req_ch") for i in range(n)]
        req_entry = [Signal(entry_layout, name=f"p{i}_req_entry") for i in range(n)]
        wlock = [Signal(name=f"p{i}_wlock") for i in range(n)]        # a channel collects its wdata
        order = []
        credits = []   # credits[i][c]
        rbufs = []     # rbufs[i][c]
        for i, port in enumerate(self.ports):
            a = port.req.payload.addr
            blk = a[geo.burst_bits:]
            m.d.comb += [
                req_ch[i].eq(blk[:geo.channel_bits] if geo.channel_bits else 0),
                req_entry[i].lb.eq(blk[geo.channel_bits:]),
                req_entry[i].off.eq(a[:geo.burst_bits] if geo.burst_bits else 0),
                req_entry[i].beats_m1.eq(port.req.payload.beats_m1),
                req_entry[i].write.eq(port.req.payload.write),
                req_entry[i].port.eq(i),
            ]
            of = SyncFIFO(width=order_layout.size, depth=rbuf_depth)
            m.submodules[f"p{i}_order"] = of
            order.append(of)
            credits.append([Signal(range(rbuf_depth + 1), init=rbuf_depth, name=f"p{i}_c{c}_credits")
                            for c in range(C)])
            rb = [SyncFIFO(width=p.beat_bits, depth=rbuf_depth) for c in range(C)]
            for c in range(C):
                m.submodules[f"p{i}_c{c}_rbuf"] = rb[c]
            rbufs.append(rb)

        # ---- per-channel intake: round-robin grant + write-data collection ----------------
        grants = [[Signal(name=f"c{c}_grant_p{i}") for i in range(n)] for c in range(C)]
        for c, ch in enumerate(chans):
            rr = Signal(range(n), name=f"c{c}_rr")
            coll_left = Signal(range(p.hbm_burst_beats + 1), name=f"c{c}_coll_left")
            coll_port = Signal(range(max(2, n)), name=f"c{c}_coll_port")
            coll_entry = Signal(entry_layout, name=f"c{c}_coll_entry")
            m.d.comb += self.stats.busy[c].eq(ch.busy | (coll_left != 0))
            want = Signal(n, name=f"c{c}_want")
            for i, port in enumerate(self.ports):
                pl = port.req.payload
                beats = pl.beats_m1 + 1
                read_ok = (credits[i][c] >= beats) & order[i].w_rdy
                m.d.comb += want[i].eq(port.req.valid & (req_ch[i] == c) & ~wlock[i] & ch.space
                                       & (coll_left == 0) & (pl.write | read_ok))
            # round robin: first requester at or after rr, else first requester overall
            hi = Signal(n, name=f"c{c}_want_hi")
            m.d.comb += hi.eq(want & ~((1 << rr) - 1))
            sel = Signal(range(n), name=f"c{c}_sel")
            for i in reversed(range(n)):
                with m.If(want[i]):
                    m.d.comb += sel.eq(i)
            for i in reversed(range(n)):
                with m.If(hi[i]):
                    m.d.comb += sel.eq(i)
            any_grant = want != 0
            for i in range(n):
                m.d.comb += grants[c][i].eq(any_grant & (sel == i))
            with m.If(any_grant):
                m.d.sync += rr.eq(Mux(sel == n - 1, 0, sel + 1))

            sel_entry = Signal(entry_layout, name=f"c{c}_sel_entry")
            with m.Switch(sel):
                for i in range(n):
                    with m.Case(i):
                        m.d.comb += sel_entry.eq(req_entry[i])
            # reads enqueue at grant; writes after their data is in the channel's write FIFO
            with m.If(any_grant & ~sel_entry.write):
                m.d.comb += [ch.push.eq(1), ch.push_entry.eq(sel_entry)]
            with m.If(any_grant & sel_entry.write):
                m.d.sync += [coll_left.eq(sel_entry.beats_m1 + 1), coll_port.eq(sel),
                             coll_entry.eq(sel_entry)]
            wd_valid = Signal(name=f"c{c}_wd_valid")
            with m.Switch(coll_port):
                for i, port in enumerate(self.ports):
                    with m.Case(i):
                        m.d.comb += [wd_valid.eq(port.wdata.valid),
                                     ch.wfifo.w_data.eq(port.wdata.payload)]
            take = Signal(name=f"c{c}_wtake")
            m.d.comb += take.eq((coll_left != 0) & wd_valid & ch.wfifo.w_rdy)
            m.d.comb += ch.wfifo.w_en.eq(take)
            with m.If(take):
                m.d.sync += coll_left.eq(coll_left - 1)
                with m.If(coll_left == 1):
                    m.d.comb += [ch.push.eq(1), ch.push_entry.eq(coll_entry)]
            for i, port in enumerate(self.ports):
                with m.If(take & (coll_port == i)):
                    m.d.comb += port.wdata.ready.eq(1)
                with m.If((coll_left != 0) & (coll_port == i)):
                    m.d.comb += wlock[i].eq(1)

        # ---- per-port: accept, order bookkeeping, credits, response delivery ---------------
        for i, port in enumerate(self.ports):
            granted = Signal(name=f"p{i}_granted")
            m.d.comb += granted.eq(Cat(grants[c][i] for c in range(C)) != 0)
            m.d.comb += port.req.ready.eq(granted)
            is_read = granted & ~port.req.payload.write
            oin = Signal(order_layout)
            m.d.comb += [oin.channel.eq(req_ch[i]), oin.beats_m1.eq(port.req.payload.beats_m1),
                         order[i].w_data.eq(oin), order[i].w_en.eq(is_read)]

            # beats leaving the channels' latency pipes land in this port's buffers
            for c, ch in enumerate(chans):
                m.d.comb += [rbufs[i][c].w_data.eq(ch.out_data),
                             rbufs[i][c].w_en.eq(ch.out_valid & (ch.out_port == i))]

            ohead = Signal(order_layout)
            m.d.comb += ohead.eq(order[i].r_data)
            beat_idx = Signal(bm1_bits, name=f"p{i}_beat_idx")
            rb_rdy = Array(rb.r_rdy for rb in rbufs[i])[ohead.channel]
            rb_data = Array(rb.r_data for rb in rbufs[i])[ohead.channel]
            m.d.comb += [port.rdata.valid.eq(order[i].r_rdy & rb_rdy),
                         port.rdata.payload.eq(rb_data)]
            deliver = Signal(name=f"p{i}_deliver")
            m.d.comb += deliver.eq(port.rdata.valid & port.rdata.ready)
            with m.If(deliver):
                with m.If(beat_idx == ohead.beats_m1):
                    m.d.sync += beat_idx.eq(0)
                    m.d.comb += order[i].r_en.eq(1)
                with m.Else():
                    m.d.sync += beat_idx.eq(beat_idx + 1)
            for c in range(C):
                popped = deliver & (ohead.channel == c)
                m.d.comb += rbufs[i][c].r_en.eq(popped)
                reserved = Mux(grants[c][i] & ~port.req.payload.write, port.req.payload.beats_m1 + 1, 0)
                m.d.sync += credits[i][c].eq(credits[i][c] - reserved + popped)
        return m

"""Config controller: receives a bitstream, checks all of it, then configures the units.

The bitstream format, its checks and their order are specified in ``sw/bitstream.py``; this unit
implements exactly those checks (:class:`~sw.bitstream.ConfigStatus` is the shared status enum).

Interface (:class:`ConfigController`)
    - ``start`` (pulse) with ``length`` (bytes of the bitstream, sampled with ``start``), from host
      CSRs. ``start`` while ``busy`` is ignored.
    - ``data``: the bitstream as ``ceil(length / 64)`` beats of 512 bits, little-endian: byte
      ``k`` is bits ``[8*(k%64), 8*(k%64)+8)`` of beat ``k//64``; bytes past ``length`` in the
      last beat are don't-care. The controller accepts exactly that many beats after ``start``
      (``ready`` is high only then), *whatever their content and even if ``length`` is refused*,
      so the sender (the host DMA) never hangs. The sender must deliver them all.
    - ``cfg``: the config bus (``hdl/bus.py``), one register write per cycle, registered.
    - ``busy``/``done``/``status`` as unit control (``hdl/links.py``): ``busy`` rises the cycle
      after ``start`` and falls with the one-cycle ``done`` pulse (``done`` is seen in the first
      cycle with ``busy`` low); ``status`` (4 bits, :class:`ConfigStatus`) is valid from ``done``
      and held until the next ``start``. ``writes``: config writes issued by the last load.
    - Kernel table for the sequencer: after a successful load, ``kt_count`` is the number of
      64-byte KERNELS entries (0 when there is none or the load failed). While the controller is
      idle, ``kt_data`` is entry ``kt_addr`` one cycle after ``kt_addr`` is presented (a
      synchronous read port on the bitstream buffer; reading while busy returns garbage). The
      buffer is overwritten by the next load.

Prefetch: ``hold`` (sampled with ``start``) makes a load stop after every check has passed,
before the first write, with ``held`` high (``busy`` stays high), until ``release`` is high; a
refused bitstream still ends at once with ``done`` and its status. The section sequencer
(``hdl/sections.py``) loads the next section this way while the current one runs.

Guarantee: a refused bitstream issues **no** write on ``cfg``; writes only start after every
check (including every record's unit and register) has passed.

Timing for an ``L``-byte bitstream (``B = ceil(L/64)`` beats, ``S`` sections, ``R`` config
records), with the sender presenting one beat per cycle:

=================  =======================  ===============================================
phase              cycles                   what
=================  =======================  ===============================================
receive            ``B``                    one beat per cycle into the buffer; CRC-32 over
                                            every beat wholly inside ``[0, L-4)``, 512
                                            bits per cycle
header check       1                        magic, version, lengths (latched from beat 0)
CRC tail           ``2 + ((L-4)%64)/4``     read the last beat, CRC its remaining 32-bit
                                            words (at most 15), compare with the stored
                                            CRC; digest; section-table bounds
section table      ``2 * S``                one read + one check per entry
validate records   ``C + 2``                pass 1: unit id and register of all 8 records
                                            of a buffer beat per cycle (``C`` = beats the
                                            CONFIG section touches, about ``R/8``)
replay records     ``R + 2``                pass 2: one ``cfg`` write per record, in file
                                            order
=================  =======================  ===============================================

``done`` comes 1 cycle after the last phase, so a load takes at most ``B + R + C + 2S + 25``
cycles from ``start``: a 4 KiB bitstream holding 495 records takes 651 cycles (measured under
Verilator by ``tb/test_config_fuzz.py``); the replay pass (the config bus's one write per cycle)
is the floor. A refused bitstream stops at the failing check; within a beat, the first failing
record in file order names the code.

CRC: one 32-bit register updated by one of two parallel XOR networks (512-bit data while
receiving, 32-bit data for the tail), generated from the bit-serial definition by
:func:`crc32_matrix`. ``amaranth.lib.crc.Processor`` has a fixed data width and cannot continue
another engine's CRC, which the word-granular tail needs. Tests check both networks against
``zlib.crc32`` and ``amaranth.lib.crc.catalog.CRC32_ETHERNET``. ``crc_style`` picks one of two
equivalent netlists of the networks (see :func:`crc32_step`): ``"cat"`` (default, for Verilator)
or ``"mask"`` (faster in Amaranth's Python simulator).
"""

from __future__ import annotations

from functools import lru_cache

from amaranth import *
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from sw.bitstream import (CRC_SIZE, HEADER_SIZE, KERNEL_ENTRY_SIZE, MAGIC, MAX_SECTIONS,
                          MIN_LENGTH, RECORD_SIZE, SECTION_ENTRY_SIZE, VERSION, ConfigStatus,
                          SectionType, config_buffer_bytes)

from .bus import config_bus_signature
from .params import RduParams
from .unitmap import kind_ranges

__all__ = ["ConfigController", "ConfigStatus", "crc32_matrix", "crc32_step", "crc32_step_int"]

CRC32_POLY_REFLECTED = 0xEDB88320
LENGTH_BITS = 32


@lru_cache(maxsize=None)
def crc32_matrix(n: int) -> tuple[int, ...]:
    """For reflected CRC-32 consuming ``n`` data bits LSB first: 32 masks over ``Cat(state,
    data)`` (bit ``j < 32`` = state bit ``j``, bit ``32 + i`` = data bit ``i``); new state bit
    ``k`` is the XOR of the bits selected by mask ``k``."""
    state = [1 << j for j in range(32)]
    for i in range(n):
        fb = state[0] ^ (1 << (32 + i))
        state = state[1:] + [0]
        state = [s ^ fb if CRC32_POLY_REFLECTED >> k & 1 else s for k, s in enumerate(state)]
    return tuple(state)


def crc32_step_int(state: int, data: int, n: int) -> int:
    """Software model of one step of the parallel network (for tests)."""
    x = state | data << 32
    return sum((bin(x & m).count("1") & 1) << k for k, m in enumerate(crc32_matrix(n)))


def crc32_step(state: Value, data: Value, style: str = "cat") -> Value:
    """The CRC-32 register after consuming all of ``data`` (LSB first) in one cycle.

    Two netlists of the same XOR network: ``"cat"`` XOR-reduces a concatenation of the selected
    bits; ``"mask"`` XOR-reduces ``Cat(state, data) & mask``. Amaranth folds the AND with a
    constant into a bit scatter over a 544-bit temporary that Verilator turns into 4.9 MB of C++
    (measured; the controller's build took over two minutes on the shared machine), against
    1.2 MB for ``"cat"``, so Verilator builds use ``"cat"``; the simulator unit tests use
    ``"mask"``, which Amaranth's Python simulator runs faster.
    """
    x = Cat(state, data)
    masks = crc32_matrix(len(data))
    if style == "mask":
        return Cat(*[(x & m).xor() for m in masks])
    if style == "cat":
        return Cat(*[Cat(*[x[i] for i in range(len(x)) if m >> i & 1]).xor() for m in masks])
    raise ValueError(f"unknown CRC netlist style {style!r}")


class ConfigController(wiring.Component):
    def __init__(self, params: RduParams, buffer_bytes: int | None = None, *,
                 crc_style: str = "cat"):
        self.params = p = params
        self.crc_style = crc_style
        self.buffer_bytes = bb = buffer_bytes or config_buffer_bytes(p)
        if p.beat_bytes != 64:
            raise ValueError("the config controller assumes 64-byte beats (the bitstream header "
                             "is one beat)")
        if bb % p.beat_bytes or bb < 2 * p.beat_bytes:
            raise ValueError(f"config buffer ({bb} bytes) must be a whole number of beats, >= 2")
        self.depth = bb // p.beat_bytes
        self.ranges = kind_ranges(p)
        super().__init__({
            "start": In(1),
            "length": In(LENGTH_BITS),
            "busy": Out(1),
            "done": Out(1),
            "status": Out(4),
            "writes": Out(16),
            "data": In(stream.Signature(p.beat_bits)),
            "cfg": Out(config_bus_signature()),
            "kt_addr": In(8),
            "kt_data": Out(p.beat_bits),
            "kt_count": Out(16),
            "hold": In(1),
            "release": In(1),
            "held": Out(1),
        })

    def elaborate(self, platform):
        p = self.params
        m = Module()
        depth, addr_bits = self.depth, max(1, (self.depth - 1).bit_length())
        m.submodules.buf = buf = memory.Memory(shape=p.beat_bits, depth=depth, init=[])
        wr = buf.write_port()
        rd = buf.read_port(domain="sync", transparent_for=())

        L = Signal(LENGTH_BITS)                 # bytes, as given by the host
        beats_left = Signal(LENGTH_BITS - 5)
        beat = Signal(LENGTH_BITS - 5)         # index of the beat being received
        too_large = Signal()
        crc = Signal(32)
        crc_beats = Signal(LENGTH_BITS - 6)    # beats wholly inside [0, L-4)
        L_m4 = Signal(LENGTH_BITS)
        m.d.comb += L_m4.eq(L - CRC_SIZE)

        # Header fields latched from beat 0.
        magic_ok = Signal()
        version = Signal(16)
        header_size = Signal(16)
        total = Signal(32)
        n_sections = Signal(16)
        digest_ok = Signal()
        table_end = Signal(LENGTH_BITS + 1)
        m.d.comb += table_end.eq(HEADER_SIZE + n_sections * SECTION_ENTRY_SIZE)

        tail = Signal(p.beat_bits)
        tail_words = Signal(4)
        sec_i = Signal(4)
        seen = Signal(8)
        cfg_off = Signal(LENGTH_BITS)
        cfg_len = Signal(LENGTH_BITS)
        kt_off = Signal(LENGTH_BITS)
        kt_len = Signal(LENGTH_BITS)
        ptr = Signal(LENGTH_BITS)
        rec_left = Signal(LENGTH_BITS - 3)
        p_valid = Signal()
        p_slot = Signal(3)
        vbeat = Signal(LENGTH_BITS - 6)
        v_left = Signal(LENGTH_BITS - 6)
        pv_valid = Signal()
        pv_beat = Signal(LENGTH_BITS - 6)
        cfg_end = Signal(LENGTH_BITS + 1)
        m.d.comb += cfg_end.eq(cfg_off + cfg_len)
        kt_base = Signal(addr_bits)
        kt_count = Signal(16)
        status = Signal(4)
        writes = Signal(16)
        hold = Signal()

        m.d.comb += [self.status.eq(status), self.writes.eq(writes), self.kt_count.eq(kt_count),
                     self.kt_data.eq(rd.data)]
        # Read port address: the FSM overrides it; idle, the sequencer's kernel-table address.
        m.d.comb += rd.addr.eq(kt_base + self.kt_addr)
        m.d.sync += [self.cfg.we.eq(0), self.done.eq(0)]

        digest_const = int.from_bytes(p.digest(), "little")
        magic_const = int.from_bytes(MAGIC, "little")
        n_units = sum(cnt for _, _, cnt, _ in self.ranges)

        def reg_limit(unit):
            limit = C(0, 9)
            for _, base, cnt, nregs in self.ranges:
                limit = Mux((unit >= base) & (unit < base + cnt), nregs, limit)
            return limit

        def fail(code):
            m.d.sync += [status.eq(code), self.done.eq(1)]
            m.next = "IDLE"

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    nbeats = (self.length + (p.beat_bytes - 1)) >> 6
                    m.d.sync += [
                        L.eq(self.length), beats_left.eq(nbeats), beat.eq(0),
                        too_large.eq(self.length > self.buffer_bytes),
                        crc.eq(0xFFFFFFFF),
                        crc_beats.eq(Mux(self.length >= CRC_SIZE,
                                         (self.length - CRC_SIZE) >> 6, 0)),
                        status.eq(ConfigStatus.OK), writes.eq(0), kt_count.eq(0),
                        seen.eq(0), cfg_off.eq(0), cfg_len.eq(0), kt_off.eq(0), kt_len.eq(0),
                        magic_ok.eq(0), hold.eq(self.hold),
                    ]
                    with m.If(nbeats == 0):
                        m.next = "CHECK"
                    with m.Else():
                        m.next = "RECV"

            with m.State("RECV"):
                m.d.comb += self.data.ready.eq(1)
                with m.If(self.data.valid):
                    d = self.data.payload
                    m.d.comb += [wr.addr.eq(beat), wr.data.eq(d), wr.en.eq(~too_large)]
                    with m.If(beat < crc_beats):
                        m.d.sync += crc.eq(crc32_step(crc, d, self.crc_style))
                    with m.If(beat == 0):
                        m.d.sync += [
                            magic_ok.eq(d[0:32] == magic_const),
                            version.eq(d[32:48]), header_size.eq(d[48:64]),
                            total.eq(d[64:96]), n_sections.eq(d[128:144]),
                            digest_ok.eq(d[256:512] == digest_const),
                        ]
                    m.d.sync += [beat.eq(beat + 1), beats_left.eq(beats_left - 1)]
                    with m.If(beats_left == 1):
                        m.next = "CHECK"

            with m.State("CHECK"):
                m.d.comb += rd.addr.eq(L_m4 >> 6)
                with m.If(too_large):
                    fail(ConfigStatus.TOO_LARGE)
                with m.Elif(L < MIN_LENGTH):
                    fail(ConfigStatus.BAD_LENGTH)
                with m.Elif(~magic_ok):
                    fail(ConfigStatus.BAD_MAGIC)
                with m.Elif(version != VERSION):
                    fail(ConfigStatus.BAD_VERSION)
                with m.Elif((header_size != HEADER_SIZE) | (total != L) | (L[0:2] != 0)):
                    fail(ConfigStatus.BAD_LENGTH)
                with m.Else():
                    m.next = "TAIL_LOAD"

            with m.State("TAIL_LOAD"):
                m.d.sync += [tail.eq(rd.data), tail_words.eq(L_m4[2:6])]
                m.next = "TAIL"

            with m.State("TAIL"):
                with m.If(tail_words != 0):
                    m.d.sync += [crc.eq(crc32_step(crc, tail[0:32], self.crc_style)), tail.eq(tail >> 32),
                                 tail_words.eq(tail_words - 1)]
                with m.Elif((crc ^ 0xFFFFFFFF) != tail[0:32]):
                    fail(ConfigStatus.BAD_CRC)
                with m.Elif(~digest_ok):
                    fail(ConfigStatus.BAD_GEOMETRY)
                with m.Elif((n_sections > MAX_SECTIONS) | (table_end > L_m4)):
                    fail(ConfigStatus.BAD_SECTION)
                with m.Elif(n_sections == 0):
                    m.next = "VAL_INIT"
                with m.Else():
                    m.d.sync += sec_i.eq(0)
                    m.next = "SEC_ADDR"

            with m.State("SEC_ADDR"):
                m.d.comb += rd.addr.eq(1 + (sec_i >> 2))
                m.next = "SEC_CHECK"

            with m.State("SEC_CHECK"):
                e = rd.data.word_select(sec_i[0:2], 8 * SECTION_ENTRY_SIZE)
                typ, off, ln = e[0:32], e[32:64], e[64:96]
                bad = Signal()
                m.d.comb += bad.eq(
                    (typ == 0) | (typ > max(SectionType)) | seen.bit_select(typ[0:3], 1)
                    | (off[0:3] != 0) | (off < table_end)
                    | ((off + ln)[:LENGTH_BITS + 1] > L_m4)
                    | ((typ == SectionType.CONFIG) & (ln[0:3] != 0))
                    | ((typ == SectionType.KERNELS) & ((off[0:6] != 0) | (ln[0:6] != 0))))
                with m.If(bad):
                    fail(ConfigStatus.BAD_SECTION)
                with m.Else():
                    m.d.sync += [seen.eq(seen | (C(1, 8) << typ[0:3])), sec_i.eq(sec_i + 1)]
                    with m.If(typ == SectionType.CONFIG):
                        m.d.sync += [cfg_off.eq(off), cfg_len.eq(ln)]
                    with m.If(typ == SectionType.KERNELS):
                        m.d.sync += [kt_off.eq(off), kt_len.eq(ln)]
                    with m.If(sec_i + 1 == n_sections):
                        m.next = "VAL_INIT"
                    with m.Else():
                        m.next = "SEC_ADDR"

            with m.State("VAL_INIT"):
                first, last = cfg_off >> 6, (cfg_off + cfg_len - 1) >> 6
                m.d.sync += [vbeat.eq(first), pv_valid.eq(0),
                             v_left.eq(Mux(cfg_len == 0, 0, last - first + 1))]
                m.next = "VALIDATE"

            with m.State("VALIDATE"):
                # Pass 1: one buffer beat (8 record slots) per cycle; read issued this cycle,
                # checked the next. The lowest failing record of the beat names the code.
                with m.If(v_left != 0):
                    m.d.comb += rd.addr.eq(vbeat)
                    m.d.sync += [vbeat.eq(vbeat + 1), v_left.eq(v_left - 1), pv_valid.eq(1),
                                 pv_beat.eq(vbeat)]
                with m.Else():
                    m.d.sync += pv_valid.eq(0)
                code = Signal(4)
                any_bad = Signal()
                for slot in reversed(range(8)):
                    rec = rd.data.word_select(slot, 8 * RECORD_SIZE)
                    byte = Cat(C(RECORD_SIZE * slot, 6), pv_beat)
                    inside = (byte >= cfg_off) & (byte < cfg_end)
                    bad_unit = rec[0:8] >= n_units
                    bad_reg = rec[8:16] >= reg_limit(rec[0:8])
                    with m.If(inside & (bad_unit | bad_reg)):
                        m.d.comb += [any_bad.eq(1), code.eq(Mux(bad_unit,
                                                                ConfigStatus.UNKNOWN_UNIT,
                                                                ConfigStatus.REG_OUT_OF_RANGE))]
                with m.If(pv_valid & any_bad):
                    fail(code)
                with m.Elif((v_left == 0) & ~pv_valid & hold):
                    m.next = "HELD"
                with m.Elif((v_left == 0) & ~pv_valid):
                    m.next = "REC_INIT"

            with m.State("HELD"):
                # A load started with ``hold`` waits here, checked, until ``release``: the
                # section sequencer prefetches the next section while the current one runs, and
                # no register may change under a running kernel.
                m.d.comb += self.held.eq(1)
                with m.If(self.release):
                    m.next = "REC_INIT"

            with m.State("REC_INIT"):
                m.d.sync += [ptr.eq(cfg_off), rec_left.eq(cfg_len >> 3), p_valid.eq(0)]
                m.next = "REC"

            with m.State("REC"):
                # Pass 2 (replay): one record per cycle; read issued this cycle, written the next.
                with m.If(rec_left != 0):
                    m.d.comb += rd.addr.eq(ptr >> 6)
                    m.d.sync += [ptr.eq(ptr + RECORD_SIZE), rec_left.eq(rec_left - 1),
                                 p_valid.eq(1), p_slot.eq(ptr[3:6])]
                with m.Else():
                    m.d.sync += p_valid.eq(0)
                rec = rd.data.word_select(p_slot, 8 * RECORD_SIZE)
                with m.If(p_valid):
                    m.d.sync += [self.cfg.we.eq(1), self.cfg.unit.eq(rec[0:8]),
                                 self.cfg.addr.eq(rec[8:16]), self.cfg.data.eq(rec[32:64]),
                                 writes.eq(writes + 1)]
                with m.If((rec_left == 0) & ~p_valid):
                    m.d.sync += [self.done.eq(1), kt_base.eq(kt_off >> 6),
                                 kt_count.eq(kt_len >> 6)]
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m

"""Host driver: the runtime's view of the simulated chip, over cocotb.

Runs inside a cocotb test (the simulator process). It talks to the chip only through its host
ports — the CSR bus and the wide DMA streams — exactly as a PCIe driver would, and never pokes
internal signals.

Speed: the driver touches the simulation only while it moves data or registers. While the chip
computes, :meth:`ChipDriver.wait_until` sleeps on a ``RisingEdge`` of a done/idle signal with a
cycle-limited watchdog, so Verilator runs free between events.

Handshake sampling: stream transfers are decided from values read in the ``ReadOnly`` phase
before the clock edge (the values the RTL sees at that edge), which is race-free on every
simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdl.host import CHIP_ID, Csr, EXT_BASE, counter_names
from hdl.params import RduParams
from hdl.unitmap import unit_map

__all__ = ["ChipDriver", "ChipError", "HangError", "BitstreamRejected", "ProgramError"]


class ChipError(RuntimeError):
    """The chip latched an error code (CSR ERROR)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class HangError(RuntimeError):
    """A wait exceeded its cycle budget; the message names the unit that is stuck."""


async def hang_error(what: str, cycles: int, describe=None) -> HangError:
    """The watchdog's :class:`HangError` for ``what`` after ``cycles``; ``describe()`` (sync or
    async) supplies the stuck unit's state for the message."""
    state = ""
    if describe is not None:
        state = describe()
        if hasattr(state, "__await__"):
            state = await state
        state = f": {state}"
    return HangError(f"watchdog: {what} not done after {cycles} cycles{state}")


class BitstreamRejected(ChipError):
    """The config controller refused a bitstream; ``status`` is its ConfigStatus."""

    def __init__(self, status, message: str):
        super().__init__(0x30 | int(status), message)
        self.status = status


def describe_error(code: int, p: RduParams) -> str:
    from hdl.dma import DmaError
    from hdl.host import ErrorCode
    cls = code & 0xF0
    if cls == ErrorCode.DMA:
        return f"DMA refused the transfer: {DmaError(code & 0xF).name}"
    if cls == ErrorCode.UNIT:
        from hdl.unitmap import unit_by_id
        uid, st = code >> 8, code & 0xF
        u = unit_by_id(p, uid)
        name = u.name if u is not None else f"unit {uid}"
        meaning = ""
        if u is not None and u.kind == "agcu":
            from hdl.agcu import AgcuStatus
            meaning = f" ({AgcuStatus(st).name})" if st in AgcuStatus._value2member_map_ else ""
        return f"{name} reported status {st}{meaning}"
    if cls == ErrorCode.CONFIG:
        from sw.bitstream import ConfigStatus
        return f"config controller refused the bitstream: {ConfigStatus(code & 0xF).name}"
    if cls == ErrorCode.PROGRAM:
        from hdl.sections import SectionError
        what = {SectionError.BAD_RANGE: "the program's sections lie outside the section table "
                                        "(or there are none)",
                SectionError.NO_KERNEL: "a section's bitstream holds no kernel-table entry",
                SectionError.BAD_ENTRY: "a section-table entry is empty or runs past the end "
                                        "of HBM"}
        e = code & 0xF
        return (f"section sequencer refused the program: "
                f"{what.get(e, f'error {e}')}")
    return f"chip error code 0x{code:04x}"


class ProgramError(ChipError):
    """A program of sections stopped on an error; ``entry``/``iteration`` name the section."""

    def __init__(self, code: int, message: str, entry: int, iteration: int):
        super().__init__(code, message)
        self.entry, self.iteration = entry, iteration


@dataclass
class _Triggers:
    RisingEdge: object
    ReadOnly: object
    Timer: object
    First: object
    ClockCycles: object


class ChipDriver:
    """Drive a chip toplevel whose ports are ``csr__*``, ``h2c__*`` and ``c2h__*``."""

    def __init__(self, dut, params: RduParams, clock_period_ns: int = 10):
        import cocotb.triggers as t
        self.dut, self.p, self.period_ns = dut, params, clock_period_ns
        self.t = _Triggers(t.RisingEdge, t.ReadOnly, t.Timer, t.First, t.ClockCycles)
        self.counter_names = counter_names(params)
        from hdl.unitmap import unit_map
        self.n_mask_words = (len(unit_map(params)) + 31) // 32
        # Run-control registers as last written (cleared by start()): a launch writes only what
        # changed, as a host would, so a call costs RUN_ITER + RUN_START when nothing else did.
        self._run_regs: dict[int, int] = {}
        self._unit_deps: dict[int, int] = {}

    # ---- bring-up ---------------------------------------------------------------------------
    async def start(self, reset_cycles: int = 4):
        from cocotb.clock import Clock
        dut = self.dut
        Clock(dut.clk, self.period_ns, unit="ns", impl="gpi").start()
        for name in ("csr__w_en", "csr__r_en", "h2c__valid", "c2h__ready"):
            getattr(dut, name).value = 0
        dut.rst.value = 1
        self._run_regs.clear()
        self._unit_deps.clear()
        await self.t.ClockCycles(dut.clk, reset_cycles)
        dut.rst.value = 0
        await self.t.RisingEdge(dut.clk)
        ident = await self.csr_read(Csr.ID)
        if ident != CHIP_ID:
            raise ChipError(0, f"chip ID reads 0x{ident:08x}, expected 0x{CHIP_ID:08x}")
        digest = await self.csr_read(Csr.PARAMS_HASH)
        want = int.from_bytes(self.p.digest()[:4], "big")
        if digest != want:
            raise ChipError(0, f"chip was built for other RduParams (hash 0x{digest:08x}, "
                               f"driver expects 0x{want:08x})")

    # ---- CSR --------------------------------------------------------------------------------
    async def csr_write(self, addr: int, value: int):
        dut = self.dut
        dut.csr__addr.value = int(addr)
        dut.csr__w_data.value = int(value) & 0xFFFFFFFF
        dut.csr__w_en.value = 1
        await self.t.RisingEdge(dut.clk)
        dut.csr__w_en.value = 0

    async def csr_read(self, addr: int) -> int:
        dut = self.dut
        dut.csr__addr.value = int(addr)
        dut.csr__r_en.value = 1
        await self.t.RisingEdge(dut.clk)
        dut.csr__r_en.value = 0
        await self.t.ReadOnly()
        value = int(dut.csr__r_data.value)
        await self.t.RisingEdge(dut.clk)
        return value

    async def read_counters(self) -> dict:
        out = {}
        for k, name in enumerate(self.counter_names):
            lo = await self.csr_read(Csr.COUNTER_BASE + 2 * k)
            hi = await self.csr_read(Csr.COUNTER_BASE + 2 * k + 1)
            out[name] = (hi << 32) | lo
        return out

    async def clear_counters(self):
        await self.csr_write(Csr.CONTROL, 1)

    async def check_error(self):
        code = await self.csr_read(Csr.ERROR)
        if code:
            raise ChipError(code, describe_error(code, self.p))

    # ---- DMA --------------------------------------------------------------------------------
    def _beats_of(self, data: bytes) -> list[int]:
        bb = self.p.beat_bytes
        if len(data) % bb:
            data = data + bytes(bb - len(data) % bb)
        return [int.from_bytes(data[i:i + bb], "little") for i in range(0, len(data), bb)]

    def _check_range(self, addr: int, nbytes: int):
        bb = self.p.beat_bytes
        if addr % bb:
            raise ValueError(f"HBM address 0x{addr:x} is not aligned to a {bb}-byte beat")
        if addr < 0 or addr + nbytes > self.p.hbm_bytes:
            raise ValueError(f"HBM range 0x{addr:x}+{nbytes} lies outside the "
                             f"{self.p.hbm_bytes}-byte HBM")

    async def dma_write(self, addr: int, data: bytes, watchdog_cycles: int | None = None):
        """Write ``data`` to HBM at byte address ``addr`` (beat-aligned; padded with zeros)."""
        self._check_range(addr, len(data))
        beats = self._beats_of(bytes(data))
        await self.csr_write(Csr.DMA_ADDR, addr // self.p.beat_bytes)
        await self.csr_write(Csr.DMA_BEATS, len(beats))
        await self.csr_write(Csr.DMA_CTRL, 0b11)
        limit = watchdog_cycles or 64 * len(beats) + 10_000
        await self._push_h2c(beats, limit, "DMA host->HBM (HBM not accepting write data)")
        await self._wait_dma_idle(limit)

    async def dma_read(self, addr: int, nbytes: int, watchdog_cycles: int | None = None) -> bytes:
        """Read ``nbytes`` from HBM at byte address ``addr`` (beat-aligned)."""
        self._check_range(addr, nbytes)
        bb = self.p.beat_bytes
        n = -(-nbytes // bb)
        dut = self.dut
        await self.csr_write(Csr.DMA_ADDR, addr // bb)
        await self.csr_write(Csr.DMA_BEATS, n)
        await self.csr_write(Csr.DMA_CTRL, 0b01)
        limit = watchdog_cycles or 64 * n + 10_000
        out = []
        cycles = 0
        dut.c2h__ready.value = 1
        while len(out) < n:
            await self.t.ReadOnly()
            if dut.c2h__valid.value:
                out.append(int(dut.c2h__payload.value))
            await self.t.RisingEdge(dut.clk)
            cycles += 1
            if cycles > limit:
                dut.c2h__ready.value = 0
                raise HangError(f"DMA HBM->host stuck after {len(out)}/{n} beats "
                                f"({cycles} cycles): no read data from HBM")
        dut.c2h__ready.value = 0
        await self._wait_dma_idle(limit)
        return b"".join(v.to_bytes(bb, "little") for v in out)[:nbytes]

    async def _wait_dma_idle(self, limit: int):
        for _ in range(limit):
            st = await self.csr_read(Csr.DMA_STATUS)
            if not st & 1:
                break
        else:
            raise HangError("DMA engine stays busy after its data moved")
        await self.check_error()

    # ---- configuration and runs -------------------------------------------------------------
    async def _push_h2c(self, beats: list[int], limit: int, what: str):
        dut = self.dut
        i = cycles = 0
        dut.h2c__valid.value = 1
        while i < len(beats):
            dut.h2c__payload.value = beats[i]
            await self.t.ReadOnly()
            accepted = bool(dut.h2c__ready.value)
            await self.t.RisingEdge(dut.clk)
            i += accepted
            cycles += 1
            if cycles > limit:
                dut.h2c__valid.value = 0
                raise HangError(f"{what} stuck after {i}/{len(beats)} beats ({cycles} cycles)")
        dut.h2c__valid.value = 0

    async def load_bitstream(self, data: bytes, watchdog_cycles: int | None = None) -> int:
        """Send a bitstream to the config controller; return the number of register writes.

        Raises :class:`BitstreamRejected` with the controller's status when it refuses it (the
        chip is then left exactly as it was).
        """
        from sw.bitstream import ConfigStatus
        beats = self._beats_of(bytes(data))
        limit = watchdog_cycles or 8 * len(beats) + 20_000
        await self.csr_write(Csr.CONFIG_LENGTH, len(data))
        await self.csr_write(Csr.CONFIG_CTRL, 0b10)          # route h2c to the controller
        await self.csr_write(Csr.CONFIG_CTRL, 0b11)          # ... and start it
        try:
            await self._push_h2c(beats, limit, "bitstream transfer to the config controller")
            for _ in range(limit):
                st = await self.csr_read(Csr.CONFIG_STATUS)
                if not st & 1:
                    break
            else:
                raise HangError("watchdog: config controller still busy after the bitstream")
        finally:
            await self.csr_write(Csr.CONFIG_CTRL, 0b00)
        status = ConfigStatus((st >> 4) & 0xF)
        if status != ConfigStatus.OK:
            await self.csr_write(Csr.ERROR, 0)               # reported here, as an exception
            raise BitstreamRejected(status, f"config controller refused the bitstream: "
                                            f"{status.name}")
        return st >> 16

    async def _write_run_reg(self, addr: int, value: int):
        if self._run_regs.get(addr) != value:
            await self.csr_write(addr, value)
            self._run_regs[addr] = value

    async def run_units(self, unit_ids, *, iteration: int = 0, count: int = 1, deps=None,
                        cycles: int, what: str = "kernel"):
        """Launch one kernel call and sleep until it has finished: every unit in ``unit_ids``
        runs iterations ``iteration .. iteration + count - 1`` under the looping sequencer.
        ``deps``: ``{unit: DEP word}`` (:func:`hdl.sequencer.dep_word`); every other unit of
        the call gets no dependence."""
        ids = sorted(set(int(u) for u in unit_ids))
        deps = {int(u): int(d) for u, d in (deps or {}).items()}
        unknown = set(deps) - set(ids)
        if unknown:
            raise ValueError(f"dependences given for units {sorted(unknown)} not in the call")
        words = {}
        for u in ids:
            words[u // 32] = words.get(u // 32, 0) | (1 << (u % 32))
        for k in range(self.n_mask_words):
            await self._write_run_reg(Csr.RUN_MASK0 + k, words.get(k, 0))
        for u in ids:
            if self._unit_deps.get(u, 0) != deps.get(u, 0):
                await self.csr_write(Csr.UNIT_SEL, u)
                await self.csr_write(Csr.UNIT_DEP, deps.get(u, 0))
                self._unit_deps[u] = deps.get(u, 0)
        await self._write_run_reg(Csr.RUN_ITER, iteration)
        await self._write_run_reg(Csr.RUN_COUNT, count)
        await self.csr_write(Csr.RUN_START, 1)

        async def stuck():
            from hdl.unitmap import unit_by_id
            out = []
            for u in ids:
                await self.csr_write(Csr.UNIT_SEL, u)
                st = await self.csr_read(Csr.UNIT_STATUS)
                if st & 0x10:
                    uinfo = unit_by_id(self.p, u)
                    out.append(f"{uinfo.name if uinfo else u} busy (status {st & 0xF})")
            return "; ".join(out) or "no unit busy, but not all reported done"
        await self.wait_until(self.dut.run_done, cycles=cycles, what=what, describe=stuck)
        await self.check_error()

    # ---- programs of sections (hdl/sections.py) ------------------------------------------
    async def write_program_table(self, entries, first: int = 0):
        """Write section-table entries ``first, first + 1, ...``: ``entries`` is a list of
        (HBM byte address of a bitstream, its length in bytes)."""
        entries = [(int(a), int(n)) for a, n in entries]
        if not 0 <= first or first + len(entries) > self.p.program_entries:
            raise ValueError(f"section-table entries {first}..{first + len(entries) - 1} do not "
                             f"fit the chip's {self.p.program_entries}-entry table")
        for addr, n in entries:
            self._check_range(addr, n)
            if n <= 0:
                raise ValueError(f"section at 0x{addr:x} has length {n}")
        await self.csr_write(Csr.PROG_ENTRY, first)
        for addr, n in entries:
            await self.csr_write(Csr.PROG_ENTRY_ADDR, addr // self.p.beat_bytes)
            await self.csr_write(Csr.PROG_ENTRY_LEN, n)

    async def program_status(self) -> dict:
        from hdl.sections import Phase, SectionError
        st = await self.csr_read(Csr.PROG_STATUS)
        return {"busy": bool(st & 1), "phase": Phase((st >> 1) & 7).name,
                "error": SectionError((st >> 4) & 7).name, "entry": (st >> 8) & 0xFF,
                "iteration": st >> 16}

    async def run_program(self, first: int, n_sections: int, *, iteration: int = 0,
                          count: int = 1, cycles: int, what: str = "program",
                          names=None):
        """Run sections ``first .. first + n_sections - 1`` for iterations ``iteration ..
        iteration + count - 1`` on the chip's section sequencer and sleep until it has finished.
        ``names``: optional labels of the table entries, for messages. Raises
        :class:`HangError` naming the section, iteration, phase and busy units after ``cycles``,
        and :class:`ProgramError` when the program stopped on an error."""
        def label(e):
            if names is not None and 0 <= e - first < len(names):
                return f"section {e} ({names[e - first]})"
            return f"section {e}"
        await self._write_run_reg(Csr.RUN_ITER, iteration)
        await self._write_run_reg(Csr.RUN_COUNT, count)
        await self.csr_write(Csr.PROG_FIRST, first)
        await self.csr_write(Csr.PROG_SECTIONS, n_sections)
        await self.csr_write(Csr.PROG_START, 1)

        async def stuck():
            from hdl.unitmap import unit_by_id
            st = await self.program_status()
            busy = []
            for k in range((len(unit_map(self.p)) + 31) // 32):
                word = await self.csr_read(Csr.RUN_BUSY0 + k)
                busy += [32 * k + i for i in range(32) if word >> i & 1]
            units = []
            for u in busy:
                await self.csr_write(Csr.UNIT_SEL, u)
                ust = await self.csr_read(Csr.UNIT_STATUS)
                uinfo = unit_by_id(self.p, u)
                units.append(f"{uinfo.name if uinfo else u} busy (status {ust & 0xF})")
            return (f"{label(st['entry'])}, iteration {st['iteration']}, phase {st['phase']}: "
                    + ("; ".join(units) or "no unit busy"))
        await self.wait_until(self.dut.run_done, cycles=cycles, what=what, describe=stuck)
        code = await self.csr_read(Csr.ERROR)
        if code:
            st = await self.program_status()
            raise ProgramError(code, f"{what}: {label(st['entry'])}, iteration "
                                     f"{st['iteration']}: {describe_error(code, self.p)}",
                               st["entry"], st["iteration"])

    # ---- waiting ----------------------------------------------------------------------------
    async def wait_until(self, signal, *, cycles: int, what: str, describe=None):
        """Sleep until ``signal`` is high (checked at rising edges of ``signal`` and once now).

        Raises :class:`HangError` after ``cycles`` clock cycles; ``describe()`` (sync or async)
        supplies the stuck unit's state for the message.
        """
        await self.t.ReadOnly()
        if signal.value:
            await self.t.RisingEdge(self.dut.clk)
            return
        timeout = self.t.Timer(cycles * self.period_ns, unit="ns")
        fired = await self.t.First(self.t.RisingEdge(signal), timeout)
        if fired is timeout:
            raise await hang_error(what, cycles, describe)
        await self.t.RisingEdge(self.dut.clk)

    async def ext_read(self, offset: int) -> int:
        """Read a register of the chip top's extension window (EXT_BASE + offset)."""
        return await self.csr_read(EXT_BASE + offset)

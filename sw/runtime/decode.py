"""The decode loop on the chip: the host side of a token-by-token greedy decode.

Runs inside the cocotb process, on a :class:`sw.runtime.driver.ChipDriver`. For every token
(prompt tokens first, then generated ones) it makes the launches of
:meth:`DecodeProgram.token_launches`, then reads the next token back from HBM (one beat; the
host needs it to print text and to feed the next step).

Modes (``program.mode``):

``op``      every launch is a host call (:class:`sw.compiler.program.Call`): load the kernel's
            bitstream into the config controller (reconfigure before every kernel), launch
            its units at the call's iteration, sleep until ``run_done``. 89 launches per token
            on the default model.
``layer``   the embedding is a host call; then one launch of the on-chip *layer program* (the
            17 per-layer kernels as sections, :class:`sw.compiler.program.ProgramLaunch`) per
            layer at iteration = layer, then the head program (final norm, LM head, argmax).
``looped``  the embedding, one launch of the layer program for iterations ``0..L-1``, the head
            program: 3 launches per token.

A program launch: the host DMAs the launch's ``updates`` (the position-dependent sections'
bitstreams of this position, into their HBM slots; a slot that already holds those bytes is
not rewritten), rewrites the section-table entries whose (address, length) changed, then
``drv.run_program`` runs the sections on the chip's section sequencer (it loads each
bitstream from HBM itself) and sleeps until done. :meth:`load` writes the HBM image (which
holds every section's bitstream, position 0's for the position-dependent ones) and the section
table.

Checking (``check=True``, op mode only): after every call whose output is a golden-trace
tensor, the runner reads that tensor back and compares it with the golden decoder's own trace
of the same step (bit for bit), so a divergence names the first kernel (and layer) that went
wrong, not only a wrong token. It costs DMA reads (simulated cycles), so measurements run
without it. The fused modes run a layer's kernels with no host in between, so there is
nothing to read back per kernel: asking for it there is a ``ValueError``. The tokens and the
last step's logits are always compared, in every mode.

Launch overhead: the host's launch latency, ``launch_overhead_cycles`` per *host* launch (an op
call or a program launch), the same in every mode. The host launches synchronously (after the
previous launch's done), so the chip is idle meanwhile; the runner charges it per launch
instead of simulating idle cycles.

Timing per token (``step``'s figures, simulated cycles): ``counters`` (the chip's counter deltas
over the step: ``sw/runtime/sim.py`` builds the attribution from them) and ``phases`` from the
host's clock:

- ``config``: host bitstream loads (op calls, the embedding), the host's DMA of section updates
  and table writes (``config_host`` holds these), plus the chip's own section loads inside
  programs (``config_chip``: the ``config_busy_cycles`` counter read before the first program
  launch and after the last);
- ``run``: the calls' and programs' time minus ``config_chip``;
- ``readback``: reading the next token; ``launch``: the charged launch overhead.

Host prefill (:meth:`warm_start`): the golden model runs the prompt on the host and its KV
cache is DMA'd into HBM in the chip's layout (:func:`kv_image`), so the chip decodes from
position ``len(prompt)`` on, bit-exactly (benchmarks at long positions without simulating the
prompt).
"""

from __future__ import annotations

import time

import numpy as np

from cocotb.utils import get_sim_time

from sw.golden import GoldenDecoder

__all__ = ["DecodeRunner", "DecodeMismatch", "kv_image", "CONFIG_CYCLES_PER_SECTION"]

# Watchdog allowance for the chip to load one section's bitstream from HBM (~150 cycles of
# HBM latency + a beat per 64 B + a cycle per config record: ~600 cycles for 10 KB).
CONFIG_CYCLES_PER_SECTION = 3000


class DecodeMismatch(AssertionError):
    """A kernel's output differs from the golden decoder's (first difference named)."""


def _elements(data: bytes, bits: int, n: int) -> np.ndarray:
    return np.frombuffer(data, {8: "<i1", 16: "<i2", 32: "<i4"}[bits])[:n].astype(np.int64)


def kv_image(program, k_cache: np.ndarray, v_cache: np.ndarray, n_pos: int) -> bytes:
    """The bytes of the whole KV-cache region of ``program`` (``L * kv_layer_stride`` bytes
    from ``program.kv_base``) holding positions ``0..n_pos-1`` of the golden decoder's caches
    (``k_cache``/``v_cache``: int8 ``[layer, kv_head, position, d]``), zeros elsewhere.

    The layout is the one the KV-append kernel writes (``sw/kernels/rope.py``,
    ``build_kv_append``): layer ``l`` at ``kv_base + l * kv_layer_stride``; K row ``t`` at
    ``t * kv_row_bytes`` (``[kv_head][d]`` int8, zero-padded to ``kv_row_bytes``), the V cache
    ``roundup(context * kv_row_bytes, beat)`` bytes after the K cache."""
    c = program.qm.config
    if not 0 <= n_pos <= program.context:
        raise ValueError(f"{n_pos} positions do not fit the compiled context "
                         f"({program.context})")
    bb = program.params.beat_bytes
    row = program.kv_row_bytes
    kv_dim = c.n_kv_heads * c.head_dim
    cache = -(-program.context * row // bb) * bb
    img = np.zeros((c.n_layers, program.kv_layer_stride), np.uint8)
    for l in range(c.n_layers):
        for half, src in ((0, k_cache), (cache, v_cache)):
            rows = np.ascontiguousarray(src[l, :, :n_pos, :].transpose(1, 0, 2)) \
                .reshape(n_pos, kv_dim).view(np.uint8)
            block = img[l, half:half + program.context * row].reshape(program.context, row)
            block[:n_pos, :kv_dim] = rows
    return img.tobytes()


class DecodeRunner:
    def __init__(self, drv, program, *, launch_overhead_cycles: int = 0, check: bool = False,
                 watchdog_cycles: int | None = None, log=None):
        if check and program.mode != "op":
            raise ValueError(f"check (per-kernel trace compare) needs op mode: mode "
                             f"{program.mode!r} runs a layer's kernels as an on-chip program, "
                             f"with no host step in between to read them back")
        self.drv, self.prog = drv, program
        self.launch_overhead_cycles = int(launch_overhead_cycles)
        self.check = check
        # caps every kernel call's and every program launch's budget (tests)
        self.watchdog_cycles = watchdog_cycles
        self.log = log or (lambda msg: None)
        self._trace: dict = {}
        self.golden = GoldenDecoder(program.qm, trace=self._record)
        self._table: dict = {}                    # section-table entry -> (addr, length)
        self._slots: dict = {}                    # slot address -> bitstream it holds
        self.last_golden_logits = None

    def _record(self, name, layer, arr):
        self._trace.setdefault((name, layer), []).append(np.array(arr).reshape(-1))

    def _cycles(self) -> float:
        return get_sim_time("ns") / self.drv.period_ns

    async def load(self) -> dict:
        """DMA the program's HBM image into the chip; in layer/looped mode also write the
        section table."""
        c0, w0 = self._cycles(), time.monotonic()
        nbytes = 0
        for addr, data in self.prog.images():
            await self.drv.dma_write(addr, data)
            nbytes += len(data)
        if self.prog.sections:
            table = self.prog.table_entries()
            await self.drv.write_program_table(table, first=0)
            self._table = dict(enumerate(table))
            self._slots = {s.slot: self.prog.section_bitstream(s.entry, 0)
                           for s in self.prog.sections}
        return {"bytes": nbytes, "cycles": self._cycles() - c0,
                "wall_seconds": time.monotonic() - w0}

    async def warm_start(self, prompt_ids) -> np.ndarray | None:
        """Host prefill: run the golden model over ``prompt_ids`` (positions 0..n-1) and DMA
        its KV cache into HBM in the chip's layout, so that the next :meth:`step` is at
        position ``n`` and bit-exact with a decode that ran the prompt on the chip. Call it
        after :meth:`load`, before any step. Returns the golden logits of the last prompt
        token (None for an empty prompt)."""
        if self.golden.pos != 0:
            raise ValueError(f"warm_start must come before the first step (the golden model "
                             f"is at position {self.golden.pos})")
        ids = [int(t) for t in prompt_ids]
        if len(ids) >= self.prog.context:
            raise ValueError(f"a prompt of {len(ids)} tokens leaves no position to decode in "
                             f"the compiled context ({self.prog.context})")
        logits = None
        for t in ids:
            logits = self.golden.step(t)
        self._trace.clear()
        if ids:
            img = kv_image(self.prog, self.golden.k_cache, self.golden.v_cache, len(ids))
            await self.drv.dma_write(self.prog.kv_base, img)
        self.last_golden_logits = logits
        return logits

    async def _config_busy(self) -> int:
        """The chip's ``config_busy_cycles`` counter (two CSR reads)."""
        from hdl.host import Csr
        k = self.drv.counter_names.index("config_busy_cycles")
        lo = await self.drv.csr_read(Csr.COUNTER_BASE + 2 * k)
        hi = await self.drv.csr_read(Csr.COUNTER_BASE + 2 * k + 1)
        return (hi << 32) | lo

    async def _call(self, call, pos, phases, per_kernel, seen):
        drv = self.drv
        c0 = self._cycles()
        await drv.load_bitstream(call.bitstream)
        c1 = self._cycles()
        budget = call.kernel.watchdog
        if self.watchdog_cycles is not None:
            budget = min(budget, self.watchdog_cycles)
        await drv.run_units(call.kernel.unit_ids, iteration=call.iteration, count=call.count,
                            cycles=budget, what=f"pos {pos} kernel {call.label}")
        c2 = self._cycles()
        phases["config"] += c1 - c0
        phases["config_host"] += c1 - c0
        phases["run"] += c2 - c1
        per_kernel.append((call.label, call.kernel.pattern, c2 - c1))
        if self.check and call.trace is not None and call.output is not None:
            name, layer = call.trace
            k = seen.get(call.trace, 0)
            seen[call.trace] = k + 1
            want = self._trace[(name, layer)][k]
            addr, nbytes, bits, n = call.output
            got = _elements(await drv.dma_read(addr, nbytes), bits, n)
            if got.shape != want.shape or np.any(got != want):
                bad = int(np.argmax(got != want)) if got.shape == want.shape else -1
                raise DecodeMismatch(
                    f"pos {pos}: kernel {call.label} ({call.kernel.pattern}) output "
                    f"{name} differs from the golden model: element {bad}: got "
                    f"{got[bad] if bad >= 0 else got.shape}, expected "
                    f"{want[bad] if bad >= 0 else want.shape}")

    async def _program(self, launch, pos, phases, per_kernel):
        drv = self.drv
        c0 = self._cycles()
        for addr, data in launch.updates:
            if self._slots.get(addr) != data:
                await drv.dma_write(addr, data)
                self._slots[addr] = data
        for entry, addr, n in launch.table:
            if self._table.get(entry) != (addr, n):
                await drv.write_program_table([(addr, n)], first=entry)
                self._table[entry] = (addr, n)
        c1 = self._cycles()
        budget = launch.budget(CONFIG_CYCLES_PER_SECTION)
        if self.watchdog_cycles is not None:
            budget = min(budget, self.watchdog_cycles)
        await drv.run_program(launch.first, launch.n_sections, iteration=launch.iteration,
                              count=launch.count, cycles=budget,
                              what=f"pos {pos} program {launch.program} ({launch.label})",
                              names=launch.section_names)
        c2 = self._cycles()
        phases["config"] += c1 - c0
        phases["config_host"] += c1 - c0
        phases["run"] += c2 - c1
        per_kernel.append((launch.label, f"program {launch.program}", c2 - c1))

    async def step(self, pos: int, token: int) -> tuple[int, dict]:
        """One decode step on the chip; returns (next token, per-step figures)."""
        drv = self.drv
        if pos != self.golden.pos:
            raise ValueError(f"step at position {pos}, but the decode is at position "
                             f"{self.golden.pos}")
        self._trace.clear()
        golden_logits = self.golden.step(token)          # also records the golden trace
        seen: dict = {}
        launches = self.prog.token_launches(pos, token)
        before = await drv.read_counters()
        t0 = self._cycles()
        phases = {"config": 0.0, "launch": 0.0, "run": 0.0, "readback": 0.0,
                  "config_host": 0.0, "config_chip": 0.0}
        per_kernel = []
        cb0 = None
        for x in launches:
            if x.kind == "call":
                await self._call(x, pos, phases, per_kernel, seen)
            else:
                if cb0 is None:
                    cb0 = await self._config_busy()
                await self._program(x, pos, phases, per_kernel)
        if cb0 is not None:
            # the chip's section loads: config controller busy between the first program
            # launch and the last done (nothing else loads the controller in between)
            chip_cfg = await self._config_busy() - cb0
            phases["config_chip"] = chip_cfg
            phases["config"] += chip_cfg
            phases["run"] -= chip_cfg
        c4 = self._cycles()
        nxt_raw = await drv.dma_read(self.prog.next_token, self.drv.p.beat_bytes)
        nxt = int.from_bytes(nxt_raw[:4], "little", signed=True)
        phases["readback"] += self._cycles() - c4
        after = await drv.read_counters()
        delta = {k: after[k] - before[k] for k in after}
        # The host launches synchronously after the previous launch is done, so the chip is
        # idle for its launch latency: the wait is charged per launch, not simulated (simulating
        # idle cycles would count the same and cost wall time).
        phases["launch"] = self.launch_overhead_cycles * len(launches)
        fig = {"pos": pos, "token_in": int(token), "next": nxt,
               "cycles": self._cycles() - t0 + phases["launch"],
               "phases": phases, "counters": delta, "launches": len(launches),
               "sections": sum(x.n_sections * x.count for x in launches
                               if x.kind == "program"),
               "kernels": per_kernel, "golden_next": GoldenDecoder.argmax(golden_logits)}
        self.last_golden_logits = golden_logits
        return nxt, fig

    async def read_logits(self) -> np.ndarray:
        """The last step's int32 logits as the chip left them in HBM."""
        c = self.prog.qm.config
        addr = self.prog.act["logits"]
        raw = await self.drv.dma_read(addr, self.prog.act_bytes["logits"])
        return _elements(raw, 32, c.vocab_size)

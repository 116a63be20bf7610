"""The decode loop on the chip: the host side of a token-by-token greedy decode.

Runs inside the cocotb process, on a :class:`sw.runtime.driver.ChipDriver`. For every token
(prompt tokens first, then generated ones) it makes the :class:`sw.compiler.program.Call`s of
:meth:`DecodeProgram.token_calls`: per call, load the kernel's bitstream (``op`` mode
reconfigures before every kernel), launch the units at the call's iteration and sleep
until ``run_done``. After the step it reads the next token back from HBM (one beat; the host
needs it to print text and to feed the next step).

Checking (``check=True``): after every call whose output is a golden-trace tensor, the
runner reads that tensor back and compares it with the golden decoder's own trace of the same
step (bit for bit), so a divergence names the first kernel (and layer) that went wrong, not
only a wrong token. It costs DMA reads (simulated cycles), so measurements run without it; the
tokens and the last step's logits are always compared.

Launch overhead: the host's launch latency, ``launch_overhead_cycles`` per launch, the same for
every launch in every mode. The host launches synchronously (after the previous call's done),
so the chip is idle meanwhile; the runner charges it per launch instead of simulating idle
cycles.

Timing per token comes from simulated time around each phase (bitstream load, launch overhead,
run, token read-back) and from the chip's counters (HBM busy cycles, beats moved): see
:meth:`DecodeRunner.step`.
"""

from __future__ import annotations

import time

import numpy as np

from cocotb.utils import get_sim_time

from sw.golden import GoldenDecoder

__all__ = ["DecodeRunner", "DecodeMismatch"]


class DecodeMismatch(AssertionError):
    """A kernel's output differs from the golden decoder's (first difference named)."""


def _elements(data: bytes, bits: int, n: int) -> np.ndarray:
    return np.frombuffer(data, {8: "<i1", 16: "<i2", 32: "<i4"}[bits])[:n].astype(np.int64)


class DecodeRunner:
    def __init__(self, drv, program, *, launch_overhead_cycles: int = 0, check: bool = False,
                 watchdog_cycles: int | None = None, log=None):
        self.drv, self.prog = drv, program
        self.launch_overhead_cycles = int(launch_overhead_cycles)
        self.check = check
        self.watchdog_cycles = watchdog_cycles    # caps every kernel's own budget (tests)
        self.log = log or (lambda msg: None)
        self._trace: dict = {}
        self.golden = GoldenDecoder(program.qm, trace=self._record)

    def _record(self, name, layer, arr):
        self._trace.setdefault((name, layer), []).append(np.array(arr).reshape(-1))

    def _cycles(self) -> float:
        return get_sim_time("ns") / self.drv.period_ns

    async def load(self) -> dict:
        """DMA the program's HBM image into the chip."""
        c0, w0 = self._cycles(), time.monotonic()
        nbytes = 0
        for addr, data in self.prog.images():
            await self.drv.dma_write(addr, data)
            nbytes += len(data)
        return {"bytes": nbytes, "cycles": self._cycles() - c0,
                "wall_seconds": time.monotonic() - w0}

    async def step(self, pos: int, token: int) -> tuple[int, dict]:
        """One decode step on the chip; returns (next token, per-step figures)."""
        drv = self.drv
        self._trace.clear()
        golden_logits = self.golden.step(token)          # also records the golden trace
        seen: dict = {}
        calls = self.prog.token_calls(pos, token)
        before = await drv.read_counters()
        t0 = self._cycles()
        phases = {"config": 0.0, "launch": 0.0, "run": 0.0, "readback": 0.0}
        per_kernel = []
        for call in calls:
            c0 = self._cycles()
            await drv.load_bitstream(call.bitstream)
            c1 = c2 = self._cycles()
            budget = call.kernel.watchdog
            if self.watchdog_cycles is not None:
                budget = min(budget, self.watchdog_cycles)
            await drv.run_units(call.kernel.unit_ids, iteration=call.iteration, count=call.count,
                                cycles=budget, what=f"pos {pos} kernel {call.label}")
            c3 = self._cycles()
            phases["config"] += c1 - c0
            phases["run"] += c3 - c2
            per_kernel.append((call.label, call.kernel.pattern, c3 - c2))
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
        c4 = self._cycles()
        nxt_raw = await drv.dma_read(self.prog.next_token, self.drv.p.beat_bytes)
        nxt = int.from_bytes(nxt_raw[:4], "little", signed=True)
        phases["readback"] += self._cycles() - c4
        after = await drv.read_counters()
        delta = {k: after[k] - before[k] for k in after}
        # The host launches synchronously after the previous call is done, so the chip is idle
        # for its launch latency: the wait is charged per launch, not simulated (simulating
        # idle cycles would count the same and cost wall time).
        phases["launch"] = self.launch_overhead_cycles * len(calls)
        fig = {"pos": pos, "token_in": int(token), "next": nxt,
               "cycles": self._cycles() - t0 + phases["launch"],
               "phases": phases, "counters": delta, "launches": len(calls),
               "kernels": per_kernel, "golden_next": GoldenDecoder.argmax(golden_logits)}
        self.last_golden_logits = golden_logits
        return nxt, fig

    async def read_logits(self) -> np.ndarray:
        """The last step's int32 logits as the chip left them in HBM."""
        c = self.prog.qm.config
        addr = self.prog.act["logits"]
        raw = await self.drv.dma_read(addr, self.prog.act_bytes["logits"])
        return _elements(raw, 32, c.vocab_size)

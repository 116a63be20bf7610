"""cocotb testbench: programs of sections on the whole chip (``hdl/sections.py``), through the
host driver only.

``MINIRDU_ARGS`` (JSON): ``params``; ``images`` (``[addr, file]``: data and section bitstreams
to DMA into HBM); ``table`` (``[addr, length]`` per section-table entry); ``state``
(``{addr, initial, expected}``: the region the program updates, its starting bytes and the
bytes it must hold after the program); ``program`` (``[first, sections, iterations]``);
``corrupt_entry``, ``hang_entry`` (table entries whose bitstream is corrupt / whose kernel
never finishes); ``result`` (JSON written at the end).

Scenario, each step checked here (the test fails naming the step):
1. looped: one PROG_START runs every iteration: state == expected; counters: 1 launch,
   sections x iterations sections, config controller busy during the loads.
2. layer: one PROG_START per iteration (count 1): the same bytes; as many launches as
   iterations.
3. a corrupt section, loaded cold and prefetched behind another section:
   :class:`ProgramError` naming the entry and BAD_CRC; a cold refusal leaves the state untouched
   (the controller wrote nothing); after clearing the error, the good program runs again,
   bit-exact.
4. the sequencer's own refusals: a range outside the table, an entry past the end of HBM
   (written with raw CSR writes: the driver refuses it itself).
5. a section whose kernel never finishes: :class:`HangError` naming the section, its phase
   and the busy unit (last: the unit stays busy).
"""

import json

import cocotb

from hdl.host import Csr
from hdl.params import RduParams
from sw.runtime.driver import ChipDriver, HangError, ProgramError
from tb.kernel_case import read_args, read_file


@cocotb.test()
async def sections(dut):
    args = read_args()
    p = RduParams.from_dict(args["params"])
    drv = ChipDriver(dut, p)
    await drv.start()
    out = {}
    for addr, f in args["images"]:
        await drv.dma_write(addr, read_file(f))
    await drv.write_program_table(args["table"])
    st = args["state"]
    initial, expected = read_file(st["initial"]), read_file(st["expected"])
    first, n, iters = args["program"]
    budget = 20_000 * n * iters

    async def state():
        return await drv.dma_read(st["addr"], len(expected))

    def check(step, got):
        assert got == expected, (f"{step}: state differs from numpy at byte "
                                 f"{next(i for i in range(len(got)) if got[i] != expected[i])}")

    # 1. looped
    await drv.dma_write(st["addr"], initial)
    await drv.clear_counters()
    await drv.run_program(first, n, iteration=0, count=iters, cycles=budget, what="looped")
    c = await drv.read_counters()
    check("looped", await state())
    assert c["launches"] == 1 and c["sections"] == n * iters, c
    assert c["config_busy_cycles"] > 0, c
    out["looped"] = c
    # 2. layer
    await drv.dma_write(st["addr"], initial)
    await drv.clear_counters()
    for it in range(iters):
        await drv.run_program(first, n, iteration=it, count=1, cycles=budget, what="layer")
    c = await drv.read_counters()
    check("layer", await state())
    assert c["launches"] == iters and c["sections"] == n * iters, c
    out["layer"] = c
    # 3. corrupt section
    await drv.dma_write(st["addr"], initial)
    bad = args["corrupt_entry"]
    try:
        await drv.run_program(bad, 1, iteration=0, count=1, cycles=budget, what="corrupt",
                              names=["addA (corrupted)"])
        raise AssertionError("corrupt section: no error")
    except ProgramError as e:
        out["corrupt"] = str(e)
        assert e.entry == bad and "BAD_CRC" in str(e) and f"section {bad}" in str(e), str(e)
    await drv.csr_write(Csr.ERROR, 0)
    assert await state() == initial, "a refused section changed the state"
    # ... and the same bitstream prefetched while the section before it runs
    try:
        await drv.run_program(bad - 1, 2, iteration=0, count=1, cycles=budget, what="prefetch",
                              names=["addB", "addA (corrupted)"])
        raise AssertionError("corrupt prefetched section: no error")
    except ProgramError as e:
        out["corrupt_prefetched"] = str(e)
        assert e.entry == bad and "BAD_CRC" in str(e), str(e)
    await drv.csr_write(Csr.ERROR, 0)
    await drv.dma_write(st["addr"], initial)
    await drv.run_program(first, n, iteration=0, count=iters, cycles=budget, what="again")
    check("after the corrupt section", await state())
    # 4. the sequencer's refusals
    try:
        await drv.run_program(p.program_entries - 1, 2, cycles=budget, what="range")
        raise AssertionError("out-of-table range: no error")
    except ProgramError as e:
        out["range"] = str(e)
        assert "outside the section table" in str(e), str(e)
    await drv.csr_write(Csr.ERROR, 0)
    await drv.csr_write(Csr.PROG_ENTRY, p.program_entries - 1)
    await drv.csr_write(Csr.PROG_ENTRY_ADDR, p.hbm_beats - 1)
    await drv.csr_write(Csr.PROG_ENTRY_LEN, 4096)
    try:
        await drv.run_program(p.program_entries - 1, 1, cycles=budget, what="entry")
        raise AssertionError("entry past the end of HBM: no error")
    except ProgramError as e:
        out["entry"] = str(e)
        assert "past the end of HBM" in str(e), str(e)
    await drv.csr_write(Csr.ERROR, 0)
    # 5. hang
    hang = args["hang_entry"]
    try:
        await drv.run_program(hang, 1, cycles=3000, what="hang", names=["addA, PCU only"])
        raise AssertionError("hanging section: no HangError")
    except HangError as e:
        out["hang"] = str(e)
        assert f"section {hang} (addA, PCU only), iteration 0, phase RUN" in str(e), str(e)
        assert "pcu" in str(e) and "busy" in str(e), str(e)
    with open(args["result"], "w") as f:
        json.dump(out, f, indent=1)

"""cocotb bring-up of the chip toplevel through its host ports only.

Checks what a board bring-up checks first: the chip answers on the CSR bus with its ID and the
geometry hash of the ``RduParams`` the driver was given, DMA moves data to HBM and back
bit-exactly, a refused DMA raises a clear error, and the counters count. Arguments come in the
``MINIRDU_ARGS`` environment variable (JSON: ``params``, ``seed``, ``bytes``, ``result``).
"""

import json
import os
import random
import time

import cocotb

from hdl.params import RduParams
from sw.runtime.driver import ChipDriver, ChipError


def _args():
    return json.loads(os.environ.get("MINIRDU_ARGS", "{}"))


@cocotb.test()
async def bringup(dut):
    args = _args()
    p = RduParams.from_dict(args["params"]) if "params" in args else RduParams()
    seed = int(args.get("seed", 1))
    nbytes = int(args.get("bytes", 4096))
    rng = random.Random(seed)
    drv = ChipDriver(dut, p)
    t0 = time.monotonic()
    await drv.start()
    await drv.clear_counters()

    # Two regions: one at the start of HBM, one at a random beat-aligned place near the end, so
    # the address map's channel/bank/row bits all take part.
    regions = [0, (p.hbm_bytes - nbytes - rng.randrange(0, 64) * p.beat_bytes) // p.beat_bytes
               * p.beat_bytes]
    payloads = [rng.randbytes(nbytes) for _ in regions]
    for addr, data in zip(regions, payloads):
        await drv.dma_write(addr, data)
    for addr, data in zip(regions, payloads):
        back = await drv.dma_read(addr, nbytes)
        if back != data:
            bad = next(i for i in range(nbytes) if back[i] != data[i])
            raise AssertionError(f"seed {seed}: HBM readback differs at byte 0x{addr + bad:x}")

    counters = await drv.read_counters()
    beats = 2 * nbytes // p.beat_bytes
    rd = sum(counters[f"ch{c}_rd_beats"] for c in range(p.hbm_channels))
    wr = sum(counters[f"ch{c}_wr_beats"] for c in range(p.hbm_channels))
    assert (rd, wr) == (beats, beats), f"HBM counters say rd={rd} wr={wr}, expected {beats} each"

    # A transfer that runs off the end of HBM is refused and reported, and moves nothing.
    # The driver refuses it before the chip sees it ...
    try:
        await drv.dma_write(p.hbm_bytes - p.beat_bytes, bytes(2 * p.beat_bytes))
        raise AssertionError("the driver accepted a DMA past the end of HBM")
    except ValueError as e:
        assert "outside" in str(e), str(e)
    # ... and the chip refuses it when programmed directly.
    from hdl.host import Csr
    await drv.csr_write(Csr.DMA_ADDR, p.hbm_beats - 1)
    await drv.csr_write(Csr.DMA_BEATS, 2)
    await drv.csr_write(Csr.DMA_CTRL, 0b11)
    try:
        await drv._wait_dma_idle(100)       # the refusal is latched two cycles after start
        raise AssertionError("an out-of-range DMA was not reported")
    except ChipError as e:
        assert "OUT_OF_RANGE" in str(e), str(e)
    await drv.csr_write(Csr.ERROR, 0)

    # ---- configuration through a bitstream, then a run -----------------------------------------
    # AGCU 0 is the unit under test; its fabric-side streams are unconnected here, so the programs
    # are ones that finish without moving data: an empty program, and one whose first address lies
    # outside its region (refused before any request).
    from hdl.agcu import AgcuReg, AgcuStatus, agcu_count_reg
    from hdl.unitmap import unit_id
    from sw.bitstream import Bitstream, ConfigStatus
    from sw.runtime.driver import BitstreamRejected
    agcu0 = unit_id(p, "agcu", 0)

    def agcu_bitstream(base, count):
        return Bitstream.for_params(p, writes=[
            (agcu0, AgcuReg.REGION_BASE, 0), (agcu0, AgcuReg.REGION_BEATS, 16),
            (agcu0, AgcuReg.BASE, base), (agcu0, agcu_count_reg(0), count)]).to_bytes()

    out_of_region = agcu_bitstream(base=1000, count=1)
    n = await drv.load_bitstream(out_of_region)
    assert n == 4, f"config controller reported {n} writes, bitstream has 4"
    try:
        await drv.run_units([agcu0], cycles=2000, what="AGCU 0 out-of-region program")
        raise AssertionError("an out-of-region AGCU program was not reported")
    except ChipError as e:
        assert "agcu" in str(e) and AgcuStatus.OUT_OF_REGION.name in str(e), str(e)
    await drv.csr_write(Csr.ERROR, 0)

    await drv.load_bitstream(agcu_bitstream(base=0, count=0))    # an empty program: runs clean
    await drv.run_units([agcu0], cycles=2000, what="AGCU 0 empty program")

    # A corrupted copy of the out-of-region bitstream is refused and configures nothing: the
    # empty program stays, so the next run is still clean.
    bad = bytearray(out_of_region)
    bad[rng.randrange(64, len(bad) - 4)] ^= 1 << rng.randrange(8)
    try:
        await drv.load_bitstream(bytes(bad))
        raise AssertionError("a corrupted bitstream was accepted")
    except BitstreamRejected as e:
        assert e.status != ConfigStatus.OK, str(e)
    await drv.run_units([agcu0], cycles=2000, what="AGCU 0 after a refused bitstream")

    cycles = (await drv.read_counters())["cycles"]
    wall = time.monotonic() - t0
    if "result" in args:
        with open(args["result"], "w") as f:
            json.dump({"ok": True, "seed": seed, "bytes": nbytes, "cycles": cycles,
                       "wall_seconds": wall, "counters": counters}, f, indent=2)

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

    cycles = (await drv.read_counters())["cycles"]
    wall = time.monotonic() - t0
    if "result" in args:
        with open(args["result"], "w") as f:
            json.dump({"ok": True, "seed": seed, "bytes": nbytes, "cycles": cycles,
                       "wall_seconds": wall, "counters": counters}, f, indent=2)

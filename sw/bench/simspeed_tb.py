"""cocotb testbench of the simulator-speed benchmark (:mod:`sw.bench.simspeed`) on Verilator.

Arguments in ``MINIRDU_ARGS`` (JSON): ``params``, ``case`` (:meth:`KernelCase.to_dict`) and
``result`` (path of the JSON written: :func:`sw.bench.simspeed.host_program`'s figures).
"""

import json

import cocotb
from cocotb.utils import get_sim_time

from hdl.params import RduParams
from sw.bench.simspeed import KernelCase, host_program
from sw.runtime.driver import ChipDriver
from tb.kernel_case import read_args


@cocotb.test()
async def kernel_speed(dut):
    args = read_args()
    p = RduParams.from_dict(args["params"])
    case = KernelCase.from_dict(args["case"])
    drv = ChipDriver(dut, p)
    await drv.start()
    res = await host_program(drv, case, lambda: round(get_sim_time("ns") / drv.period_ns))
    with open(args["result"], "w") as f:
        json.dump(res, f, indent=1)

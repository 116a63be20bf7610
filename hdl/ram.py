"""Large simple-dual-port RAM for backing stores (HBM), cheap to generate as Verilog.

Behaviour (both forms): one synchronous read port and one write port on the ``sync`` domain.
``r_data`` shows ``mem[r_addr]`` from the cycle after a cycle with ``r_en`` high, and holds it
otherwise; a read and a write of the same address in the same cycle return the *old* data
(not transparent) — the behaviour of ``lib.memory.Memory`` with a non-transparent read port.
Contents start at zero.

Why two forms: ``lib.memory.Memory`` always carries an init value, which Amaranth emits as one
constant of ``width x depth`` bits — for the 2 MiB HBM store a 16-Mbit constant that takes
tens of seconds to emit and to pass through Yosys. Under Amaranth's simulator the unit is a
``lib.memory.Memory``; when :func:`hdl.shared.verilog_blackboxes` is active (``tb/runner.py`` does this when
it generates Verilog) it is an instance of ``minirdu_wide_ram`` from :data:`VERILOG_SOURCE`,
which zeroes itself with a loop in an ``initial`` block (a few lines instead of 16 Mbit).
"""

import contextlib

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["WideRam", "use_verilog", "VERILOG_SOURCE"]

_USE_VERILOG = [False]


@contextlib.contextmanager
def use_verilog():
    """Within this context, :class:`WideRam` elaborates to the Verilog module below
    (:func:`hdl.shared.verilog_blackboxes` enters it and adds :data:`VERILOG_SOURCE`)."""
    old = _USE_VERILOG[0]
    _USE_VERILOG[0] = True
    try:
        yield VERILOG_SOURCE
    finally:
        _USE_VERILOG[0] = old


VERILOG_SOURCE = r"""
// minirdu_wide_ram: simple dual-port RAM, synchronous non-transparent read (see hdl/ram.py).
module minirdu_wide_ram #(parameter WIDTH = 512, parameter DEPTH = 1024, parameter ABITS = 10) (
    input  wire             clk,
    input  wire [ABITS-1:0] r_addr,
    input  wire             r_en,
    output reg  [WIDTH-1:0] r_data,
    input  wire [ABITS-1:0] w_addr,
    input  wire             w_en,
    input  wire [WIDTH-1:0] w_data
);
    reg [WIDTH-1:0] mem [0:DEPTH-1];
    integer i;
    initial begin
        for (i = 0; i < DEPTH; i = i + 1) mem[i] = {WIDTH{1'b0}};
        r_data = {WIDTH{1'b0}};
    end
    always @(posedge clk) begin
        if (r_en) r_data <= mem[r_addr];
        if (w_en) mem[w_addr] <= w_data;
    end
endmodule
"""


class WideRam(wiring.Component):
    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        abits = max(1, (depth - 1).bit_length())
        super().__init__({
            "r_addr": In(abits), "r_en": In(1), "r_data": Out(width),
            "w_addr": In(abits), "w_en": In(1), "w_data": In(width),
        })

    def elaborate(self, platform):
        m = Module()
        if _USE_VERILOG[0]:
            m.submodules.ram = Instance(
                "minirdu_wide_ram",
                p_WIDTH=self.width, p_DEPTH=self.depth, p_ABITS=len(self.r_addr),
                i_clk=ClockSignal(), i_r_addr=self.r_addr, i_r_en=self.r_en,
                o_r_data=self.r_data, i_w_addr=self.w_addr, i_w_en=self.w_en,
                i_w_data=self.w_data)
        else:
            m.submodules.mem = mem = Memory(shape=unsigned(self.width), depth=self.depth, init=[])
            rp = mem.read_port()
            wp = mem.write_port()
            m.d.comb += [
                rp.addr.eq(self.r_addr), rp.en.eq(self.r_en), self.r_data.eq(rp.data),
                wp.addr.eq(self.w_addr), wp.en.eq(self.w_en), wp.data.eq(self.w_data),
            ]
        return m

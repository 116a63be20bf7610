"""Chip geometries the Verilator tests build.

The default ``RduParams()`` chip with its compute fabric is ~20 MB of Verilog: eight 16-lane x
6-stage PCUs dominate, and Verilator's C++ for it takes over an hour to compile on two busy
cores. The regression therefore builds the *same RTL* at a smaller geometry for everything that
involves the whole chip with its fabric — full-width 16-lane units (the config controller and
the HBM beat need 64-byte beats), 2 PCU stages, a 2 x 3 grid (3 PCUs, 3 PMUs), 256 KiB of HBM —
and the default geometry for the memory system alone (``Chip(fabric=False)``).
"""

from hdl.params import RduParams

SMALL_CHIP = RduParams(grid_rows=2, grid_cols=3, pcu_stages=2, hbm_bytes=256 * 1024)

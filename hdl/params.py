"""Architecture parameters of one minirdu socket.

Every number that shapes the chip lives here, once. The RTL (``hdl/``), the compiler, the
runtime and the benchmarks all read the same frozen :class:`RduParams`; the bitstream header
records :meth:`RduParams.digest` so a bitstream built for one geometry is refused by another.

Units: *beat* = one vector = ``lanes * word_bits`` bits (512 bits = 64 B by default), which is
also the width of an HBM channel's data bus and of the DMA port. HBM addresses inside the chip are
byte addresses; the memory system works in beats, so every HBM address must be beat-aligned.

Timing defaults are scaled from HBM3 (JEDEC JESD238) as documented in ``hdl/hbm.py``: one
channel here models one HBM3 pseudo-channel (64 bit at 6.4 Gb/s = 51.2 GB/s) with the fabric
clock at 800 MHz (1.25 ns/cycle), i.e. 64 B/cycle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

__all__ = ["RduParams", "DEFAULT_PARAMS"]


@dataclass(frozen=True)
class RduParams:
    # ---- compute fabric -------------------------------------------------------------------
    grid_rows: int = 4               # tiles in the checkerboard of PCUs and PMUs
    grid_cols: int = 4
    lanes: int = 16                  # PCU SIMD lanes
    word_bits: int = 32              # bits per lane
    pcu_stages: int = 6              # FU pipeline stages per PCU
    pcu_vector_inputs: int = 3       # vector input ports (3: int16-x GEMV needs x_hi, x_lo, W)
    pcu_scalar_inputs: int = 2       # scalar input ports
    pcu_counters: int = 3            # nested counters in the PCU's counter chain
    pcu_fifo_depth: int = 4          # entries per PCU input FIFO
    pmu_bytes: int = 16 * 1024       # scratchpad per PMU
    pmu_banks: int = 16
    pmu_counters: int = 3            # nested counters per PMU address generator
    pmu_max_buffers: int = 4         # N-buffering: at most this many buffers per PMU
    n_agcus: int = 4                 # on the west and east edges
    switch_tracks: int = 2           # links per direction per network between switches (1..4):
                                     # 2 lets a tile take 3 vector streams (int16 GEMV) while
                                     # through-traffic crosses it (hdl/switch.py)
    clock_mhz: int = 800             # only used to turn cycles into seconds in reports

    # ---- HBM (one memory tier; later tiers such as DDR reuse the same model) --------------
    hbm_channels: int = 2
    hbm_bytes_per_cycle: int = 64    # per channel; equals one beat per cycle
    hbm_bytes: int = 2 * 1024 * 1024  # backing store, all channels together
    hbm_burst_beats: int = 4         # beats per burst; also the channel-interleave unit
    hbm_read_latency: int = 150      # cycles from a read burst's issue to its first beat out
    hbm_queue_depth: int = 8         # requests waiting per channel
    hbm_banks: int = 16              # banks per channel, each with one open row
    hbm_row_bytes: int = 1024        # row (page) size per bank
    hbm_t_rcd: int = 12              # activate -> column command (cycles)
    hbm_t_rp: int = 12               # precharge (cycles)
    hbm_t_refi: int = 3120           # refresh interval (cycles)
    hbm_t_rfc: int = 280             # refresh cycle time (cycles)
    hbm_t_rfcsb: int = 128           # per-bank (single-bank) refresh cycle time (cycles)
    hbm_refresh_per_bank: bool = True  # REFsb round-robin per bank (True) or REFab all-bank (False)
    hbm_refresh_postpone: int = 8    # refreshes the controller may owe before it forces one
    agcu_counters: int = 4           # nested address counters per AGCU (COUNT_k/STRIDE_k pairs)

    # ---- configuration -----------------------------------------------------------------
    config_buffer_bytes: int = 16 * 1024  # config controller's bitstream buffer
    program_entries: int = 32        # section table of the section sequencer (hdl/sections.py):
                                     # bitstreams in HBM the chip loads and runs by itself

    # ---- host ---------------------------------------------------------------------------
    csr_addr_bits: int = 12          # CSR word address space
    csr_data_bits: int = 32

    def __post_init__(self):
        def pow2(name):
            v = getattr(self, name)
            if v <= 0 or v & (v - 1):
                raise ValueError(f"RduParams.{name} must be a positive power of two, got {v}")
        for name in ("lanes", "hbm_channels", "hbm_burst_beats", "hbm_banks", "hbm_row_bytes",
                     "hbm_bytes", "pmu_bytes", "pmu_banks"):
            pow2(name)
        if self.word_bits not in (32,):
            raise ValueError(f"RduParams.word_bits must be 32, got {self.word_bits}")
        if self.hbm_bytes_per_cycle != self.beat_bytes:
            raise ValueError(
                f"RduParams.hbm_bytes_per_cycle ({self.hbm_bytes_per_cycle}) must equal the beat "
                f"size lanes*word_bits/8 = {self.beat_bytes}: a channel moves one beat per cycle")
        if self.hbm_row_bytes % (self.hbm_burst_beats * self.beat_bytes):
            raise ValueError("RduParams.hbm_row_bytes must hold a whole number of bursts")
        if self.hbm_bytes % (self.hbm_channels * self.hbm_banks * self.hbm_row_bytes):
            raise ValueError("RduParams.hbm_bytes must hold a whole number of rows in every bank")
        if self.grid_rows < 1 or self.grid_cols < 1:
            raise ValueError("RduParams grid must be at least 1x1")
        if not 1 <= self.program_entries <= 256:
            raise ValueError(f"RduParams.program_entries must be in 1..256 (the section index is "
                             f"8 bits), got {self.program_entries}")

    # ---- derived quantities (never stored twice) -----------------------------------------
    @property
    def beat_bits(self) -> int:
        return self.lanes * self.word_bits

    @property
    def beat_bytes(self) -> int:
        return self.beat_bits // 8

    @property
    def hbm_beats(self) -> int:
        return self.hbm_bytes // self.beat_bytes

    @property
    def hbm_addr_bits(self) -> int:
        """Bits of a beat address covering the whole HBM."""
        return (self.hbm_beats - 1).bit_length()

    @property
    def hbm_channel_beats(self) -> int:
        return self.hbm_beats // self.hbm_channels

    @property
    def hbm_peak_bytes_per_cycle(self) -> int:
        return self.hbm_channels * self.hbm_bytes_per_cycle

    @property
    def n_tiles(self) -> int:
        return self.grid_rows * self.grid_cols

    @property
    def n_pcus(self) -> int:
        return (self.n_tiles + 1) // 2

    @property
    def n_pmus(self) -> int:
        return self.n_tiles // 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RduParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown RduParams fields: {', '.join(sorted(unknown))}")
        return cls(**d)

    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON of all fields: the geometry fingerprint."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).digest()

    def replace(self, **changes) -> "RduParams":
        return dataclasses.replace(self, **changes)


DEFAULT_PARAMS = RduParams()

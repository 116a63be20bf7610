"""Seeded bitstream mutations shared by the reader fuzz (tests/test_bitstream.py) and the RTL
fuzz (tb/test_config_fuzz.py)."""

from __future__ import annotations

import random
import struct

from sw.bitstream import RECORD_SIZE, SectionType, crc32

__all__ = ["mutate", "resign", "raw_config_writes"]


def resign(b) -> bytes:
    """``b`` with its trailing CRC recomputed, so a crafted defect reaches the later checks."""
    b = bytearray(b)
    b[-4:] = crc32(bytes(b[:-4])).to_bytes(4, "little")
    return bytes(b)


def mutate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One random defect; returns (data, kind). The ``*_resign`` kinds get a fresh CRC so that
    they exercise the section and record checks behind the CRC."""
    b = bytearray(data)
    kind = rng.choices(["bit", "bits", "byte", "trunc", "extend", "field", "field_resign",
                        "record_resign", "splice"], weights=[2, 1, 1, 1, 1, 1, 2, 3, 1])[0]
    if len(b) < 84 and kind in ("field", "field_resign", "record_resign"):
        kind = "bit"
    if not b:
        return bytes(rng.randbytes(rng.randint(0, 80))), "garbage"
    if kind == "bit":
        i = rng.randrange(len(b) * 8)
        b[i // 8] ^= 1 << (i % 8)
    elif kind == "bits":
        for _ in range(rng.randint(2, 16)):
            i = rng.randrange(len(b) * 8)
            b[i // 8] ^= 1 << (i % 8)
    elif kind == "byte":
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "trunc":
        del b[rng.randrange(len(b)):]
    elif kind == "extend":
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 70)))
    elif kind == "splice":
        i = rng.randrange(len(b))
        b[i:i + 8] = rng.randbytes(rng.randint(0, 16))
    else:
        if kind == "record_resign":
            n = int.from_bytes(b[16:18], "little")
            t, o, ln, _ = struct.unpack_from("<IIII", b, 64) if n else (0, 64, 0, 0)
            lo, hi = (o, o + ln) if ln else (64, len(b) - 4)
        else:
            lo, hi = 0, 64 + 16 * 4            # header and section table
        hi = min(hi, len(b) - 4)
        lo = max(0, min(lo, hi - 1))
        i = rng.randrange(lo, hi)
        if kind == "record_resign" and rng.random() < 0.7:
            i = lo + (i - lo) // 8 * 8 + rng.randrange(2)    # a record's unit or register byte
        if rng.random() < 0.5:
            b[i] ^= 1 << rng.randrange(8)
        else:
            b[i] = rng.choice([0, 1, 4, 8, 0x40, 0x7f, 0x80, 0xff, rng.randrange(256)])
        return resign(b), kind
    return bytes(b), kind


def raw_config_writes(data: bytes) -> list[tuple[int, int, int]]:
    """The CONFIG records of a bitstream that passes the hardware checks, as (unit, reg, value)."""
    n = int.from_bytes(data[16:18], "little")
    for i in range(n):
        t, o, ln, _ = struct.unpack_from("<IIII", data, 64 + 16 * i)
        if t == SectionType.CONFIG:
            return [(data[k], data[k + 1], int.from_bytes(data[k + 4:k + 8], "little"))
                    for k in range(o, o + ln, RECORD_SIZE)]
    return []

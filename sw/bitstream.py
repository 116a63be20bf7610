"""The minirdu bitstream (``.rbit``): format, writer and reader.

A bitstream is what the compiler hands to the chip: the register writes that configure every
unit for one or more kernels, the kernel table the looping sequencer runs, and descriptive
sections for people and tools. The host DMAs it into the config controller (``hdl/config.py``),
which checks it completely and only then replays its register writes onto the config bus.

Format, version 1
=================

All integers are little-endian and unsigned. Offsets are bytes from the start of the file. The
file is at most the controller's buffer (``config_buffer_bytes``, 16 KiB by default).

Header: 64 bytes, exactly one 512-bit DMA beat (beat 0)

=======  ====  =================  ==============================================================
offset   size  field              meaning
=======  ====  =================  ==============================================================
0        4     ``magic``          ``b"RBIT"``
4        2     ``version``        ``1``
6        2     ``header_size``    ``64``: size of this header; the section table follows it
8        4     ``total_length``   bytes in the whole file, CRC trailer included; multiple of 4
12       4     ``flags``          bit 0 ``LOOPED`` (holds a looped kernel); informational, the
                                  hardware ignores flags; other bits written 0
16       2     ``section_count``  entries in the section table, 0 .. 8
18       14    reserved           written 0, ignored by readers
32       32    ``params_digest``  :meth:`RduParams.digest` (SHA-256) of the target geometry
=======  ====  =================  ==============================================================

Section table: ``section_count`` entries of 16 bytes at offset 64 (four per beat)

=======  ====  ===========  ========================================================
+0       4     ``type``     1 CONFIG, 2 KERNELS, 3 METADATA, 4 ROUTES
+4       4     ``offset``   first byte of the section's payload
+8       4     ``length``   payload bytes
+12      4     reserved     written 0, ignored
=======  ====  ===========  ========================================================

Section rules (else ``BAD_SECTION``): ``section_count <= 8``; the table ends at or before
``total_length - 4``; every type is one of the four above and appears at most once; every payload
lies after the table and before the CRC (``64 + 16*count <= offset``,
``offset + length <= total_length - 4``) and starts 8-byte aligned; CONFIG's length is a multiple
of 8; KERNELS starts 64-byte aligned (on a beat) and its length is a multiple of 64. Writers do not
overlap payloads and fill gaps with zeros. Every section is optional.

CONFIG (type 1): register writes, 8 bytes each, applied in file order

=======  ====  =========  ==================================================================
+0       1     ``unit``   config-bus unit id (:mod:`hdl.unitmap`); must exist (``UNKNOWN_UNIT``)
+1       1     ``reg``    register address; must be ``< n_regs`` of that unit
                          (``REG_OUT_OF_RANGE``)
+2       2     reserved   written 0, ignored
+4       4     ``value``  32-bit register value
=======  ====  =========  ==================================================================

KERNELS (type 2): the sequencer's kernel table, one 64-byte entry (one beat) per kernel

=======  ====  ==============  ===========================================================
+0       2     ``id``          kernel id (the sequencer's launch handle)
+2       2     ``flags``       bit 0 ``LOOPED``: run ``iterations`` pipelined outer iterations
+4       4     ``iterations``  outer-loop trip count (1 for an unlooped kernel)
+8       24    ``name``        UTF-8, NUL-padded
+32      32    ``units``       bit ``u`` (byte ``u//8``, bit ``u%8``) set: unit id ``u`` takes part
=======  ====  ==============  ===========================================================

(The sequencer issue will extend the entry, e.g. with per-iteration offset tables in reserved
flag bits or a new section type; version 1 readers refuse unknown section types.)

METADATA (type 3): UTF-8 JSON object, e.g. ``{"model": ..., "mode": "looped", "compiler": ...,
"params": RduParams.to_dict()}``; ``rdu inspect`` uses ``params`` to decode a bitstream built for
a non-default geometry.

ROUTES (type 4): UTF-8 JSON object for debugging and ``rdu inspect``:
``{"units": {"<id>": "human name"}, "routes": [{"net": "vector|scalar|control", "src": "...",
"dst": "...", "hops": [...]}]}``. Never read by the hardware.

Trailer: the last 4 bytes are the CRC-32 (IEEE 802.3, as ``zlib.crc32``) of bytes
``[0, total_length - 4)``, i.e. of everything but the CRC field itself.

Validation and its order
========================

The config controller and :func:`check` apply the same checks in the same order; the first
failing check names the :class:`ConfigStatus` (``L`` = bytes delivered by the host, which must
equal ``total_length``):

1. ``L > buffer_bytes``                                              -> ``TOO_LARGE``
2. ``L < 68`` (header + CRC)                                         -> ``BAD_LENGTH``
3. ``magic != b"RBIT"``                                              -> ``BAD_MAGIC``
4. ``version != 1``                                                  -> ``BAD_VERSION``
5. ``header_size != 64`` or ``total_length != L`` or ``L % 4 != 0``  -> ``BAD_LENGTH``
   (covers truncated and extended files)
6. CRC-32 mismatch                                                   -> ``BAD_CRC``
7. ``params_digest != RduParams.digest()``                          -> ``BAD_GEOMETRY``
8. section table and section rules above, entries in table order     -> ``BAD_SECTION``
9. CONFIG records in order; per record the unit, then the register   -> ``UNKNOWN_UNIT`` /
                                                                        ``REG_OUT_OF_RANGE``

CRC comes before geometry so that a corrupted digest reads as corruption, and before the
section checks so that they only ever see intact data. The hardware checks exactly what it
consumes. The contents of KERNELS (names, unit ids in the mask), METADATA and ROUTES (JSON) are
checked by software only: :meth:`Bitstream.from_bytes` raises ``BAD_SECTION`` (or
``UNKNOWN_UNIT`` for a kernel's unit mask) for them after all hardware checks have passed.
"""

from __future__ import annotations

import enum
import json
import struct
import zlib
from dataclasses import dataclass, field

from hdl.params import RduParams
from hdl.unitmap import unit_map

__all__ = ["ConfigStatus", "BitstreamError", "SectionType", "ConfigWrite", "Kernel", "Bitstream",
           "check", "crc32", "MAGIC", "VERSION", "HEADER_SIZE", "SECTION_ENTRY_SIZE",
           "MAX_SECTIONS", "RECORD_SIZE", "KERNEL_ENTRY_SIZE", "MIN_LENGTH", "FLAG_LOOPED",
           "DEFAULT_CONFIG_BUFFER_BYTES", "config_buffer_bytes"]

MAGIC = b"RBIT"
VERSION = 1
HEADER_SIZE = 64
SECTION_ENTRY_SIZE = 16
MAX_SECTIONS = 8
RECORD_SIZE = 8
KERNEL_ENTRY_SIZE = 64
KERNEL_NAME_BYTES = 24
KERNEL_MASK_BYTES = 32
CRC_SIZE = 4
MIN_LENGTH = HEADER_SIZE + CRC_SIZE
FLAG_LOOPED = 1
DEFAULT_CONFIG_BUFFER_BYTES = 16 * 1024


def config_buffer_bytes(params: RduParams | None) -> int:
    """The config controller's buffer size for ``params`` (``RduParams.config_buffer_bytes`` once
    that field exists, else :data:`DEFAULT_CONFIG_BUFFER_BYTES`)."""
    return int(getattr(params, "config_buffer_bytes", DEFAULT_CONFIG_BUFFER_BYTES))


class ConfigStatus(enum.IntEnum):
    """The config controller's status code (4 bits), shared by hardware and software."""
    OK = 0
    TOO_LARGE = 1          # longer than the controller's buffer
    BAD_LENGTH = 2         # shorter than a header, or length fields disagree (truncated/extended)
    BAD_MAGIC = 3
    BAD_VERSION = 4
    BAD_CRC = 5
    BAD_GEOMETRY = 6       # RduParams digest differs from the chip's
    BAD_SECTION = 7        # malformed section table or section
    UNKNOWN_UNIT = 8       # a config record names a unit id the chip does not have
    REG_OUT_OF_RANGE = 9   # a config record writes past its unit's register count


class SectionType(enum.IntEnum):
    CONFIG = 1
    KERNELS = 2
    METADATA = 3
    ROUTES = 4


class BitstreamError(Exception):
    """A bitstream was refused; ``code`` is the :class:`ConfigStatus` the hardware reports."""

    def __init__(self, code: ConfigStatus, message: str):
        super().__init__(message)
        self.code = ConfigStatus(code)
        self.message = message

    def __str__(self):
        return f"{self.code.name}: {self.message}"


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class ConfigWrite:
    unit: int
    reg: int
    value: int


@dataclass(frozen=True)
class Kernel:
    id: int
    name: str
    units: tuple[int, ...] = ()
    iterations: int = 1
    flags: int = 0


@dataclass(frozen=True)
class SectionEntry:
    type: int
    offset: int
    length: int


def _u16(b, o):
    return int.from_bytes(b[o:o + 2], "little")


def _u32(b, o):
    return int.from_bytes(b[o:o + 4], "little")


def _fail(code, msg):
    raise BitstreamError(code, msg)


def _validate(data: bytes, params: RduParams | None, buffer_bytes: int | None,
              check_units: bool = True) -> tuple[dict, list[SectionEntry]]:
    """The hardware's checks, in the hardware's order (module docstring). Returns the header
    fields and the section table. ``params=None`` skips the geometry and record checks."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("bitstream data must be bytes")
    data = bytes(data)
    n = len(data)
    if buffer_bytes is None:
        buffer_bytes = config_buffer_bytes(params)
    if n > buffer_bytes:
        _fail(ConfigStatus.TOO_LARGE, f"{n} bytes exceed the config buffer ({buffer_bytes} bytes)")
    if n < MIN_LENGTH:
        _fail(ConfigStatus.BAD_LENGTH, f"{n} bytes is shorter than a header and CRC ({MIN_LENGTH})")
    if data[0:4] != MAGIC:
        _fail(ConfigStatus.BAD_MAGIC, f"bad magic {data[0:4]!r}, expected {MAGIC!r} "
                                      "(not a minirdu bitstream)")
    version = _u16(data, 4)
    if version != VERSION:
        _fail(ConfigStatus.BAD_VERSION, f"format version {version}, this reader knows {VERSION}")
    header_size, total = _u16(data, 6), _u32(data, 8)
    if header_size != HEADER_SIZE:
        _fail(ConfigStatus.BAD_LENGTH, f"header size {header_size}, expected {HEADER_SIZE}")
    if total != n:
        what = "truncated" if n < total else "extended"
        _fail(ConfigStatus.BAD_LENGTH, f"{what}: header says {total} bytes, got {n}")
    if n % 4:
        _fail(ConfigStatus.BAD_LENGTH, f"length {n} is not a multiple of 4")
    stored, actual = _u32(data, n - 4), crc32(data[:n - 4])
    if stored != actual:
        _fail(ConfigStatus.BAD_CRC, f"CRC-32 mismatch: stored {stored:08x}, computed {actual:08x}")
    digest = data[32:64]
    if params is not None and digest != params.digest():
        _fail(ConfigStatus.BAD_GEOMETRY, f"built for geometry {digest.hex()[:16]}..., this chip is "
                                         f"{params.digest().hex()[:16]}...")
    count = _u16(data, 16)
    end = n - CRC_SIZE
    table_end = HEADER_SIZE + SECTION_ENTRY_SIZE * count
    if count > MAX_SECTIONS:
        _fail(ConfigStatus.BAD_SECTION, f"{count} sections, at most {MAX_SECTIONS}")
    if table_end > end:
        _fail(ConfigStatus.BAD_SECTION, "section table runs past the end of the file")
    sections, seen = [], set()
    for i in range(count):
        o = HEADER_SIZE + SECTION_ENTRY_SIZE * i
        s = SectionEntry(_u32(data, o), _u32(data, o + 4), _u32(data, o + 8))
        where = f"section {i} (type {s.type})"
        if s.type not in SectionType.__members__.values():
            _fail(ConfigStatus.BAD_SECTION, f"{where}: unknown section type")
        if s.type in seen:
            _fail(ConfigStatus.BAD_SECTION, f"{where}: duplicate {SectionType(s.type).name}")
        seen.add(s.type)
        if s.offset % 8:
            _fail(ConfigStatus.BAD_SECTION, f"{where}: offset {s.offset} not 8-byte aligned")
        if s.offset < table_end or s.offset + s.length > end:
            _fail(ConfigStatus.BAD_SECTION, f"{where}: [{s.offset}, +{s.length}) lies outside "
                                            f"[{table_end}, {end})")
        if s.type == SectionType.CONFIG and s.length % RECORD_SIZE:
            _fail(ConfigStatus.BAD_SECTION, f"{where}: CONFIG length {s.length} is not a "
                                            f"multiple of {RECORD_SIZE}")
        if s.type == SectionType.KERNELS and (s.offset % KERNEL_ENTRY_SIZE
                                              or s.length % KERNEL_ENTRY_SIZE):
            _fail(ConfigStatus.BAD_SECTION, f"{where}: KERNELS must be {KERNEL_ENTRY_SIZE}-byte "
                                            "aligned and sized")
        sections.append(s)
    if params is not None and check_units:
        units = unit_map(params)
        for s in sections:
            if s.type != SectionType.CONFIG:
                continue
            for k in range(s.length // RECORD_SIZE):
                o = s.offset + RECORD_SIZE * k
                uid, reg = data[o], data[o + 1]
                if uid >= len(units):
                    _fail(ConfigStatus.UNKNOWN_UNIT, f"config record {k}: unit id {uid} does not "
                                                     f"exist (chip has {len(units)} units)")
                if reg >= units[uid].n_regs:
                    _fail(ConfigStatus.REG_OUT_OF_RANGE,
                          f"config record {k}: {units[uid].name} register {reg} out of range "
                          f"(0..{units[uid].n_regs - 1})")
    header = {"magic": data[0:4], "version": version, "header_size": header_size,
              "total_length": total, "flags": _u32(data, 12), "section_count": count,
              "params_digest": digest, "crc": stored}
    return header, sections


def check(data: bytes, params: RduParams, buffer_bytes: int | None = None) -> ConfigStatus:
    """The status the config controller reports for ``data`` (hardware checks only, no raise)."""
    try:
        _validate(data, params, buffer_bytes)
    except BitstreamError as e:
        return e.code
    return ConfigStatus.OK


def _json_section(data: bytes, s: SectionEntry):
    name = SectionType(s.type).name
    try:
        obj = json.loads(data[s.offset:s.offset + s.length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        _fail(ConfigStatus.BAD_SECTION, f"{name} is not UTF-8 JSON: {e}")
    if not isinstance(obj, dict):
        _fail(ConfigStatus.BAD_SECTION, f"{name} must be a JSON object")
    return obj


@dataclass
class Bitstream:
    """A bitstream in memory. ``to_bytes()`` writes the format above; ``from_bytes()`` reads it."""
    params_digest: bytes
    writes: list[ConfigWrite] = field(default_factory=list)
    kernels: list[Kernel] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    routes: dict | None = None
    flags: int = 0
    # Filled by from_bytes (not part of equality): the section table and the stored CRC.
    sections: list[SectionEntry] = field(default_factory=list, compare=False)
    crc: int | None = field(default=None, compare=False)

    def __post_init__(self):
        self.params_digest = bytes(self.params_digest)
        self.writes = [w if isinstance(w, ConfigWrite) else ConfigWrite(*w) for w in self.writes]

    @classmethod
    def for_params(cls, params: RduParams, writes=(), kernels=(), metadata=None, routes=None,
                   flags: int = 0) -> "Bitstream":
        """A bitstream for geometry ``params``; records ``params`` in METADATA for tools."""
        md = {"params": params.to_dict()}
        md.update(metadata or {})
        return cls(params.digest(), [ConfigWrite(*w) for w in writes], list(kernels), md, routes,
                   flags)

    # ---- writer -------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        if len(self.params_digest) != 32:
            raise ValueError("params_digest must be 32 bytes")
        payloads: list[tuple[int, bytes, int]] = []   # (type, payload, alignment)
        cfg = bytearray()
        for w in self.writes:
            w = w if isinstance(w, ConfigWrite) else ConfigWrite(*w)
            if not (0 <= w.unit < 256 and 0 <= w.reg < 256 and 0 <= w.value < 2**32):
                raise ValueError(f"config write out of field range: {w}")
            cfg += struct.pack("<BBHI", w.unit, w.reg, 0, w.value)
        payloads.append((SectionType.CONFIG, bytes(cfg), 8))
        if self.kernels:
            kt = bytearray()
            for k in self.kernels:
                name = k.name.encode("utf-8")
                if len(name) > KERNEL_NAME_BYTES:
                    raise ValueError(f"kernel name {k.name!r} longer than {KERNEL_NAME_BYTES} bytes")
                mask = 0
                for u in k.units:
                    if not 0 <= u < 8 * KERNEL_MASK_BYTES:
                        raise ValueError(f"kernel {k.name!r}: unit id {u} out of range")
                    mask |= 1 << u
                kt += struct.pack("<HHI", k.id, k.flags, k.iterations)
                kt += name.ljust(KERNEL_NAME_BYTES, b"\0")
                kt += mask.to_bytes(KERNEL_MASK_BYTES, "little")
            payloads.append((SectionType.KERNELS, bytes(kt), KERNEL_ENTRY_SIZE))
        payloads.append((SectionType.METADATA,
                         json.dumps(self.metadata, sort_keys=True).encode("utf-8"), 8))
        if self.routes is not None:
            payloads.append((SectionType.ROUTES,
                             json.dumps(self.routes, sort_keys=True).encode("utf-8"), 8))
        pos = HEADER_SIZE + SECTION_ENTRY_SIZE * len(payloads)
        table, body = bytearray(), bytearray()
        for typ, payload, align in payloads:
            pos += -pos % align
            body += b"\0" * (pos - HEADER_SIZE - SECTION_ENTRY_SIZE * len(payloads) - len(body))
            table += struct.pack("<IIII", typ, pos, len(payload), 0)
            body += payload
            pos += len(payload)
        pos += -pos % 4
        body += b"\0" * (pos - HEADER_SIZE - len(table) - len(body))
        total = pos + CRC_SIZE
        header = struct.pack("<4sHHIIH14s32s", MAGIC, VERSION, HEADER_SIZE, total, self.flags,
                             len(payloads), b"\0" * 14, bytes(self.params_digest))
        blob = header + bytes(table) + bytes(body)
        assert len(blob) == total - CRC_SIZE
        return blob + struct.pack("<I", crc32(blob))

    # ---- reader -------------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes, params: RduParams | None, *,
                   buffer_bytes: int | None = None) -> "Bitstream":
        """Validate (hardware checks, then software-only ones) and decode ``data``.

        Raises :class:`BitstreamError` and nothing else on bad input. ``params=None`` skips the
        geometry and unit checks (for tools that learn the geometry from METADATA).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("bitstream data must be bytes")
        data = bytes(data)
        header, sections = _validate(data, params, buffer_bytes)
        by_type = {s.type: s for s in sections}
        n_units = len(unit_map(params)) if params is not None else 8 * KERNEL_MASK_BYTES
        bs = cls(header["params_digest"], flags=header["flags"], sections=sections,
                 crc=header["crc"])
        s = by_type.get(SectionType.CONFIG)
        if s is not None:
            for o in range(s.offset, s.offset + s.length, RECORD_SIZE):
                unit, reg, _, value = struct.unpack_from("<BBHI", data, o)
                bs.writes.append(ConfigWrite(unit, reg, value))
        s = by_type.get(SectionType.KERNELS)
        if s is not None:
            for o in range(s.offset, s.offset + s.length, KERNEL_ENTRY_SIZE):
                kid, kflags, iters = struct.unpack_from("<HHI", data, o)
                raw = data[o + 8:o + 8 + KERNEL_NAME_BYTES].rstrip(b"\0")
                try:
                    name = raw.decode("utf-8")
                except UnicodeDecodeError:
                    _fail(ConfigStatus.BAD_SECTION, f"kernel {kid}: name is not UTF-8")
                mask = int.from_bytes(data[o + 32:o + 64], "little")
                units = tuple(u for u in range(8 * KERNEL_MASK_BYTES) if mask >> u & 1)
                bad = [u for u in units if u >= n_units]
                if bad:
                    _fail(ConfigStatus.UNKNOWN_UNIT, f"kernel {kid} ({name}): unit id {bad[0]} "
                                                     "does not exist")
                bs.kernels.append(Kernel(kid, name, units, iters, kflags))
        s = by_type.get(SectionType.METADATA)
        if s is not None:
            bs.metadata = _json_section(data, s)
        s = by_type.get(SectionType.ROUTES)
        if s is not None:
            bs.routes = _json_section(data, s)
        return bs

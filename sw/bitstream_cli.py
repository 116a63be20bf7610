"""``rdu inspect FILE.rbit``: decode a bitstream for a person.

Prints the header (with the geometry digest compared to the default ``RduParams`` and the CRC
check), the section table, the config writes grouped by unit (kind, index, grid position and
register names where the unit module defines them), the kernel table, the metadata and the
routes. The file is checked exactly as the chip's config controller would check it; a corrupt
file, or one built for a geometry that cannot be recovered, exits 2 with one line.

Geometry: a bitstream built for the default ``RduParams`` is decoded with it. Otherwise the
``params`` recorded in METADATA are used if their digest matches the header's. With
``--params-default`` the file must match the default geometry.
"""

from __future__ import annotations

import json
from collections import defaultdict

from hdl.params import DEFAULT_PARAMS, RduParams
from hdl.unitmap import register_enum, unit_map
from sw.bitstream import (FLAG_LOOPED, Bitstream, BitstreamError, ConfigStatus, SectionType,
                          config_buffer_bytes)
from sw.cli import UserError, command

__all__ = ["inspect_text"]


def _reg_name(kind: str, reg: int) -> str:
    regs = register_enum(kind)
    if regs is not None:
        try:
            return f"{regs(reg).name} (0x{reg:02x})"
        except ValueError:
            pass
    return f"reg 0x{reg:02x}"


def _pos(u) -> str:
    if u.pos is None:
        return ""
    r, c = u.pos
    return f" at row {r} col {c}"


def _geometry(data: bytes, params_default: bool) -> tuple[RduParams, str]:
    if params_default:
        return DEFAULT_PARAMS, "default RduParams (--params-default)"
    bs = Bitstream.from_bytes(data, None)            # structure, CRC; no geometry yet
    if bs.params_digest == DEFAULT_PARAMS.digest():
        return DEFAULT_PARAMS, "default RduParams"
    md = bs.metadata.get("params") if isinstance(bs.metadata, dict) else None
    if isinstance(md, dict):
        try:
            p = RduParams.from_dict(md)
        except (TypeError, ValueError):
            p = None
        if p is not None and p.digest() == bs.params_digest:
            return p, f"RduParams from METADATA ({p.grid_rows}x{p.grid_cols} grid)"
    raise BitstreamError(ConfigStatus.BAD_GEOMETRY,
                         f"built for geometry {bs.params_digest.hex()[:16]}..., not the default "
                         f"RduParams ({DEFAULT_PARAMS.digest().hex()[:16]}...), and METADATA "
                         "records no matching params")


def inspect_text(data: bytes, *, params_default: bool = False, name: str = "bitstream") -> str:
    """The report ``rdu inspect`` prints; raises :class:`BitstreamError` on a bad file."""
    params, geo_note = _geometry(data, params_default)
    bs = Bitstream.from_bytes(data, params,
                              buffer_bytes=max(len(data), config_buffer_bytes(params)))
    units = unit_map(params)
    match = bs.params_digest == DEFAULT_PARAMS.digest()
    out = []
    w = out.append
    w(f"{name}: {len(data)} bytes")
    flags = [n for bit, n in ((FLAG_LOOPED, "LOOPED"),) if bs.flags & bit]
    w(f"header: magic RBIT, version 1, header 64 B, length {len(data)} B, "
      f"flags 0x{bs.flags:x}{' (' + ', '.join(flags) + ')' if flags else ''}")
    w(f"params digest: {bs.params_digest.hex()} "
      f"({'matches' if match else 'does NOT match'} default RduParams)")
    w(f"geometry: {geo_note}, {len(units)} configurable units")
    w(f"crc-32: {bs.crc:08x} ok")
    buf = config_buffer_bytes(params)
    if len(data) > buf:
        w(f"warning: {len(data)} bytes exceed the config buffer ({buf} bytes): the chip refuses "
          "this file (TOO_LARGE)")

    w("")
    w(f"sections ({len(bs.sections)}):")
    w(f"  {'#':>2}  {'type':<9} {'offset':>7} {'length':>7}")
    for i, s in enumerate(bs.sections):
        extra = ""
        if s.type == SectionType.CONFIG:
            extra = f"  {s.length // 8} writes"
        elif s.type == SectionType.KERNELS:
            extra = f"  {s.length // 64} kernels"
        w(f"  {i:>2}  {SectionType(s.type).name:<9} {s.offset:>7} {s.length:>7}{extra}")

    names = {}
    if isinstance(bs.routes, dict) and isinstance(bs.routes.get("units"), dict):
        names = {str(k): str(v) for k, v in bs.routes["units"].items()}

    by_unit = defaultdict(list)
    for wr in bs.writes:
        by_unit[wr.unit].append(wr)
    w("")
    w(f"config writes ({len(bs.writes)} to {len(by_unit)} units, in unit order; the chip applies "
      "them in file order):")
    for uid in sorted(by_unit):
        u = units[uid]
        label = f"  [{names[str(uid)]}]" if str(uid) in names else ""
        w(f"  {u.name:<10} id {uid:>3}, {u.kind} {u.index}{_pos(u)}, {u.n_regs} regs{label}")
        for wr in by_unit[uid]:
            w(f"      {_reg_name(u.kind, wr.reg):<28} = 0x{wr.value:08x}  ({wr.value})")

    w("")
    w(f"kernels ({len(bs.kernels)}):")
    for k in bs.kernels:
        looped = f", looped x{k.iterations}" if k.flags & FLAG_LOOPED else \
            f", iterations {k.iterations}"
        ulist = " ".join(units[u].name for u in k.units) or "-"
        w(f"  id {k.id:<4} {k.name!r}{looped}, flags 0x{k.flags:x}; units: {ulist}")

    w("")
    md = {k: v for k, v in bs.metadata.items() if k != "params"}
    w(f"metadata ({len(md)} keys{', plus params' if 'params' in bs.metadata else ''}):")
    for k in sorted(md):
        v = md[k]
        text = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        if len(text) > 100:
            text = text[:97] + "..."
        w(f"  {k}: {text}")

    w("")
    if bs.routes is None:
        w("routes: none (no ROUTES section)")
    else:
        routes = bs.routes.get("routes", [])
        routes = routes if isinstance(routes, list) else []
        w(f"routes ({len(routes)}; {len(names)} named units):")
        for uid in sorted(names, key=lambda s: (len(s), s)):
            w(f"  unit {uid}: {names[uid]}")
        for r in routes:
            if not isinstance(r, dict):
                w(f"  {json.dumps(r)}")
                continue
            hops = r.get("hops") or []
            via = f" via {' '.join(map(str, hops))}" if hops else ""
            w(f"  {r.get('net', '?'):<7} {r.get('src', '?')} -> {r.get('dst', '?')}{via}")
    return "\n".join(out)


@command("inspect", "decode a bitstream (.rbit): header, sections, config writes, kernels, routes")
def _inspect(parser):
    parser.add_argument("file", metavar="FILE.rbit", help="bitstream written by rdu compile")
    parser.add_argument("--params-default", action="store_true",
                        help="check against the default RduParams instead of the geometry "
                             "recorded in the file")

    def run(args):
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"cannot read {args.file}: {e.strerror or e}") from None
        try:
            text = inspect_text(data, params_default=args.params_default, name=args.file)
        except BitstreamError as e:
            raise UserError(f"{args.file}: {e.code.name}: {e.message}") from None
        print(text)
        return 0
    return run

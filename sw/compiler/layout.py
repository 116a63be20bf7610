"""HBM layout of a quantised model: where every parameter, the KV cache and the I/O words live.

Contract
--------
:func:`plan_layout` places exactly the parameters of the decode graph
(:func:`sw.compiler.graph.build_graph`), the KV cache and an I/O area in HBM and returns an
:class:`HbmLayout`; :meth:`HbmLayout.pack` turns a QuantModel into the initial HBM image (KV
cache zero), the ``read_*``/``unpack_*`` methods read everything back, :meth:`HbmLayout.report`
prints the map. A model that does not fit ``RduParams.hbm_bytes`` is a :class:`LayoutError`
that says how many bytes what needs and what to change.

Map (increasing addresses)::

    I/O area        token (in), next_token (out), logits (out, int32)
    shared tables   rsqrt, recip, exp (int32; resident on chip for a step), rope_cos, rope_sin
    embedding       emb: int16 rows, each padded to whole beats (one row gathered per token)
    layer blocks    block l at layers_base + l * layer_stride: the layer's parameters in the
                    order the layer kernel uses them, at the same offset in every block
    final           normf_rq, lm_head, lm_head_rq
    KV cache        block l at kv_base + l * kv_layer_stride: k_cache, then v_cache

Alignment. Every region starts on a burst boundary (``beat_bytes * hbm_burst_beats``) and owns
whole bursts, so an AGCU program for it never shares a burst with another region. The two
per-layer strides (and the bases of their blocks) are multiples of the channel-interleave period
(``burst * hbm_channels``): every layer's copy of a tensor then starts on the same channel, so
the iterations of a looped kernel see the same HBM channel pattern.

Encodings (``Param.encoding``), all little-endian:

``rows``   GEMV weights (int8) and the embedding (int16): row-major, each row padded with
           zeros to whole beats. This is the "row-major" W image of ``sw/kernels/gemv.py``
           (``GemvKernel.w_image``) when ``cols`` is a multiple of the beat; the GEMV kernel
           refuses other widths (``cols % beat_bytes``), so for them the compiler runs the
           padded width, with x padded by zeros as well (zero weights make the pad inert).
``words``  REQUANT operands, one int32 word per output element: ``m | s << 16``
           (``hdl.pcu.PcuConfig.requant_word``), 16 per beat, as the PCU takes them on a
           scalar input (``PcuConfig.gemv(..., scales_from_sin=True)``). Per-layer scalars
           (RoPE, softmax) are one word each: with kernel looping the layer's constants must be
           data fetched per iteration, not bitstream immediates.
``array``  the table's elements packed in their QuantModel width (int16 or int32), row-major,
           no padding between rows.

KV cache (int8, ``context`` positions, default ``config.max_seq_len``): per layer and per cache
(K, V) *position-major*: row ``t`` holds position ``t`` of every KV head, ``[kv_head][d]``
(``kv_dim`` bytes), padded to ``kv_row_bytes`` = the next power of two when ``kv_dim`` is less
than a beat (it then divides the beat), else whole beats. Why: a decode step appends one row per
cache; HBM writes are whole beats without byte masks, so the append is a read-modify-write of
the beat(s) holding row ``pos`` and a row must never straddle two beats; and attention reads
rows ``0..pos`` as one sequential stream for all heads. ``kv_bytes_per_token(pos)`` counts
exactly that: the beats holding rows ``0..pos`` read (the last also serves the merge) and the
beat(s) holding row ``pos`` written, for K and V of every layer.

Per-token figures: ``weight_bytes_per_token`` is every per-layer region of every layer, the
final norm and LM head, the resident tables once, one embedding row and one beat-rounded row of
each RoPE table (worst position), all at beat granularity (row padding included, burst padding
between regions not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hdl.params import DEFAULT_PARAMS, RduParams
from hdl.pcu import PcuConfig
from sw.compiler.graph import Param, build_graph
from sw.quant import QuantModel

__all__ = ["LayoutError", "Region", "HbmLayout", "plan_layout", "requant_words",
           "fmt_bytes"]

_DT = {8: "<i1", 16: "<i2", 32: "<i4"}


class LayoutError(ValueError):
    """The model cannot be laid out in this HBM (too big, wrong shapes, bad context)."""


def _up(v: int, a: int) -> int:
    return -(-v // a) * a


def fmt_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def requant_words(m, s) -> np.ndarray:
    """REQUANT words ``m | s << 16`` (uint32), element-wise, via ``PcuConfig.requant_word``."""
    m, s = np.asarray(m), np.asarray(s)
    flat = [PcuConfig.requant_word(int(a), int(b)) for a, b in zip(m.ravel(), s.ravel())]
    return np.array(flat, np.uint32).reshape(m.shape)


@dataclass(frozen=True)
class Region:
    """``count`` copies of a region, copy ``i`` at ``offset + i * stride`` (absolute bytes).

    ``nbytes``: the bytes an AGCU moves for the whole region (data, padded to beats);
    ``span``: the bytes it owns (``nbytes`` padded to bursts). ``row_bytes``: row pitch of
    ``rows`` encodings and of the KV cache. ``group``: ``io``, ``table``, ``embedding``,
    ``layer``, ``final`` or ``kv``; ``block_offset``: offset inside its layer block."""
    name: str
    group: str
    offset: int
    nbytes: int
    span: int
    stride: int = 0
    count: int = 1
    row_bytes: int = 0
    block_offset: int = 0
    param: Param | None = None
    shape: tuple = ()
    bits: int = 8

    def address(self, copy: int = 0) -> int:
        if not 0 <= copy < self.count:
            raise IndexError(f"{self.name}: copy {copy} outside 0..{self.count - 1}")
        return self.offset + copy * self.stride

    @property
    def encoding(self) -> str:
        if self.param is not None:
            return self.param.encoding
        return "kv rows" if self.group == "kv" else "array"


class HbmLayout:
    """The placed model; build it with :func:`plan_layout`."""

    def __init__(self, params: RduParams, qm: QuantModel, context: int):
        self.params = params
        self.config = c = qm.config
        self.model_name = qm.name
        self.context = context
        bb = params.beat_bytes
        self.beat = bb
        self.burst = bb * params.hbm_burst_beats
        self.period = self.burst * params.hbm_channels          # channel-interleave period
        graph = build_graph(qm)
        graph.assert_layers_identical()
        self._params = {p.key: p for p in graph.params()}
        self.regions: list[Region] = []
        at = 0

        def put(name, group, nbytes, kw=None, **more) -> Region:
            nonlocal at
            kw = {**(kw or {}), **more}
            r = Region(name, group, at, nbytes, _up(nbytes, self.burst), **kw)
            self.regions.append(r)
            at += r.span
            return r

        # I/O area: one int32 per scalar, the logits as int32
        put("token", "io", bb, shape=(), bits=32)
        put("next_token", "io", bb, shape=(), bits=32)
        put("logits", "io", _up(4 * c.vocab_size, bb), shape=(c.vocab_size,), bits=32)
        self._io_end = at
        shared = [p for p in graph.params() if p.layer < 0]
        final_names = {"normf_rq", "lm_head", "lm_head_rq"}
        for p in shared:                                          # tables, then the embedding
            if p.encoding == "array":
                put(p.name, "table", *self._param_size(p))
        for p in shared:
            if p.name == "emb":
                put(p.name, "embedding", *self._param_size(p))
        # layer blocks
        at = _up(at, self.period)
        self.layers_base = at
        block = []
        boff = 0
        for p in graph.layer_params(0):
            nbytes, kw = self._param_size(p)
            block.append((p, nbytes, kw, boff))
            boff += _up(nbytes, self.burst)
        self.layer_block_bytes = boff
        self.layer_stride = _up(boff, self.period)
        for p, nbytes, kw, off in block:
            self.regions.append(Region(p.name, "layer", self.layers_base + off, nbytes,
                                       _up(nbytes, self.burst), self.layer_stride, c.n_layers,
                                       block_offset=off, **kw))
        at = self.layers_base + c.n_layers * self.layer_stride
        for p in shared:
            if p.name in final_names:
                put(p.name, "final", *self._param_size(p))
        unplaced = [p.name for p in shared
                    if p.name not in {r.name for r in self.regions}]
        if unplaced:                                              # pragma: no cover
            raise LayoutError(f"no place for shared parameters {unplaced}")
        # KV cache
        kv_dim = c.kv_dim * qm.kv_bits // 8
        self.kv_row_bytes = (1 << (kv_dim - 1).bit_length()) if kv_dim < bb else _up(kv_dim, bb)
        at = _up(at, self.period)
        self.kv_base = at
        cache = _up(context * self.kv_row_bytes, bb)
        span = _up(cache, self.burst)
        self.kv_layer_stride = _up(2 * span, self.period)
        for i, name in enumerate(("k_cache", "v_cache")):
            self.regions.append(Region(name, "kv", self.kv_base + i * span, cache, span,
                                       self.kv_layer_stride, c.n_layers,
                                       row_bytes=self.kv_row_bytes, block_offset=i * span,
                                       shape=(c.n_kv_heads, context, c.head_dim),
                                       bits=qm.kv_bits))
        self.kv_bytes = c.n_layers * self.kv_layer_stride
        self.total_bytes = self.kv_base + self.kv_bytes
        self._by_name = {r.name: r for r in self.regions}

    def _param_size(self, p: Param) -> tuple[int, dict]:
        bb = self.beat
        kw = {"param": p, "shape": p.shape, "bits": p.bits}
        if p.encoding == "rows":
            row = _up(p.row_nbytes, bb)
            return p.shape[0] * row, {**kw, "row_bytes": row}
        if p.encoding == "words":
            return _up(4 * max(1, int(np.prod(p.shape))), bb), kw
        return _up(p.nbytes, bb), {**kw, "row_bytes": p.row_nbytes if len(p.shape) > 1 else 0}

    # ---- lookup ------------------------------------------------------------------------------
    def region(self, name: str) -> Region:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no region {name!r} (regions: {', '.join(self._by_name)})") from None

    def address(self, name: str, layer: int = -1) -> int:
        """Byte address of region ``name`` (of ``layer`` for per-layer regions)."""
        r = self.region(name)
        if r.count > 1 or r.group in ("layer", "kv"):
            if layer < 0:
                raise ValueError(f"{name} is per layer: give the layer")
            return r.address(layer)
        if layer >= 0:
            raise ValueError(f"{name} is not per layer")
        return r.offset

    def extents(self) -> list[tuple[str, int, int]]:
        """``(label, start, end)`` of every copy of every region (the bytes it owns)."""
        out = []
        for r in self.regions:
            for i in range(r.count):
                label = r.name if r.group not in ("layer", "kv") else f"l{i}.{r.name}"
                a = r.address(i)
                out.append((label, a, a + r.span))
        return sorted(out, key=lambda e: e[1])

    # ---- figures -----------------------------------------------------------------------------
    def _row_read(self, r: Region) -> int:
        """Worst-case bytes (whole beats) read for one row of a row-accessed region."""
        if r.param.encoding == "rows":
            return r.row_bytes
        rb, bb = r.row_bytes, self.beat
        return max((((i + 1) * rb - 1) // bb - (i * rb) // bb + 1) * bb
                   for i in range(r.shape[0]))

    @property
    def weight_bytes_per_token(self) -> int:
        """HBM bytes of parameters read by one decode step (see the module docstring)."""
        n = 0
        for r in self.regions:
            if r.param is None:
                continue
            n += self._row_read(r) if r.param.access == "row" else r.nbytes * r.count
        return n

    def kv_bytes_per_token(self, pos: int) -> int:
        """HBM bytes of KV cache moved by the step at position ``pos`` (reads + writes)."""
        if not 0 <= pos < self.context:
            raise ValueError(f"position {pos} outside the context 0..{self.context - 1}")
        bb, rb = self.beat, self.kv_row_bytes
        read = _up((pos + 1) * rb, bb)
        write = (((pos + 1) * rb - 1) // bb - (pos * rb) // bb + 1) * bb
        return 2 * self.config.n_layers * (read + write)

    @property
    def io_bytes_per_token(self) -> int:
        """Token read, logits and next token written."""
        return sum(self.region(n).nbytes for n in ("token", "next_token", "logits"))

    def bytes_per_token(self, pos: int) -> int:
        return self.weight_bytes_per_token + self.kv_bytes_per_token(pos) + self.io_bytes_per_token

    @property
    def io_bytes(self) -> int:
        """Bytes owned by the I/O area (it starts at address 0)."""
        return self._io_end

    @property
    def weights_total(self) -> int:
        """Bytes owned by parameters, alignment gaps between their groups included."""
        return self.kv_base - self._io_end

    @property
    def params_padding(self) -> int:
        """Bytes of the parameter part that hold no data: beat/burst padding of every region
        and the interleave alignment of the layer blocks."""
        data = sum(r.nbytes * r.count for r in self.regions if r.param is not None)
        rowpad = sum((r.row_bytes - r.param.row_nbytes) * r.shape[0] * r.count
                     for r in self.regions if r.param is not None and r.param.encoding == "rows")
        return self.weights_total - data + rowpad

    # ---- image -------------------------------------------------------------------------------
    def _check_qm(self, qm: QuantModel) -> None:
        if qm.config != self.config:
            raise LayoutError(f"this layout was planned for {self.config}; the model has "
                              f"{qm.config}")

    def _param_of(self, name: str, layer: int) -> Param:
        try:
            return self._params[(name, layer)]
        except KeyError:
            raise KeyError(f"no parameter {name!r} of layer {layer}") from None

    def _encode(self, r: Region, p: Param, qm: QuantModel) -> bytes:
        vals = p.values(qm)
        for v in vals:
            if tuple(np.shape(v)) != tuple(p.shape):
                raise LayoutError(f"{p.label}: QuantModel array has shape {np.shape(v)}, the "
                                  f"layout expects {p.shape}")
        if p.encoding == "words":
            m, s = vals
            data = requant_words(m, s).astype("<u4").tobytes()
        else:
            (v,) = vals
            v = np.asarray(v)
            lo, hi = -(1 << (p.bits - 1)), (1 << (p.bits - 1)) - 1
            if v.size and (int(v.min()) < lo or int(v.max()) > hi):
                raise LayoutError(f"{p.label}: values outside int{p.bits}")
            a = v.astype(_DT[p.bits])
            if p.encoding == "rows":
                rows = a.reshape(p.shape[0], -1)
                pad = r.row_bytes // (p.bits // 8) - rows.shape[1]
                data = np.pad(rows, ((0, 0), (0, pad))).tobytes()
            else:
                data = a.tobytes()
        assert len(data) <= r.nbytes
        return data

    def pack(self, qm: QuantModel) -> bytes:
        """The initial HBM image (``total_bytes`` long; KV cache, I/O and padding zero)."""
        self._check_qm(qm)
        img = bytearray(self.total_bytes)
        for r in self.regions:
            if r.param is None:
                continue
            for i in range(r.count):
                layer = i if r.group == "layer" else -1
                data = self._encode(r, self._param_of(r.name, layer), qm)
                a = r.address(i)
                img[a:a + len(data)] = data
        return bytes(img)

    def _view(self, image, r: Region, copy: int = 0) -> memoryview:
        if len(image) < self.total_bytes:
            raise LayoutError(f"image of {len(image)} B is shorter than the layout "
                              f"({self.total_bytes} B)")
        a = r.address(copy)
        return memoryview(image)[a:a + r.nbytes]

    def read_param(self, image, name: str, layer: int = -1) -> tuple:
        """The QuantModel arrays of parameter ``name`` (of ``layer``) read back from
        ``image``: ``(w,)`` for rows/array, ``(m, s)`` (int32) for REQUANT words."""
        p = self._param_of(name, layer)
        r = self.region(name)
        buf = self._view(image, r, max(layer, 0))
        if p.encoding == "words":
            n = max(1, int(np.prod(p.shape)))
            w = np.frombuffer(buf, "<u4", n).astype(np.int64)
            m = (w & 0x7FFF).astype(np.int32).reshape(p.shape)
            s = ((w >> 16) & 0x3F).astype(np.int32).reshape(p.shape)
            return m, s
        dt = np.dtype(_DT[p.bits])
        if p.encoding == "rows":
            per_row = r.row_bytes // dt.itemsize
            a = np.frombuffer(buf, dt, p.shape[0] * per_row).reshape(p.shape[0], per_row)
            a = a[:, : int(np.prod(p.shape[1:]))]
        else:
            a = np.frombuffer(buf, dt, int(np.prod(p.shape)))
        return (a.reshape(p.shape).astype(dt.newbyteorder("=")),)

    def unpack_params(self, image) -> dict:
        """``{QuantModel attribute: array}`` for every attribute the graph binds, per-layer ones
        stacked on axis 0 (``dataclasses.replace(qm, **layout.unpack_params(img))`` rebuilds
        the model)."""
        per_layer: dict[str, dict[int, np.ndarray]] = {}
        out = {}
        for (name, layer), p in self._params.items():
            for ref, val in zip(p.refs, self.read_param(image, name, layer)):
                if ref.layer < 0:
                    out[ref.attr] = val
                else:
                    per_layer.setdefault(ref.attr, {})[ref.layer] = val
        for attr, d in per_layer.items():
            out[attr] = np.stack([d[l] for l in range(self.config.n_layers)])
        return out

    def read_kv(self, image) -> tuple[np.ndarray, np.ndarray]:
        """K and V caches as ``GoldenDecoder`` holds them: ``(layers, kv_heads, context, hd)``."""
        c = self.config
        out = []
        for name in ("k_cache", "v_cache"):
            r = self.region(name)
            layers = []
            for l in range(c.n_layers):
                rows = np.frombuffer(self._view(image, r, l), np.int8,
                                     self.context * self.kv_row_bytes)
                rows = rows.reshape(self.context, self.kv_row_bytes)[:, : c.kv_dim]
                layers.append(rows.reshape(self.context, c.n_kv_heads, c.head_dim)
                              .transpose(1, 0, 2))
            out.append(np.ascontiguousarray(np.stack(layers)))
        return out[0], out[1]

    def write_kv(self, image: bytearray, k_cache, v_cache) -> None:
        """Store ``(layers, kv_heads, context, hd)`` int8 caches into ``image`` in place."""
        c = self.config
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            cache = np.asarray(cache)
            want = (c.n_layers, c.n_kv_heads, self.context, c.head_dim)
            if cache.shape[:2] != want[:2] or cache.shape[2] < self.context or \
                    cache.shape[3] != want[3]:
                raise LayoutError(f"{name}: shape {cache.shape}, expected {want}")
            r = self.region(name)
            for l in range(c.n_layers):
                rows = cache[l, :, : self.context].astype(np.int8).transpose(1, 0, 2) \
                    .reshape(self.context, c.kv_dim)
                rows = np.pad(rows, ((0, 0), (0, self.kv_row_bytes - c.kv_dim)))
                a = r.address(l)
                image[a:a + rows.size] = rows.tobytes()

    def write_io(self, image: bytearray, name: str, value) -> None:
        """Write an I/O tensor (``token``, ``next_token``, ``logits``) as int32."""
        r = self.region(name)
        if r.group != "io":
            raise ValueError(f"{name} is not an I/O tensor")
        data = np.asarray(value, np.int64)
        if data.shape != r.shape:
            raise ValueError(f"{name}: shape {data.shape}, expected {r.shape}")
        data = data.astype("<i4").tobytes()
        image[r.offset:r.offset + len(data)] = data

    def read_io(self, image, name: str) -> np.ndarray:
        r = self.region(name)
        if r.group != "io":
            raise ValueError(f"{name} is not an I/O tensor")
        n = int(np.prod(r.shape))
        return np.frombuffer(self._view(image, r), "<i4", n).astype(np.int32).reshape(r.shape)

    # ---- report ------------------------------------------------------------------------------
    def report(self) -> str:
        """A table an architect can read: region, offset, size, per-layer stride, total, % of
        HBM; then the per-token traffic."""
        p, c = self.params, self.config
        hbm = p.hbm_bytes
        pct = lambda n: f"{100.0 * n / hbm:5.1f}"
        lines = [f"HBM layout of {self.model_name} ({c.n_layers} layers, dim {c.dim}, context "
                 f"{self.context}) in {fmt_bytes(hbm)} of HBM: beat {self.beat} B, burst "
                 f"{self.burst} B, {p.hbm_channels} channels (interleave period {self.period} B)",
                 f"{'region':<20} {'format':<22} {'offset':>10} {'bytes':>9} {'stride':>8} "
                 f"{'count':>5} {'total':>10} {'% HBM':>6}"]

        def fmt(r: Region) -> str:
            dims = "x".join(str(d) for d in r.shape) or "1"
            if r.encoding == "words":
                return f"rq words {dims}"
            if r.encoding == "rows":
                return f"rows {dims} i{r.bits} @{r.row_bytes}"
            if r.encoding == "kv rows":
                return f"{self.context} rows @{r.row_bytes} B"
            return f"{dims} i{r.bits}"

        def line(name, form, off, nbytes, stride, count, total):
            lines.append(f"{name:<20} {form:<22} {off:>10} {nbytes:>9,} {stride:>8} {count:>5} "
                         f"{total:>10,} {pct(total)}")

        groups = {}
        for r in self.regions:
            groups.setdefault(r.group, []).append(r)
        titles = {"io": "I/O area", "table": "shared tables", "embedding": "embedding",
                  "final": "final norm, LM head"}
        for g in ("io", "table", "embedding"):
            lines.append(f"-- {titles[g]}")
            for r in groups.get(g, []):
                line(r.name, fmt(r), f"0x{r.offset:06x}", r.nbytes, "-", 1, r.span)
        for g, base, stride, block, label in (
                ("layer", self.layers_base, self.layer_stride, self.layer_block_bytes,
                 "layer blocks"),
                ("final", None, None, None, None),
                ("kv", self.kv_base, self.kv_layer_stride, 2 * self.region("k_cache").span,
                 "KV cache")):
            if g == "final":
                lines.append(f"-- {titles[g]}")
                for r in groups["final"]:
                    line(r.name, fmt(r), f"0x{r.offset:06x}", r.nbytes, "-", 1, r.span)
                continue
            lines.append(f"-- {label}: block l at 0x{base:06x} + l * {stride:,} "
                         f"({block:,} B used per block)")
            for r in groups[g]:
                line(r.name, fmt(r), f"+0x{r.block_offset:05x}", r.nbytes, f"{stride:,}",
                     r.count, r.span * r.count)
            line(f"({label.split()[0]} total)", "", f"0x{base:06x}", block * c.n_layers,
                 f"{stride:,}", c.n_layers, stride * c.n_layers)
        lines.append("-" * 96)
        lines.append(f"{'weights and tables':<20} {'(with alignment)':<22} {'':>10} {'':>9} "
                     f"{'':>8} {'':>5} {self.weights_total:>10,} {pct(self.weights_total)}")
        lines.append(f"{'KV cache':<20} {'':<22} {'':>10} {'':>9} {'':>8} {'':>5} "
                     f"{self.kv_bytes:>10,} {pct(self.kv_bytes)}")
        lines.append(f"{'total used':<20} {'':<22} {'0x%06x' % self.total_bytes:>10} {'':>9} "
                     f"{'':>8} {'':>5} {self.total_bytes:>10,} {pct(self.total_bytes)}")
        free = hbm - self.total_bytes
        lines.append(f"{'free':<20} {'':<22} {'':>10} {'':>9} {'':>8} {'':>5} {free:>10,} "
                     f"{pct(free)}")
        last = self.context - 1
        lines.append(f"per token: weights {self.weight_bytes_per_token:,} B; KV cache "
                     f"{self.kv_bytes_per_token(0):,} B at pos 0, "
                     f"{self.kv_bytes_per_token(last):,} B at pos {last}; I/O "
                     f"{self.io_bytes_per_token:,} B; total {self.bytes_per_token(0):,} .. "
                     f"{self.bytes_per_token(last):,} B")
        return "\n".join(lines)


def plan_layout(qm: QuantModel, params: RduParams = DEFAULT_PARAMS, *,
                context: int | None = None) -> HbmLayout:
    """Lay ``qm`` out in the HBM of ``params`` (KV cache for ``context`` positions, default
    ``config.max_seq_len``); :class:`LayoutError` if it does not fit."""
    c = qm.config
    ctx = c.max_seq_len if context is None else int(context)
    if not 1 <= ctx <= c.max_seq_len:
        raise LayoutError(f"context {ctx} outside 1..{c.max_seq_len} (the RoPE tables cover "
                          f"max_seq_len = {c.max_seq_len} positions)")
    lay = HbmLayout(params, qm, ctx)
    if lay.total_bytes > params.hbm_bytes:
        fit = _longest_context_that_fits(params, qm, ctx)
        need = fmt_bytes(_pow2_at_least(lay.total_bytes))
        hint = (f"raise RduParams.hbm_bytes to {need} or shorten the context "
                f"(plan_layout(..., context=N) fits for N <= {fit})" if fit else
                f"raise RduParams.hbm_bytes to {need} (the weights and tables alone do not fit, "
                f"at any context)")
        raise LayoutError(
            f"model {qm.name} needs {fmt_bytes(lay.total_bytes)} of HBM ({lay.total_bytes:,} B: "
            f"weights and tables {fmt_bytes(lay.weights_total)}, KV cache "
            f"{fmt_bytes(lay.kv_bytes)} at context {ctx}, I/O {fmt_bytes(lay.io_bytes)}); the "
            f"chip has {fmt_bytes(params.hbm_bytes)} (RduParams.hbm_bytes = {params.hbm_bytes:,}): {hint}")
    return lay


def _pow2_at_least(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _longest_context_that_fits(params: RduParams, qm: QuantModel, ctx: int) -> int:
    """Largest context < ctx whose layout fits, 0 if none (binary search)."""
    lo, hi = 0, ctx - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if HbmLayout(params, qm, mid).total_bytes <= params.hbm_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo

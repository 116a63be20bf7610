"""``rdu compile``: compile a model for the chip into bitstreams, a mapping report and a manifest.

``rdu compile [MODEL] [--mode op|layer|looped] -o OUT.rbit [--context N] [--pos P] [--token T]``

loads ``MODEL`` (a Hugging Face folder or a llama2.c ``.bin``; default ``models/kjv-280k``),
quantises it, lays it out in HBM and builds the kernels of one decode step
(:func:`sw.compiler.program.compile_decode`), then writes, next to each other:

``<stem>.<kernel>.rbit``
    one bitstream per *distinct* kernel of the step (op mode runs one kernel per pattern, each
    launch loads its own configuration). ``<kernel>`` is the builder's name (``norm_attn``,
    ``wq``, ``attn_softmax``, ``residual``, ``lm_head``...); a kernel built for one decode
    position carries ``.pos<P>`` (RoPE, KV append, attention scores, weighted sum: the runtime
    rebuilds them per position) and the embedding-row kernel ``.tok<T>`` (built per token).
    Per-layer kernels appear once: they are launched at sequencer iteration ``l`` for layer
    ``l`` (their AGCUs add ``l`` times the layer stride). Each file reads with ``rdu inspect``.
``<stem>.map.txt``
    the mapping report (:mod:`sw.compiler.report`): units, grid picture, routes, PMU buffer map
    and AGCU programs per kernel, bytes per launch, the HBM layout and the HBM bytes per token;
    in ``layer``/``looped`` mode also the programs of sections (units of every section), the
    section table (entry, HBM slot, bytes) and the launches of a token.
``<stem>.json``
    the manifest: mode, model, params digest, HBM map, the call order of a token (label,
    kernel, file, sequencer iteration), and per kernel its file, iterations, unit ids and bytes
    per launch. It is the authoritative list of the bitstreams of this compile.

``<stem>`` is ``OUT`` without its ``.rbit`` suffix (``-o build/kjv.rbit`` writes
``build/kjv.wq.rbit``, ``build/kjv.map.txt``, ``build/kjv.json``); when ``OUT`` is an existing
folder (or ends in ``/``) the stem is ``OUT/<model name>``. Missing folders are created. The
described step is position ``--pos`` (default 0) with input ``--token`` (default 0). The HBM
image itself is not written: the runtime rebuilds it from the model (the manifest records its
SHA-256).

Modes: ``op`` (89 host launches per token for the default model: every kernel is a launch),
``layer`` (embedding, one launch of the on-chip layer program per layer, the head program) and
``looped`` (embedding, one launch of the layer program for every layer, the head program). In
the fused modes every section (op kernel) of the programs still has its own bitstream, so the
same files are written; the chip loads them from their HBM slots itself. A missing or malformed
model, an unwritable output, an unknown mode or a model that cannot be compiled is refused with
a one-line error (exit status 2).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sw.cli import UserError, command

DEFAULT_MODEL = "models/kjv-280k"
MODES = ("op", "layer", "looped")

__all__ = ["compile_files", "output_stem"]

_EPILOG = """files written (STEM = OUT without .rbit; OUT a folder: STEM = OUT/<model name>):
  STEM.<kernel>.rbit   one bitstream per distinct kernel of the decode step (read them with
                       rdu inspect); <kernel> is the builder's name (norm_attn, wq, attn_softmax,
                       residual, lm_head, ...); per-layer kernels once (launched at sequencer
                       iteration l for layer l); kernels built for one position carry .pos<P>
                       (rope, kv_append, attention), the embedding row load .tok<T>
  STEM.map.txt         mapping report: units, grid, routes, PMU buffers, AGCU programs and bytes
                       per launch of every kernel; HBM layout; HBM bytes per token
  STEM.json            manifest: mode, model, params digest, HBM map, call order of a token,
                       bitstream files, iterations, unit ids, bytes per launch; layer/looped:
                       the section table, the programs and the launches of a token
modes: op = one host launch per kernel (1 + 17 x layers + 3); layer = embedding, one launch of
the on-chip layer program per layer, head program (1 + layers + 1); looped = embedding, one
launch of the layer program for all layers, head program (3)."""


def output_stem(out: str, model_name: str) -> Path:
    """The path prefix every output file starts with (see the module docstring)."""
    p = Path(out)
    if out.endswith(("/", os.sep)) or p.is_dir():
        return p / model_name
    if p.suffix == ".rbit":
        p = p.with_suffix("")
    if not p.name or p.name in (".", ".."):
        raise UserError(f"-o {out}: give a file name such as {out.rstrip('/')}/model.rbit")
    return p


def _writable_parent(stem: Path) -> None:
    parent = stem.parent if str(stem.parent) else Path(".")
    for up in (parent, *parent.parents):
        if up.exists():
            if not up.is_dir():
                raise UserError(f"cannot write into {parent}: {up} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {parent}: "
                        f"{e.strerror or e}") from None
    if not parent.is_dir():
        raise UserError(f"cannot write into {parent}: not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {parent}: permission denied")


def _write(path: Path, data) -> None:
    try:
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def compile_files(model_path: str, out: str, *, mode: str = "op", context: int | None = None,
                  pos: int = 0, token: int = 0, delta: bool = True) -> dict:
    """Compile ``model_path`` and write the files; return a summary dict (the manifest plus
    ``stem``, ``files``, ``timings``). Raises :class:`UserError` on bad input."""
    from hdl.params import DEFAULT_PARAMS
    from sw.bitstream import Bitstream, BitstreamError
    from sw.compiler.program import CompileError, compile_decode
    from sw.compiler.report import manifest, mapping_report, section_file_names, step_plan
    from sw.frontend import load_model
    from sw.frontend.errors import ModelFormatError
    from sw.golden import quantized
    from sw.kernels.builder import KernelError

    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if context is not None and context < 1:
        raise UserError(f"--context must be at least 1, got {context}")
    if pos < 0:
        raise UserError(f"--pos must be >= 0, got {pos}")
    if not out:
        raise UserError("give the output with -o FILE.rbit")
    timings = {}
    t0 = t = time.monotonic()

    def lap(name):
        nonlocal t
        now = time.monotonic()
        timings[name] = round(now - t, 3)
        t = now

    try:
        m = load_model(model_path)
    except (OSError, ModelFormatError) as e:
        raise UserError(f"cannot load {model_path}: {e}") from None
    except ValueError as e:              # shape errors of LlamaConfig / LlamaModel
        raise UserError(f"cannot load {model_path}: {str(e).splitlines()[0]}") from None
    lap("load")
    stem = output_stem(out, m.name)
    try:
        qm = quantized(m)
    except ValueError as e:
        raise UserError(f"cannot quantise {m.name}: {str(e).splitlines()[0]}") from None
    lap("quantise")
    p = DEFAULT_PARAMS
    try:
        prog = compile_decode(qm, p, mode=mode, context=context, delta=delta)
    except CompileError as e:
        raise UserError(str(e)) from None
    lap("layout")
    if pos >= prog.context:
        raise UserError(f"--pos {pos} is outside the context (0..{prog.context - 1})")
    if not 0 <= token < qm.config.vocab_size:
        raise UserError(f"--token {token} is outside the vocabulary "
                        f"(0..{qm.config.vocab_size - 1})")
    try:
        plan = step_plan(prog, pos, token)
    except (CompileError, KernelError) as e:
        raise UserError(f"cannot build the kernels: {str(e).splitlines()[0]}") from None
    lap("kernels")
    files = {e.label: f"{stem.name}.{e.label}.rbit" for e in plan.kernels}
    blobs = [(e.label, e.bitstream) for e in plan.kernels]
    sfiles = section_file_names(prog, stem.name, pos)
    sections = []
    if prog.sections:
        try:
            sections = [(sfiles[s.entry], prog.section_bitstream(s.entry, pos))
                        for s in prog.sections]
        except CompileError as e:
            raise UserError(str(e)) from None
        blobs += [(f"section {name}", data) for name, data in sections]
    for label, data in blobs:               # what rdu inspect and the chip will check
        try:
            bs = Bitstream.from_bytes(data, p)
        except BitstreamError as err:       # a compiler bug, reported as such
            raise UserError(f"internal error: the bitstream of {label} does not read back: "
                            f"{err}") from None
        if bs.params_digest != p.digest():
            raise UserError(f"internal error: {label} carries another params digest")
    lap("bitstreams")
    model_name = f"{m.name} ({model_path})"
    report = mapping_report(prog, plan=plan, files=files, model=model_name,
                            timings={**timings, "total": round(time.monotonic() - t0, 3)},
                            section_files=sfiles)
    lap("report")
    _writable_parent(stem)
    total = round(time.monotonic() - t0, 3)
    man = manifest(plan, files=files, report=f"{stem.name}.map.txt",
                   model={"name": m.name, "path": str(model_path)},
                   timings={**timings, "total": total}, section_files=sfiles)
    for e in plan.kernels:
        _write(stem.parent / files[e.label], e.bitstream)
    for name, data in sections:
        _write(stem.parent / name, data)
    _write(stem.parent / f"{stem.name}.map.txt", report)
    _write(stem.parent / f"{stem.name}.json", json.dumps(man, indent=1) + "\n")
    man["stem"] = str(stem)
    man["files"] = [str(stem.parent / files[e.label]) for e in plan.kernels] + \
        [str(stem.parent / name) for name, _ in sections] + \
        [f"{stem}.map.txt", f"{stem}.json"]
    man["model_name"] = m.name
    man["compile_seconds"] = total
    return man


@command("compile", "compile a model: one bitstream per kernel, a mapping report, a manifest")
def _compile(parser):
    import argparse
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"model: Hugging Face folder or llama2.c .bin (default: "
                             f"{DEFAULT_MODEL})")
    parser.add_argument("--mode", default="op", metavar="{op,layer,looped}",
                        help="op: one host launch per kernel; layer: one launch of the on-chip "
                             "layer program per layer; looped: one launch for all layers "
                             "(default op)")
    parser.add_argument("-o", "--output", metavar="OUT.rbit", default=None,
                        help="output: writes OUT.<kernel>.rbit per kernel, OUT.map.txt (the "
                             "mapping report) and OUT.json (the manifest); a folder writes "
                             "FOLDER/<model name>.*")
    parser.add_argument("--context", type=int, default=None, metavar="N",
                        help="KV-cache positions to allocate (default: the model's max_seq_len)")
    parser.add_argument("--pos", type=int, default=0, metavar="P",
                        help="decode position whose kernels are written and reported (default 0)")
    parser.add_argument("--token", type=int, default=0, metavar="T",
                        help="input token of the described step (default 0)")
    parser.add_argument("--no-delta", action="store_true",
                        help="layer/looped: store every section as its kernel's whole bitstream "
                             "instead of a delta against the sections before it")

    def run(args):
        if args.output is None:
            raise UserError("give the output with -o FILE.rbit (e.g. -o build/model.rbit)")
        res = compile_files(args.model, args.output, mode=args.mode, context=args.context,
                            pos=args.pos, token=args.token, delta=not args.no_delta)
        c = res["config"]
        pt = res["per_token"]
        by = pt["by_category"]
        stem = Path(res["stem"])
        folder = stem.parent
        print(f"model {res['model_name']}: dim {c['dim']}, {c['n_layers']} layers, "
              f"{c['n_heads']}/{c['n_kv_heads']} heads, vocab {c['vocab_size']}; mode "
              f"{res['mode']}, context {res['context']}")
        print(f"kernels:       {len(res['kernels'])} bitstreams ({stem.name}.<kernel>.rbit, "
              f"{sum(k['bitstream_bytes'] for k in res['kernels']):,} B) for position "
              f"{res['position']}, token {res['token']}")
        secs = f" ({pt['sections']} sections on the chip)" if pt.get("sections") else ""
        print(f"per token:     {pt['launches']} launches{secs}, {pt['hbm_bytes']:,} B of HBM "
              f"traffic at position {pt['position']} (" +
              ", ".join(f"{k} {v:,}" for k, v in by.items())
              + f"), {pt['bitstream_bytes']:,} B of bitstreams")
        if res.get("programs"):
            pr = res["programs"]
            print(f"sections:      {len(pr['sections'])} table entries (" + ", ".join(
                f"{n} program {v['first']}..{v['first'] + v['sections'] - 1}"
                for n, v in pr["programs"].items()) + f"); {stem.name}.s<entry>.<section>.rbit "
                f"({sum(s['bitstream_bytes'] for s in pr['sections']):,} B, "
                f"{'delta bitstreams' if pr['delta'] else 'whole bitstreams'}); config region "
                f"{pr['config_region']['bytes']:,} B at 0x{pr['config_region']['addr']:06x}")
        print(f"HBM image:     {res['hbm']['bytes_used']:,} B")
        print(f"wrote:         {folder}/{stem.name}.*.rbit, {stem.name}.map.txt (mapping "
              f"report), {stem.name}.json (manifest)")
        for w in res.get("warnings", []):
            print(f"warning:       {w}")
        t = res["timings"]
        print(f"compile time:  {res['compile_seconds']:.2f} s (" +
              ", ".join(f"{k} {v:.2f}" for k, v in t.items() if k != "total") + ")")
        return 0
    return run

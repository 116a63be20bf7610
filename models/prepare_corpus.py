#!/usr/bin/env python3
"""Extract the King James Bible from Debian's ``bible-kjv`` packages into train/val/test text.

The corpus is not committed: it comes from Debian (public domain text)::

    apt-get update && apt-get install -y bible-kjv     # pulls in bible-kjv-text (the data)
    python models/prepare_corpus.py                    # -> build/corpus/kjv/{train,val,test}.txt

The ``bible`` program of package ``bible-kjv`` decompresses ``/usr/lib/bible.data`` (package
``bible-kjv-text``); this script runs ``bible -l0 Gen1:1-Rev22:21`` and parses its output
(``Book N`` chapter headings and ``  V text`` verse lines).

Output format: one chapter per paragraph, one verse per line (verse numbers dropped), chapters
separated by a blank line. The split holds out whole chapters, deterministically: taking the
1189 chapters in canonical order and numbering them from 0, chapter ``k`` goes to
``val`` if ``k % 20 == 7``, to ``test`` if ``k % 20 == 17``, otherwise to ``train`` (90/5/5).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "build", "corpus", "kjv")
VERSE_RANGE = "Gen1:1-Rev22:21"
N_CHAPTERS, N_VERSES = 1189, 31102
HEADING = re.compile(r"^(\S.*) (\d+)$")
VERSE = re.compile(r"^  (\d+) (.+)$")

INSTALL_HINT = ("the King James Bible corpus comes from Debian: run\n"
                "    apt-get update && apt-get install -y bible-kjv\n"
                "(as root; it installs the 'bible' program and its data package bible-kjv-text)")


def dump_bible(bible: str | None = None) -> str:
    exe = bible or shutil.which("bible")
    if exe is None or not os.path.exists(exe):
        sys.exit(f"prepare_corpus: the 'bible' program was not found; {INSTALL_HINT}")
    try:
        r = subprocess.run([exe, "-l0", VERSE_RANGE], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "COLUMNS": "0"})
    except OSError as e:
        sys.exit(f"prepare_corpus: cannot run {exe}: {e}; {INSTALL_HINT}")
    if r.returncode != 0 or not r.stdout.strip():
        sys.exit(f"prepare_corpus: '{exe} -l0 {VERSE_RANGE}' failed (exit {r.returncode}): "
                 f"{r.stderr.strip()[:300]}\nIs the data file /usr/lib/bible.data there? "
                 f"{INSTALL_HINT}")
    return r.stdout


def parse_chapters(raw: str) -> list[tuple[str, list[str]]]:
    """[(\"Genesis 1\", [verse text, ...]), ...] from the output of ``bible -l0``."""
    chapters: list[tuple[str, list[str]]] = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        m = VERSE.match(line)
        if m:
            if not chapters:
                raise ValueError(f"line {n}: verse before any chapter heading")
            verses = chapters[-1][1]
            if int(m.group(1)) != len(verses) + 1:
                raise ValueError(f"line {n}: verse {m.group(1)} of {chapters[-1][0]} out of order")
            verses.append(" ".join(m.group(2).split()))
            continue
        m = HEADING.match(line)
        if m:
            chapters.append((line.strip(), []))
            continue
        raise ValueError(f"line {n}: unrecognised line {line[:80]!r}")
    return chapters


def split_of(k: int) -> str:
    r = k % 20
    return "val" if r == 7 else "test" if r == 17 else "train"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--bible", default=None, help="path of the 'bible' program (default: $PATH)")
    args = ap.parse_args(argv)

    chapters = parse_chapters(dump_bible(args.bible))
    n_verses = sum(len(v) for _, v in chapters)
    if len(chapters) != N_CHAPTERS or n_verses != N_VERSES:
        sys.exit(f"prepare_corpus: expected {N_CHAPTERS} chapters and {N_VERSES} verses, got "
                 f"{len(chapters)} and {n_verses}; is this the bible-kjv-text 4.x data?")
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    names: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for k, (name, verses) in enumerate(chapters):
        splits[split_of(k)].append("\n".join(verses))
        names[split_of(k)].append(name)
    os.makedirs(args.out, exist_ok=True)
    info = {"source": "Debian packages bible-kjv + bible-kjv-text (King James Version, 1611/1769; "
                      "public domain)", "command": f"bible -l0 {VERSE_RANGE}",
            "split_rule": "chapter k (0-based, canonical order): val if k%20==7, test if k%20==17, "
                          "else train", "splits": {}}
    for s, docs in splits.items():
        text = "\n\n".join(docs) + "\n"
        path = os.path.join(args.out, f"{s}.txt")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        info["splits"][s] = {"chapters": len(docs), "bytes": len(text.encode()),
                             "sha256": hashlib.sha256(text.encode()).hexdigest(),
                             "first_chapters": names[s][:3]}
        print(f"{s:5s}: {len(docs):4d} chapters, {len(text.encode()):8d} bytes -> {path}")
    with open(os.path.join(args.out, "info.json"), "w") as f:
        json.dump(info, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

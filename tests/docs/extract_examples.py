#!/usr/bin/env python3
"""Extracts the runnable shell examples of Markdown files, for tests/docs/run_examples.sh.

Usage: extract_examples.py OUTDIR SOURCE...

A SOURCE is a Markdown file, or `FILE#Heading` for only the section under that heading (up to the
next heading of the same or a higher level). The convention (also at the top of run_examples.sh):

- a fenced block opened with ```sh runs;
- ```console (shown, never run: it needs something the run does not have), ```text (an output),
  ```json and any other language are not run;
- ```bash and ```shell are refused, so that a block meant to run cannot be skipped by a typo;
- `<!-- expect: REGEX -->` lines right after a ```sh block (blank lines between are fine) are
  extended regular expressions (grep -E) that its standard output must match, each somewhere.

Each runnable block becomes OUTDIR/NNN.sh (its text, unchanged), OUTDIR/NNN.expect (one regex a
line, possibly empty) and a line `NNN<TAB>FILE<TAB>LINE` of OUTDIR/index.tsv, in the order given.
Only the standard library.
"""

import re
import sys
from pathlib import Path

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPECT = re.compile(r"^\s*<!--\s*expect:\s?(.*?)\s*-->\s*$")
RUN, REFUSED = {"sh"}, {"bash", "shell", "zsh"}


class ExampleError(Exception):
    pass


def section(lines, path, heading):
    """The (line number, text) pairs of the section under `heading`, or all of them."""
    numbered = list(enumerate(lines, start=1))
    if heading is None:
        return numbered
    start = level = None
    in_fence = False
    for i, (_, text) in enumerate(numbered):
        if FENCE.match(text):
            in_fence = not in_fence
        if in_fence:
            continue
        m = HEADING.match(text)
        if not m:
            continue
        if start is None and m.group(2) == heading:
            start, level = i + 1, len(m.group(1))
        elif start is not None and len(m.group(1)) <= level:
            return numbered[start:i]
    if start is None:
        raise ExampleError(f"{path}: no heading {heading!r}")
    return numbered[start:]


def blocks(path, heading=None):
    """The runnable blocks of one source: (first line number, text, [regex])."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    numbered = section(lines, path, heading)
    found = []
    i = 0
    while i < len(numbered):
        lineno, text = numbered[i]
        m = FENCE.match(text)
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        body = []
        i += 1
        closing = re.compile(re.escape(fence[0]) + "{%d,}" % len(fence))
        while i < len(numbered) and not closing.fullmatch(numbered[i][1].strip()):
            line = numbered[i][1]
            body.append(line[len(indent):] if line.startswith(indent) else line)
            i += 1
        if i >= len(numbered):
            raise ExampleError(f"{path}:{lineno}: the ``` block opened here is never closed")
        i += 1
        if lang in REFUSED:
            raise ExampleError(f"{path}:{lineno}: ```{lang} block: write ```sh for an example that runs, "
                               "```console for one that is only shown")
        if lang not in RUN:
            continue
        expects = []
        while i < len(numbered):
            text = numbered[i][1]
            e = EXPECT.match(text)
            if e:
                if not e.group(1):
                    raise ExampleError(f"{path}:{numbered[i][0]}: empty expect comment")
                expects.append(e.group(1))
            elif text.strip():
                break
            i += 1
        found.append((lineno, "\n".join(body) + "\n", expects))
    return found


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    index = []
    try:
        for source in argv[2:]:
            path, _, heading = source.partition("#")
            for lineno, text, expects in blocks(path, heading or None):
                n = f"{len(index) + 1:03d}"
                (out / f"{n}.sh").write_text(text, encoding="utf-8")
                (out / f"{n}.expect").write_text("".join(e + "\n" for e in expects), encoding="utf-8")
                index.append(f"{n}\t{path}\t{lineno}\n")
    except (ExampleError, OSError) as e:
        print(f"extract_examples: {e}", file=sys.stderr)
        return 1
    (out / "index.tsv").write_text("".join(index), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Checks that docs/architecture.md is true of the code: every `crate::PART` path in src/ names a
part that the table "The parts" lets the importing part use, and every module of the library is
in the table. Stdlib only. Usage: python3 tests/docs/check_architecture.py
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def parts_table(text):
    """The rows of the table of parts: name -> (path, set of parts it may import, or None for any above)."""
    rows, above = {}, []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[1].startswith("`src/"):
            continue
        name, path, may = cells[0], cells[1].strip("`"), cells[3]
        if may.startswith("every part above"):
            allowed = set(above)
        elif may in ("—", "-") or may.startswith("("):
            allowed = set()
        else:
            allowed = {p.strip() for p in may.split(",")}
        rows[name] = (path, allowed)
        above.append(name)
    return rows


def part_of(path, rows):
    rel = path.relative_to(ROOT).as_posix()
    for name, (prefix, _) in rows.items():
        if rel == prefix or (prefix.endswith("/") and rel.startswith(prefix)):
            return name
    return None


def main():
    rows = parts_table(DOC.read_text())
    problems = []
    if not rows:
        problems.append(f"{DOC}: no table of parts found")
    for name, (_, allowed) in rows.items():
        for other in allowed - set(rows):
            problems.append(f"part {name} may import {other!r}, which is not a part in the table")
    modules = set(re.findall(r"^pub mod (\w+);", (ROOT / "src" / "lib.rs").read_text(), re.M))
    for module in sorted(modules - set(rows)):
        problems.append(f"module {module} (src/lib.rs) is not in the table of parts")
    for file in sorted((ROOT / "src").rglob("*.rs")):
        if file == ROOT / "src" / "lib.rs":
            continue  # it only declares the parts
        part = part_of(file, rows)
        if part is None:
            problems.append(f"{file.relative_to(ROOT)} belongs to no part of the table")
            continue
        allowed = rows[part][1] | {part}
        for n, line in enumerate(file.read_text().splitlines(), 1):
            if line.lstrip().startswith("//"):
                continue  # doc links name other parts without importing them
            for used in re.findall(r"\bcrate::(\w+)", line):
                if used in rows and used not in allowed:
                    problems.append(f"{file.relative_to(ROOT)}:{n}: {part} imports {used}, which the table does not allow")
    if problems:
        print(f"check_architecture: {DOC.relative_to(ROOT)} does not match the code:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        sys.exit(1)
    print(f"check_architecture: {len(rows)} parts, every import allowed by {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

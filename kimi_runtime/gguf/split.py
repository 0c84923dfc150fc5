"""Split GGUF naming (`<stem>-00001-of-0000N.gguf`, as gguf-split and llama.cpp write it) and finding
the parts of a set from any one of them."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_names(path: Path, n_parts: int) -> list[Path]:
    """Part names for `path` (its `.gguf` suffix, if any, is dropped from the stem)."""
    path = Path(path)
    stem = path.name[:-5] if path.name.endswith(".gguf") else path.name
    return [path.with_name(f"{stem}-{i + 1:05d}-of-{n_parts:05d}.gguf") for i in range(n_parts)]


def parse_split_name(path: Path) -> Optional[tuple[Path, int, int]]:
    """(path of the first part, 1-based part number, part count) when the name follows the pattern."""
    m = SPLIT_RE.match(Path(path).name)
    if not m:
        return None
    no, count = int(m["no"]), int(m["count"])
    first = Path(path).with_name(f"{m['stem']}-{1:05d}-of-{count:05d}.gguf")
    return first, no, count

"""Write a generated table into the README between its markers, never leaving a half-written file."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def replace_generated_block(path: str | os.PathLike, marker: str, text: str) -> None:
    """Replace what stands between `<!-- {marker}: ... -->` and `<!-- end {marker} -->` in a file.

    Args:
        path: The markdown file (the README).
        marker: The block's name, e.g. "backbone-table".
        text: The new content (without the markers).

    Raises:
        ValueError: The file lacks the markers.
    """
    path = Path(path)
    source = path.read_text()
    pattern = re.compile(rf"(<!-- {re.escape(marker)}:[^\n]*-->\n)(.*?)(<!-- end {re.escape(marker)} -->)", re.S)
    if not pattern.search(source):
        raise ValueError(f"{path} has no '<!-- {marker}: ... -->' ... '<!-- end {marker} -->' block to replace")
    updated = pattern.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(3), source, count=1)
    # Write beside the file and rename: an interrupted run leaves the README as it was.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(updated)
    os.replace(tmp.name, path)

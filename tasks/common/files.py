"""Writing outputs so that an interrupted run never leaves a half-written file.

Files get the permissions any other new file would (0o666 masked by the process umask: 0644 with the
usual 022), not the 0600 of `tempfile.mkstemp`, so other users and services can read predictions.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it: POSIX has no read-only call)."""
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on failure delete it.

    The file ends with mode `0o666 & ~umask`, like one made by `open(path, "w")`.

    Args:
        path: The final file; its folder is created.

    Yields:
        Where to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600 whatever the umask; give the file the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_png_atomic(image: Image.Image, path: str | os.PathLike) -> None:
    """Save a PIL image as PNG at `path`, atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as JSON at `path`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data))

"""Content identity of the MNIST files a run reads (temporary; replaced by the data layer's version)."""

from __future__ import annotations

import os
from pathlib import Path

from kdlab.data.idx import md5_uncompressed
from kdlab.data.sources import MNIST_FILES

_memo: dict[tuple[str, int, int], str] = {}


def data_fingerprint(data_dir: str | os.PathLike) -> dict[str, str]:
    found = {}
    for name in MNIST_FILES:
        path = Path(data_dir).expanduser().resolve() / name
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _memo:
            _memo[key] = md5_uncompressed(path)
        found[name] = _memo[key]
    return found

"""Ready files: a process that binds ephemeral ports tells its parent where it listens.

A worker started with `--grpc-port 0` picks free ports itself (no race between choosing a port and
binding it) and, once it serves, writes a small JSON file that the local cluster waits for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_ready_file(path: str | Path | None, **fields) -> None:
    """Atomically writes fields as JSON to path (no-op when path is None)."""
    if path is None:
        return
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, path)


def read_ready_file(path: str | Path) -> dict | None:
    """Returns the fields of a ready file, or None while it does not exist yet."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None

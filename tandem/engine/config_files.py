"""Reading a model folder's JSON files (config.json, generation_config.json, ...) without torch.

The router reads these for its tokenizer; keeping them apart from the model's shape
(model_config.py, which needs torch dtypes) lets it load a tokenizer without importing torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Reads a JSON object file, raising FileNotFoundError/ValueError that name the path."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} file {path} must hold a JSON object, got {type(data).__name__}")
    return data

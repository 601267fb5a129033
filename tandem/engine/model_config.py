"""The model's shape, parsed from a Hugging Face `config.json` (Llama, Qwen2 and Mistral)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tandem.engine.config_files import read_json
from tandem.engine.kv_cache import DTYPES, KVCacheSpec

logger = logging.getLogger(__name__)

# Architectures that share the Llama decoder; the value names the family.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "mistral",
}
ROPE_TYPES = ("default", "llama3")


@dataclass(slots=True, frozen=True)
class RopeScaling:
    """Llama 3.1 ("llama3") rotary scaling parameters."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"

    def __post_init__(self) -> None:
        if self.rope_type != "llama3":
            raise ValueError(f"RopeScaling supports rope_type 'llama3' only, got {self.rope_type!r}")
        if self.factor <= 0 or self.original_max_position_embeddings <= 0:
            raise ValueError("rope_scaling.factor and original_max_position_embeddings must be positive")
        if not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError(
                "rope_scaling needs high_freq_factor > low_freq_factor > 0, got "
                f"{self.high_freq_factor} and {self.low_freq_factor}"
            )


@dataclass(slots=True)
class ModelConfig:
    """Shape and hyper-parameters of a Llama-family decoder."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    # Bias on q/k/v projections (Qwen2 always; Llama when attention_bias is set).
    attention_bias: bool = False
    # Bias on o_proj (Llama's attention_bias covers it; Qwen2's o_proj has none).
    o_proj_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    torch_dtype: str | None = None
    # Mistral's window; attention is always full, which equals windowed attention while the
    # context stays within it.
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; expected one of "
                f"{sorted(SUPPORTED_ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"config {name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("rms_norm_eps and rope_theta must be positive")
        if self.torch_dtype is not None and self.torch_dtype not in DTYPES:
            raise ValueError(f"unsupported torch_dtype {self.torch_dtype!r}; expected one of {sorted(DTYPES)}")

    @property
    def family(self) -> str:
        """"llama", "qwen2" or "mistral"."""
        return SUPPORTED_ARCHITECTURES[self.architecture]

    @property
    def num_query_groups(self) -> int:
        """Query heads that share one KV head (GQA group size)."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def default_dtype(self) -> torch.dtype:
        """The checkpoint's dtype, float32 when the config does not name one."""
        return DTYPES[self.torch_dtype] if self.torch_dtype else torch.float32

    def kv_cache_spec(self, num_blocks: int, block_size: int, dtype: torch.dtype | None = None) -> KVCacheSpec:
        """The paged KV cache spec for this model (dtype defaults to the checkpoint's)."""
        return KVCacheSpec(
            num_layers=self.num_hidden_layers,
            num_blocks=num_blocks,
            block_size=block_size,
            num_kv_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            dtype=dtype or self.default_dtype,
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Builds a config from a parsed HF config.json (raises ValueError on what it cannot run)."""
        architectures = raw.get("architectures") or []
        if len(architectures) != 1:
            raise ValueError(f"config.json must name exactly one architecture, got {architectures!r}")
        architecture = architectures[0]
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {architecture!r}; expected one of {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        hidden_act = raw.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise ValueError(f"unsupported hidden_act {hidden_act!r}; only 'silu' (SwiGLU) is implemented")
        try:
            hidden_size = int(raw["hidden_size"])
            num_heads = int(raw["num_attention_heads"])
            return cls(
                architecture=architecture,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden_size,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=num_heads,
                num_key_value_heads=int(raw.get("num_key_value_heads") or num_heads),
                head_dim=int(raw.get("head_dim") or hidden_size // num_heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
                rope_theta=_rope_theta(raw),
                rope_scaling=_rope_scaling(raw),
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                attention_bias=architecture == "Qwen2ForCausalLM" or bool(raw.get("attention_bias", False)),
                o_proj_bias=architecture != "Qwen2ForCausalLM" and bool(raw.get("attention_bias", False)),
                mlp_bias=bool(raw.get("mlp_bias", False)),
                bos_token_id=raw.get("bos_token_id"),
                eos_token_ids=_as_id_list(raw.get("eos_token_id")),
                torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
                sliding_window=_sliding_window(raw, architecture),
            )
        except KeyError as error:
            raise ValueError(f"config.json lacks required field {error.args[0]!r}") from None

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> ModelConfig:
        """Reads `config.json` (and eos ids from `generation_config.json`) from a model folder."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model folder {model_dir} does not exist")
        config_path = model_dir / "config.json"
        config = cls.from_dict(read_json(config_path, "model config"))
        generation_path = model_dir / "generation_config.json"
        if generation_path.is_file():
            generation = read_json(generation_path, "generation config")
            extra = [i for i in _as_id_list(generation.get("eos_token_id")) if i not in config.eos_token_ids]
            config.eos_token_ids = config.eos_token_ids + extra
        return config


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    raise ValueError(f"eos_token_id must be an int or a list of ints, got {value!r}")


def _rope_theta(raw: dict[str, Any]) -> float:
    # Newer HF configs keep theta inside rope_parameters; older ones at the top level.
    parameters = raw.get("rope_parameters") or {}
    return float(raw.get("rope_theta") or parameters.get("rope_theta") or 10000.0)


def _rope_scaling(raw: dict[str, Any]) -> RopeScaling | None:
    scaling = raw.get("rope_scaling") or raw.get("rope_parameters")
    if not scaling:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be an object or null, got {scaling!r}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_scaling type {rope_type!r}; expected one of {list(ROPE_TYPES)}")
    if rope_type == "default":
        return None
    try:
        return RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    except KeyError as error:
        raise ValueError(f"llama3 rope_scaling lacks {error.args[0]!r}") from None


def _sliding_window(raw: dict[str, Any], architecture: str) -> int | None:
    window = raw.get("sliding_window")
    # Qwen2 configs carry a window that is off unless use_sliding_window is set.
    is_switched_off = architecture == "Qwen2ForCausalLM" and not raw.get("use_sliding_window", False)
    if window is None or is_switched_off:
        return None
    logger.info(
        "sliding_window=%s is not applied: attention is full, which matches the model for contexts "
        "up to the window", window,
    )
    return int(window)

"""Writes a random-weight Hugging Face model folder (Llama or Qwen2 shaped) for tests and benchmarks.

Also the `tandem make-tiny-model DIR [--arch llama|qwen2] [--preset tiny|bench] [--seed N] [--shards K]`
command. The folder loads with both this engine and `transformers`, so tests can compare the two.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tandem.engine.model import LlamaForCausalLM
from tandem.engine.model_config import ModelConfig
from tandem.engine.tiny_tokenizer import FLAVOURS, write_tokenizer

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048),
    # About 100M parameters: the size the engine benchmark runs on CPU.
    "bench": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=4, max_position_embeddings=4096),
}
# Llama 3.1 scaling, with the original context shrunk so that every frequency band is exercised.
LLAMA3_ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 256}


def make_tiny_model(out_dir: str | Path, arch: str = "llama", seed: int = 0, num_shards: int = 1,
                    preset: str = "tiny", **size: int) -> Path:
    """Writes config, weights, tokenizer and generation config into out_dir; returns out_dir.

    `size` overrides preset fields (hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads, max_position_embeddings).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    unknown = set(size) - set(PRESETS["tiny"])
    if unknown:
        raise ValueError(f"unknown size fields {sorted(unknown)}; expected some of {sorted(PRESETS['tiny'])}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = {**PRESETS[preset], **size}
    tokenizer = write_tokenizer(out_dir, arch, shape["max_position_embeddings"])
    raw_config = _hf_config(arch, shape, tokenizer.get_vocab_size(), tokenizer.token_to_id)
    (out_dir / "config.json").write_text(json.dumps(raw_config, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps(_generation_config(raw_config), indent=2) + "\n")
    tensors = random_weights(ModelConfig.from_dict(raw_config), seed)
    _save_weights(out_dir, tensors, num_shards)
    _make_readable(out_dir)
    return out_dir


def _hf_config(arch: str, shape: dict[str, int], vocab_size: int, token_to_id) -> dict[str, Any]:
    flavour = FLAVOURS[arch]
    eos_ids = [token_to_id(flavour.eos_token), token_to_id(flavour.end_of_text_token)]
    bos_token = flavour.bos_token or flavour.end_of_text_token
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": vocab_size,
        **shape,
        "head_dim": shape["hidden_size"] // shape["num_attention_heads"],
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "bos_token_id": token_to_id(bos_token),
        "eos_token_id": eos_ids if arch == "llama" else eos_ids[0],
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if arch == "llama":
        config.update(rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE_SCALING),
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    else:
        config.update(rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=True,
                      use_sliding_window=False, sliding_window=None, max_window_layers=shape["num_hidden_layers"])
    return config


def _generation_config(raw_config: dict[str, Any]) -> dict[str, Any]:
    eos = raw_config["eos_token_id"]
    return {"bos_token_id": raw_config["bos_token_id"], "eos_token_id": eos if isinstance(eos, list) else [eos]}


def random_weights(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors under HF names, scaled so that layers matter and greedy output varies."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {name: tuple(p.shape) for name, p in LlamaForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight")
    tensors = {}
    for name, shape in shapes.items():
        tensors[name] = _init(name, shape, config, generator).contiguous()
    return tensors


def _init(name: str, shape: tuple[int, ...], config: ModelConfig, generator: torch.Generator) -> torch.Tensor:
    def normal(std: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std

    if name.endswith("norm.weight"):
        # Not all ones, so that a norm applied in the wrong place changes the logits.
        return 1.0 + normal(0.1)
    if name.endswith(".bias"):
        return normal(0.1)
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        # Spread logits (a few units wide) so that sampling at temperature 1 is not uniform.
        return normal(2.0 / math.sqrt(config.hidden_size))
    # Fan-in scaled projections, the MLP output three times larger: with attention dominant, random
    # weights fall into repeating one token under greedy decoding; MLP-dominant ones keep varying.
    gain = 3.0 if name.endswith("down_proj.weight") else 1.0
    return normal(gain / math.sqrt(shape[1]))


def _save_weights(out_dir: Path, tensors: dict[str, torch.Tensor], num_shards: int) -> None:
    metadata = {"format": "pt"}
    if num_shards == 1:
        save_file(tensors, str(out_dir / "model.safetensors"), metadata=metadata)
        return
    names = list(tensors)
    per_shard = -(-len(names) // num_shards)
    weight_map = {}
    for shard_idx in range(num_shards):
        file_name = f"model-{shard_idx + 1:05d}-of-{num_shards:05d}.safetensors"
        shard = {name: tensors[name] for name in names[shard_idx * per_shard:(shard_idx + 1) * per_shard]}
        save_file(shard, str(out_dir / file_name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file_name))
    total_size = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _make_readable(out_dir: Path) -> None:
    # safetensors writes 0600; a model folder on a shared volume is read by other users (pods).
    for path in out_dir.glob("*.safetensors"):
        path.chmod(0o644)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `tandem make-tiny-model`."""
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="llama")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="tiny: fast tests; bench: about 100M parameters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1, help="number of safetensors shards")


def run(args: argparse.Namespace) -> int:
    """Writes the model folder and prints where it went."""
    out_dir = make_tiny_model(args.out_dir, arch=args.arch, seed=args.seed, num_shards=args.shards,
                              preset=args.preset)
    config = ModelConfig.from_model_dir(out_dir)
    print(f"wrote {config.architecture} ({args.preset}, {config.num_hidden_layers} layers, "
          f"hidden {config.hidden_size}, vocab {config.vocab_size}) to {out_dir}")
    return 0

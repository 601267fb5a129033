"""Loading HF model folders: sharded equals single-file, and every broken folder names its problem."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tandem.engine.tiny_model import make_tiny_model
from tandem.engine.weights import load_model

torch.set_num_threads(1)


def copy_folder(source: Path, out_dir: Path) -> Path:
    shutil.copytree(source, out_dir)
    return out_dir


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sharded_folder_loads_the_same_as_one_file(arch, tmp_path):
    single_dir = make_tiny_model(tmp_path / "single", arch=arch, seed=3, num_hidden_layers=2)
    sharded_dir = make_tiny_model(tmp_path / "sharded", arch=arch, seed=3, num_hidden_layers=2, num_shards=3)
    assert len(list(sharded_dir.glob("model-*-of-00003.safetensors"))) == 3
    assert not (sharded_dir / "model.safetensors").exists()
    single, config = load_model(single_dir)
    sharded, _ = load_model(sharded_dir)
    single_state, sharded_state = single.state_dict(), sharded.state_dict()
    assert single_state.keys() == sharded_state.keys()
    for name, tensor in single_state.items():
        assert torch.equal(tensor, sharded_state[name]), name
    for model in (single, sharded):
        is_tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        assert is_tied == config.tie_word_embeddings == (arch == "qwen2")
        assert not any(p.is_meta for p in model.parameters())
        assert not model.training


def test_dtype_defaults_to_the_config_and_can_be_chosen(tiny_qwen2_dir):
    model, config = load_model(tiny_qwen2_dir)
    assert config.torch_dtype == "float32" and model.lm_head.weight.dtype == torch.float32
    model, _ = load_model(tiny_qwen2_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="unsupported dtype torch.int8"):
        load_model(tiny_qwen2_dir, dtype=torch.int8)


def test_missing_folder_and_missing_config_are_named(tiny_llama_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder .*nowhere does not exist"):
        load_model(tmp_path / "nowhere")
    folder = copy_folder(tiny_llama_dir, tmp_path / "no-config")
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="model config file .*config.json does not exist"):
        load_model(folder)
    (folder / "config.json").write_text("{ broken")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_model(folder)


def test_missing_and_truncated_weight_files_are_named(tiny_llama_dir, tmp_path):
    folder = copy_folder(tiny_llama_dir, tmp_path / "no-weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in .*expected model.safetensors"):
        load_model(folder)
    folder = copy_folder(tiny_llama_dir, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    with pytest.raises(ValueError, match="cannot read safetensors file .*model.safetensors.*truncated"):
        load_model(folder)


def test_missing_shard_is_named(tmp_path):
    folder = make_tiny_model(tmp_path / "sharded", arch="llama", num_hidden_layers=2, num_shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shard .*model-00002-of-00002.safetensors named in"):
        load_model(folder)


def test_missing_unexpected_and_misshapen_tensors_are_named(tiny_llama_dir, tmp_path):
    tensors = load_file(tiny_llama_dir / "model.safetensors")
    cases = {
        "missing": ({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"},
                    r"missing model\.layers\.1\.mlp\.up_proj\.weight; unexpected none"),
        "unexpected": ({**tensors, "model.layers.9.mlp.up_proj.weight": torch.zeros(2)},
                       r"missing none; unexpected model\.layers\.9\.mlp\.up_proj\.weight"),
        "misshapen": ({**tensors, "model.norm.weight": torch.ones(3)},
                      r"tensor model\.norm\.weight .* has shape \(3,\), expected \(64,\)"),
    }
    for case, (state, message) in cases.items():
        folder = copy_folder(tiny_llama_dir, tmp_path / case)
        save_file(state, str(folder / "model.safetensors"))
        with pytest.raises(ValueError, match=message):
            load_model(folder)


def test_unsupported_configs_are_refused(tiny_llama_dir, tmp_path):
    for change, message in [({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'GPT2LMHeadModel'"),
                            ({"hidden_act": "gelu"}, "unsupported hidden_act 'gelu'"),
                            ({"num_key_value_heads": 3}, r"must be a multiple of num_key_value_heads \(3\)"),
                            ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "unsupported rope_scaling type")]:
        folder = tmp_path / next(iter(change))
        if not folder.exists():
            copy_folder(tiny_llama_dir, folder)
        config = json.loads((tiny_llama_dir / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            load_model(folder)

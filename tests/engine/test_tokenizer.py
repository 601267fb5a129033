"""Tokenizer against Hugging Face transformers on the tiny model folders; streaming decode; errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformers
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from tandem.engine.text_stream import TextStream
from tandem.engine.tiny_tokenizer import CORPUS
from tandem.engine.tokenizer import IncrementalDetokenizer, Tokenizer

TEXTS = ["héllo 世界 🙂", "The quick brown fox.\n\nIt   jumps!", "naïve café, 日本語のテキスト 👩‍💻 ok",
         "<think>x</think> y"]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo 世界 🙂"},
            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "What is two plus two?"}]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json")


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request):
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return Tokenizer.from_model_dir(model_dir)


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir):
    return transformers.AutoTokenizer.from_pretrained(model_dir)


def copy_tokenizer_files(model_dir: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(model_dir / name, out_dir / name)
    return out_dir


def stream(tokenizer: Tokenizer, prompt_ids: list[int], output_ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
    return [detokenizer.add(token_id) for token_id in output_ids]


def test_encode_and_decode_match_transformers_and_round_trip(tokenizer, hf_tokenizer, model_dir):
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == hf_tokenizer.encode(text)
        assert tokenizer.encode(text, add_special_tokens=False) == hf_tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
        assert tokenizer.decode(ids) == hf_tokenizer.decode(ids)
        assert tokenizer.decode(ids, skip_special_tokens=True) == hf_tokenizer.decode(ids, skip_special_tokens=True)
    config = json.loads((model_dir / "config.json").read_text())
    assert tokenizer.vocab_size == config["vocab_size"]
    assert tokenizer.bos_token_id == hf_tokenizer.bos_token_id
    assert hf_tokenizer.eos_token_id in tokenizer.eos_token_ids
    assert set(config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]) \
        <= set(tokenizer.eos_token_ids)
    starts_with_bos = tokenizer.encode("hi")[0] == tokenizer.bos_token_id
    assert starts_with_bos == (tokenizer.bos_token_id is not None)
    assert tokenizer.token_to_id("<think>") == hf_tokenizer.convert_tokens_to_ids("<think>")
    assert tokenizer.token_to_id("no such token here") is None


def test_decode_refuses_ids_outside_the_vocabulary(tokenizer):
    for bad in (tokenizer.vocab_size, -1):
        with pytest.raises(ValueError, match=rf"token ids \[{bad}\] are outside the vocabulary"):
            tokenizer.decode([5, bad])
    with pytest.raises(ValueError, match="must be a str"):
        tokenizer.encode(["not", "text"])


@pytest.mark.parametrize("enable_thinking", [None, True, False])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_as_transformers_does(tokenizer, hf_tokenizer, enable_thinking, add_generation_prompt):
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    ours = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=add_generation_prompt,
                                         enable_thinking=enable_thinking)
    theirs = hf_tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=add_generation_prompt,
                                              **extra)
    assert ours == theirs
    assert ("<think>\n\n</think>" in ours) == (enable_thinking is False and add_generation_prompt)
    assert "héllo 世界 🙂" in ours


FEATURE_TEMPLATE = (
    "{%- for message in messages %}{% if loop.index > 3 %}{% break %}{% endif %}"
    "{% generation %}{{ message | tojson }}{% endgeneration %}\n{% endfor %}"
    "{{ raise_exception('too few') if messages | length < 2 else bos_token ~ eos_token }}"
)


def test_chat_template_file_with_hf_extensions_renders_as_transformers_does(tiny_llama_dir, tmp_path):
    folder = copy_tokenizer_files(tiny_llama_dir, tmp_path / "features")
    (folder / "chat_template.jinja").write_text(FEATURE_TEMPLATE)
    ours = Tokenizer.from_model_dir(folder).apply_chat_template(MESSAGES)
    theirs = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True)
    assert ours == theirs
    assert '"héllo 世界 🙂"' in ours and "What is two" not in ours
    with pytest.raises(ValueError, match="too few"):
        Tokenizer.from_model_dir(folder).apply_chat_template(MESSAGES[:1])


def test_chat_template_errors_are_clear(tokenizer, tiny_llama_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown chat role: tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="non-empty list"):
        tokenizer.apply_chat_template([])
    with pytest.raises(ValueError, match=r"messages\[1\] must be an object"):
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}, "hello"])
    folder = copy_tokenizer_files(tiny_llama_dir, tmp_path / "no-template")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer.from_model_dir(folder).apply_chat_template(MESSAGES)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}")
    with pytest.raises(ValueError, match="not valid Jinja"):
        Tokenizer.from_model_dir(folder).apply_chat_template(MESSAGES)
    (folder / "chat_template.jinja").write_text("{{ ''.__class__.__mro__ }}")
    with pytest.raises(ValueError, match="unsafe"):
        Tokenizer.from_model_dir(folder).apply_chat_template(MESSAGES)


def test_incremental_deltas_join_to_the_whole_decode_without_broken_characters(tokenizer):
    prompt = tokenizer.encode("Write something:")
    for text in TEXTS:
        output = tokenizer.encode(text, add_special_tokens=False)
        deltas = stream(tokenizer, prompt, output)
        assert "".join(deltas) == tokenizer.decode(output) == text
        assert not any("\ufffd" in delta for delta in deltas)
    # Multi-byte characters really are split across tokens here, so the hold-back was exercised.
    assert "" in stream(tokenizer, prompt, tokenizer.encode(TEXTS[0], add_special_tokens=False))


def test_incremental_detokenizer_skips_special_tokens_and_feeds_text_stream(tokenizer):
    output = tokenizer.encode("héllo 世界", add_special_tokens=False) + [tokenizer.eos_token_ids[0]]
    deltas = stream(tokenizer, tokenizer.encode("Hi"), output)
    assert "".join(deltas) == "héllo 世界" and deltas[-1] == ""
    kept = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False)
    assert "".join(kept.add(i) for i in output) == tokenizer.decode(output)
    text_stream = TextStream(IncrementalDetokenizer(tokenizer, tokenizer.encode("Hi")), ("世",))
    num_added = next(n for n, token_id in enumerate(output, 1) if text_stream.add(token_id))
    assert num_added < len(output) and text_stream.take(is_final=True) == "héllo "


def test_prefix_context_keeps_the_leading_space_of_sentencepiece_style_tokenizers(tmp_path, tiny_llama_dir):
    # Metaspace decoders drop the space before the first word of what they decode; the prompt's
    # tail given as context keeps it in the stream.
    folder = metaspace_folder(tmp_path, tiny_llama_dir)
    tokenizer = Tokenizer.from_model_dir(folder)
    prompt = tokenizer.encode("The quick brown fox")
    output = tokenizer.encode("The quick brown fox jumps over the lazy dog.")[len(prompt):]
    assert tokenizer.decode(output)[0] != " "
    assert "".join(stream(tokenizer, prompt, output)) == " jumps over the lazy dog."
    assert (tokenizer.think_start_token_ids, tokenizer.think_end_token_ids) == ((), ())


def metaspace_folder(tmp_path: Path, config_source: Path) -> Path:
    backend = RustTokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    backend.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    folder = tmp_path / "metaspace"
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    config = json.loads((config_source / "config.json").read_text())
    config.update(vocab_size=backend.get_vocab_size(), eos_token_id=2, bos_token_id=1)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_think_delimiters_from_vocabulary_or_tandem_json(tokenizer, model_dir, tmp_path):
    assert tokenizer.think_start_token_ids == (tokenizer.token_to_id("<think>"),)
    assert tokenizer.think_end_token_ids == (tokenizer.token_to_id("</think>"),)
    folder = copy_tokenizer_files(model_dir, tmp_path / "with-settings")
    (folder / "tandem.json").write_text(json.dumps({"think_start": "Let me think", "think_end": "Finally,"}))
    custom = Tokenizer.from_model_dir(folder)
    assert custom.think_start_token_ids == tuple(custom.encode("Let me think", add_special_tokens=False))
    assert custom.think_end_token_ids == tuple(custom.encode("Finally,", add_special_tokens=False))
    assert len(custom.think_end_token_ids) > 1
    (folder / "tandem.json").write_text(json.dumps({"think_start": None, "think_end": None}))
    assert Tokenizer.from_model_dir(folder).think_end_token_ids == ()
    for settings, message in [({"think_start": "<think>"}, "think_end must be a non-empty string"),
                              ({"think_begin": "<think>"}, "unknown keys"),
                              ({"think_start": "", "think_end": "x"}, "think_start must be")]:
        (folder / "tandem.json").write_text(json.dumps(settings))
        with pytest.raises(ValueError, match=message):
            Tokenizer.from_model_dir(folder)


def test_missing_or_bad_files_are_named(tiny_qwen2_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder .*nowhere does not exist"):
        Tokenizer.from_model_dir(tmp_path / "nowhere")
    for name, message in [("tokenizer.json", "tokenizer file .*tokenizer.json does not exist"),
                          ("config.json", "model config file .*config.json does not exist")]:
        folder = copy_tokenizer_files(tiny_qwen2_dir, tmp_path / f"no-{name}")
        (folder / name).unlink()
        with pytest.raises(FileNotFoundError, match=message):
            Tokenizer.from_model_dir(folder)
    folder = copy_tokenizer_files(tiny_qwen2_dir, tmp_path / "broken")
    (folder / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ValueError, match="tokenizer.json cannot be read"):
        Tokenizer.from_model_dir(folder)
    folder = copy_tokenizer_files(tiny_qwen2_dir, tmp_path / "bad-eos")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|not-a-token|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"eos_token '<\|not-a-token\|>' in tokenizer_config.json is not in"):
        Tokenizer.from_model_dir(folder)

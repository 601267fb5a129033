"""The model folder's tokenizer: encode, decode, chat template, special ids and streaming decode.

Reads `tokenizer.json` with the `tokenizers` library, special tokens from `tokenizer_config.json`,
`generation_config.json` and `config.json`, and optional thinking delimiters from `tandem.json`:
    {"think_start": "<think>", "think_end": "</think>"}   (text, encoded without special tokens;
    null for a model without a thinking mode). Without `tandem.json` the delimiters are the tokens
    `<think>` and `</think>` when the vocabulary has them.
Decoding never applies `clean_up_tokenization_spaces`, so streamed text always equals decode().
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import tokenizers

from tandem.engine.chat_template import find_template, render_template
from tandem.engine.config_files import read_json

logger = logging.getLogger(__name__)

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
DEFAULT_THINK_TOKENS = ("<think>", "</think>")
# Prompt tokens an IncrementalDetokenizer decodes with its first output token, so that
# tokenizers that drop a leading space (SentencePiece-style) decode the first word correctly.
INITIAL_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


class Tokenizer:
    """A Hugging Face fast tokenizer plus the special tokens and template of its model folder."""

    def __init__(self, backend: tokenizers.Tokenizer, vocab_size: int, special_tokens: dict[str, str],
                 eos_token_ids: list[int], bos_token_id: int | None, chat_template: str | None,
                 think_start_token_ids: tuple[int, ...] = (), think_end_token_ids: tuple[int, ...] = ()) -> None:
        self.backend = backend
        # Ids >= vocab_size are invalid: the model's embedding has that many rows.
        self.vocab_size = vocab_size
        self.special_tokens = special_tokens
        self.eos_token_ids = eos_token_ids
        self.bos_token_id = bos_token_id
        self.chat_template = chat_template
        self.think_start_token_ids = think_start_token_ids
        self.think_end_token_ids = think_end_token_ids
        self.special_token_ids = frozenset(
            token_id for token_id, token in backend.get_added_tokens_decoder().items() if token.special
        )

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> Tokenizer:
        """Loads the tokenizer of a HF model folder; names any missing or bad file in the error."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model folder {model_dir} does not exist")
        tokenizer_path = model_dir / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise FileNotFoundError(
                f"tokenizer file {tokenizer_path} does not exist (only fast tokenizers are supported)")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_path))
        except Exception as error:  # the Rust library raises a bare Exception on bad files
            raise ValueError(f"tokenizer file {tokenizer_path} cannot be read: {error}") from None
        config = read_json(model_dir / "config.json", "model config")
        tokenizer_config = _optional_json(model_dir / "tokenizer_config.json", "tokenizer config")
        generation_config = _optional_json(model_dir / "generation_config.json", "generation config")
        special_tokens = _special_tokens(tokenizer_config)
        for name, token in special_tokens.items():
            if backend.token_to_id(token) is None:
                raise ValueError(f"{name} {token!r} in tokenizer_config.json is not in {tokenizer_path}")
        vocab_size = _vocab_size(config, backend, model_dir)
        tokenizer = cls(
            backend, vocab_size, special_tokens,
            eos_token_ids=_eos_token_ids(special_tokens, generation_config, config, backend),
            bos_token_id=_bos_token_id(special_tokens, tokenizer_config, generation_config, config, backend),
            chat_template=find_template(model_dir, tokenizer_config),
        )
        tokenizer.think_start_token_ids, tokenizer.think_end_token_ids = _think_delimiters(model_dir, tokenizer)
        return tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of text (with BOS etc. as the tokenizer's post-processor adds them)."""
        if not isinstance(text, str):
            raise ValueError(f"text to encode must be a str, got {type(text).__name__}")
        # The batch call releases the GIL while it runs (encode holds it), so that a long text
        # tokenized in a worker thread does not stall the caller's event loop; _fast skips offsets.
        return self.backend.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids; raises ValueError for ids outside the model's vocabulary."""
        ids = list(ids)
        bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary (size {self.vocab_size})")
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary token (not text to encode), or None when it is absent."""
        return self.backend.token_to_id(token)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            enable_thinking: bool | None = None) -> str:
        """Renders a conversation as prompt text; encode it with add_special_tokens=False."""
        if self.chat_template is None:
            raise ValueError("this model folder has no chat template (tokenizer_config.json chat_template "
                             "or chat_template.jinja)")
        # Left undefined when None, so that templates' `enable_thinking is defined` checks work.
        extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        return render_template(self.chat_template, messages, add_generation_prompt, self.special_tokens, extra)


class IncrementalDetokenizer:
    """Decodes a sequence's output one token at a time into text deltas (vLLM's offset method).

    Each step decodes a short window ids[prefix_offset:] and compares it with the text of
    ids[prefix_offset:read_offset] already emitted; text is emitted only when it grew and does not
    end in U+FFFD, so a character split across tokens comes out whole once its last byte arrives.
    """

    __slots__ = ("_tokenizer", "_skip_special_tokens", "_ids", "_prefix_offset", "_read_offset")

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        context = [i for i in prompt_token_ids if not self._is_skipped(i)][-INITIAL_CONTEXT_TOKENS:]
        self._ids = context  # only the window still needed, never the whole sequence
        self._prefix_offset = 0
        self._read_offset = len(context)

    def add(self, token_id: int) -> str:
        """Adds one generated token; returns the text it completes ("" while a character is partial)."""
        if self._is_skipped(token_id):
            return ""
        self._ids.append(token_id)
        prefix_text = self._tokenizer.decode(self._ids[self._prefix_offset:self._read_offset])
        new_text = self._tokenizer.decode(self._ids[self._prefix_offset:])
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        # The emitted window moves on: ids before the old read offset are no longer needed.
        del self._ids[:self._read_offset]
        self._prefix_offset, self._read_offset = 0, len(self._ids)
        return new_text[len(prefix_text):]

    def _is_skipped(self, token_id: int) -> bool:
        return self._skip_special_tokens and token_id in self._tokenizer.special_token_ids


def _optional_json(path: Path, what: str) -> dict[str, Any]:
    return read_json(path, what) if path.is_file() else {}


def _special_tokens(tokenizer_config: dict[str, Any]) -> dict[str, str]:
    # Values are a token string, null, or a serialised AddedToken {"content": ...}.
    tokens = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = tokenizer_config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"tokenizer_config.json {name} must be a string, an object or null, got {value!r}")
        tokens[name] = value
    return tokens


def _id_list(value: Any, where: str) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    raise ValueError(f"{where} eos_token_id must be an int or a list of ints, got {value!r}")


def _eos_token_ids(special_tokens: dict[str, str], generation_config: dict[str, Any], config: dict[str, Any],
                   backend: tokenizers.Tokenizer) -> list[int]:
    # The union: chat models end turns with tokens that only generation_config lists.
    ids = [backend.token_to_id(special_tokens["eos_token"])] if "eos_token" in special_tokens else []
    ids += _id_list(generation_config.get("eos_token_id"), "generation_config.json")
    ids += _id_list(config.get("eos_token_id"), "config.json")
    return list(dict.fromkeys(ids))


def _bos_token_id(special_tokens: dict[str, str], tokenizer_config: dict[str, Any],
                  generation_config: dict[str, Any], config: dict[str, Any],
                  backend: tokenizers.Tokenizer) -> int | None:
    if "bos_token" in special_tokens:
        return backend.token_to_id(special_tokens["bos_token"])
    if "bos_token" in tokenizer_config:  # named null on purpose: the tokenizer has no BOS
        return None
    value = generation_config.get("bos_token_id", config.get("bos_token_id"))
    return value if isinstance(value, int) else None


def _vocab_size(config: dict[str, Any], backend: tokenizers.Tokenizer, model_dir: Path) -> int:
    value = config.get("vocab_size")
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.json in {model_dir} needs a positive integer vocab_size, got {value!r}")
    num_tokens = backend.get_vocab_size(with_added_tokens=True)
    if num_tokens > value:
        # The model cannot take the extra ids; they are rejected wherever ids are checked.
        logger.warning("tokenizer in %s has %d tokens but the model's vocab_size is %d", model_dir, num_tokens, value)
    return value


def _think_delimiters(model_dir: Path, tokenizer: Tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    settings_path = model_dir / "tandem.json"
    if not settings_path.is_file():
        ids = [tokenizer.token_to_id(token) for token in DEFAULT_THINK_TOKENS]
        if None in ids:
            return (), ()
        return (ids[0],), (ids[1],)
    settings = read_json(settings_path, "tandem settings")
    unknown = set(settings) - {"think_start", "think_end"}
    if unknown:
        raise ValueError(f"{settings_path} has unknown keys {sorted(unknown)}; expected think_start, think_end")
    start, end = settings.get("think_start"), settings.get("think_end")
    if start is None and end is None:
        return (), ()
    for name, text in (("think_start", start), ("think_end", end)):
        if not isinstance(text, str) or not text:
            raise ValueError(f"{settings_path} {name} must be a non-empty string (or both null), got {text!r}")
    start_ids = tuple(tokenizer.encode(start, add_special_tokens=False))
    end_ids = tuple(tokenizer.encode(end, add_special_tokens=False))
    if any(i >= tokenizer.vocab_size for i in start_ids + end_ids):
        raise ValueError(f"{settings_path} delimiters encode to ids outside the model's vocabulary")
    return start_ids, end_ids

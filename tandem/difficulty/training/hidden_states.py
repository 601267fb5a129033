"""Training inputs for the probe: final hidden states of prompts, from the served model or a stand-in.

`EngineHiddenStates` runs each prompt once through Tandem's own engine (`load_model` on a Hugging
Face folder, one prefill step into a private paged KV cache) and keeps the last prompt token's
hidden state after the final norm: the vector the prefill worker feeds the LM head, and the one it
will hand to `ProbeHead.score_hidden`. Prompts are tokenized as the router tokenizes them: as
plain text (`prompt_format="plain"`, a completion request) or as one user message rendered by the
model's chat template with the generation prompt (`"chat"`, a chat request), so the probe sees
the token ids the prefill worker will see. `CachedHiddenStates` keeps the states on disk, keyed
by the model's files and the prompt format (the folder) and each prompt's text (the rows).

`minilm_hidden_states` is the stand-in used for evaluation without a served model: the last-layer
state of all-MiniLM-L6-v2's final ([SEP]) token. It is not the served model, so its figures only
show that a linear probe on a final hidden state can rank difficulty.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from tandem.difficulty.training.vector_cache import VectorCache, cache_root

HiddenStateSource = Callable[[Sequence[str]], np.ndarray]
Tokenize = Callable[[str], Sequence[int]]
PROMPT_FORMATS = ("plain", "chat")
# Files whose content decides a prompt's hidden state (weights are fingerprinted by size and head).
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
               "tandem.json")
FINGERPRINT_HEAD_BYTES = 1 << 20


def router_tokenizer(model_dir: pathlib.Path, prompt_format: str = "plain") -> Tokenize:
    """The router's tokenization of a prompt for `model_dir`: plain text, or one chat message."""
    from tandem.engine.tokenizer import Tokenizer

    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    tokenizer = Tokenizer.from_model_dir(model_dir)
    if prompt_format == "plain":
        return tokenizer.encode

    def encode_chat(prompt: str) -> list[int]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)

    return encode_chat


def model_fingerprint(model_dir: pathlib.Path) -> str:
    """Short content id of a model folder: its config and tokenizer files and its weights."""
    digest = hashlib.blake2b(digest_size=8)
    for name in MODEL_FILES:
        path = model_dir / name
        digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"\0absent"))
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(FINGERPRINT_HEAD_BYTES))
    return digest.hexdigest()


class EngineHiddenStates:
    """Computes [N, hidden_size] float32 final hidden states of prompts with Tandem's engine.

    The model and tokenizer load on the first call and stay loaded. `tokenize` defaults to the
    router's tokenization for the folder and `prompt_format`, so the probe is trained on the very
    token ids the prefill worker will see. Prompts longer than the model's context keep their last
    `max_prompt_tokens` tokens: the end holds the question.
    """

    def __init__(self, model_dir: str | pathlib.Path, device: str = "cpu",
                 max_prompt_tokens: int | None = None, block_size: int = 16,
                 tokenize: Tokenize | None = None, prompt_format: str = "plain") -> None:
        self.model_dir = pathlib.Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ValueError(f"{self.model_dir} is not a model folder (no config.json)")
        if block_size <= 0 or (max_prompt_tokens is not None and max_prompt_tokens <= 0):
            raise ValueError("block_size and max_prompt_tokens must be > 0")
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
        self.prompt_format = prompt_format
        self.device = device
        self.max_prompt_tokens = max_prompt_tokens
        self.block_size = block_size
        self._tokenize = tokenize
        self._model = None
        self._config = None

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        """[N, hidden_size] float32: one prefill per prompt, last token's final-norm output."""
        import torch

        model, config = self._loaded()
        limit = min(self.max_prompt_tokens or config.max_position_embeddings,
                    config.max_position_embeddings)
        states = np.zeros((len(prompts), config.hidden_size), dtype=np.float32)
        for row, prompt in enumerate(prompts):
            token_ids = list(self._tokenize(prompt))[-limit:]
            if not token_ids:
                raise ValueError(f"prompt {row} encodes to no tokens")
            hidden = _prefill_last_hidden(model, config, token_ids, self.block_size,
                                          torch.device(self.device))
            states[row] = hidden.float().cpu().numpy()
        return states

    def _loaded(self):
        if self._model is None:
            from tandem.engine.weights import load_model

            if self._tokenize is None:
                self._tokenize = router_tokenizer(self.model_dir, self.prompt_format)
            self._model, self._config = load_model(self.model_dir, device=self.device)
        return self._model, self._config


def _prefill_last_hidden(model, config, token_ids: list[int], block_size: int, device):
    """Runs one prompt as a single prefill step; returns the last token's [hidden] state."""
    import torch

    from tandem.engine.attention_metadata import AttentionMetadata
    from tandem.engine.kv_cache import KVCacheSpec, allocate_kv_cache

    num_tokens = len(token_ids)
    num_blocks = -(-num_tokens // block_size)
    dtype = next(model.parameters()).dtype
    spec = KVCacheSpec(config.num_hidden_layers, num_blocks, block_size,
                       config.num_key_value_heads, config.head_dim, dtype)
    kv_cache = allocate_kv_cache(spec, device)  # [L, blocks, 2, block_size, Hkv, D]

    def tensor(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    attn = AttentionMetadata(query_lens=[num_tokens], context_lens=tensor([num_tokens]),
                             block_tables=tensor([list(range(num_blocks))]),
                             slot_mapping=tensor(list(range(num_tokens))))
    with torch.inference_mode():
        hidden = model(tensor(token_ids), tensor(list(range(num_tokens))), kv_cache, attn)  # [T, H]
    return hidden[-1]


class CachedHiddenStates:
    """An `EngineHiddenStates` whose states are kept on disk (computed once per prompt text).

    The folder, `$TANDEM_CACHE/hidden_states/<model fingerprint>-<prompt format>-<max tokens>/`,
    names the model's files and how prompts become tokens; the rows are keyed by prompt text.
    """

    def __init__(self, source: EngineHiddenStates, root: pathlib.Path | None = None) -> None:
        if source._tokenize is not None:
            raise ValueError("cached hidden states must come from the router's tokenization")
        self.source = source
        limit = source.max_prompt_tokens or "context"
        name = f"{model_fingerprint(source.model_dir)}-{source.prompt_format}-{limit}"
        self.cache = VectorCache((root or cache_root()) / "hidden_states" / name, ("hidden",),
                                 shard_rows=64)

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        """[N, hidden_size] float32 hidden states, from the cache where present."""
        return self.cache.get(list(prompts), lambda missing: (self.source(missing),))[0]


def minilm_hidden_states(prompts: Sequence[str]) -> np.ndarray:
    """[N, 384] stand-in hidden states: MiniLM's last-layer final-token state (cached on disk)."""
    from tandem.difficulty.training.embedding_cache import EmbeddingCache

    return EmbeddingCache().final(prompts)

"""Training inputs for the probe: final hidden states of prompts, from the served model or a stand-in.

`EngineHiddenStates` runs each prompt once through Tandem's own engine (`load_model` on a Hugging
Face folder, one prefill step into a private paged KV cache) and keeps the last prompt token's
hidden state after the final norm: the vector the prefill worker feeds the LM head, and the one it
will hand to `ProbeHead.score_hidden`. Prompts are tokenized as plain text by Tandem's tokenizer
(as the router tokenizes a plain prompt); a deployment that wraps prompts in a chat template
should train on templated prompts.

`minilm_hidden_states` is the stand-in used for evaluation on this machine: the last-layer state
of all-MiniLM-L6-v2's final ([SEP]) token. It is not the served model, so its figures only show
that a linear probe on a final hidden state can rank difficulty.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import numpy as np

HiddenStateSource = Callable[[Sequence[str]], np.ndarray]
Tokenize = Callable[[str], Sequence[int]]


def router_tokenizer(model_dir: pathlib.Path) -> Tokenize:
    """The encode function of Tandem's tokenizer for `model_dir` (imported only when needed)."""
    from tandem.engine.tokenizer import Tokenizer

    return Tokenizer.from_model_dir(model_dir).encode


class EngineHiddenStates:
    """Computes [N, hidden_size] float32 final hidden states of prompts with Tandem's engine.

    The model and tokenizer load on the first call and stay loaded. `tokenize` defaults to the
    router's tokenizer for the folder (`tandem.engine.tokenizer.Tokenizer.from_model_dir`), so the
    probe is trained on the very token ids the prefill worker will see. Prompts longer than the
    model's context keep their last `max_prompt_tokens` tokens: the end holds the question.
    """

    def __init__(self, model_dir: str | pathlib.Path, device: str = "cpu",
                 max_prompt_tokens: int | None = None, block_size: int = 16,
                 tokenize: Tokenize | None = None) -> None:
        self.model_dir = pathlib.Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ValueError(f"{self.model_dir} is not a model folder (no config.json)")
        if block_size <= 0 or (max_prompt_tokens is not None and max_prompt_tokens <= 0):
            raise ValueError("block_size and max_prompt_tokens must be > 0")
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
                self._tokenize = router_tokenizer(self.model_dir)
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


def minilm_hidden_states(prompts: Sequence[str]) -> np.ndarray:
    """[N, 384] stand-in hidden states: MiniLM's last-layer final-token state (cached on disk)."""
    from router.difficulty.embedding_cache import EmbeddingCache

    return EmbeddingCache().final(prompts)

"""Training inputs for the probe: final hidden states of prompts, from the served model or a stand-in.

`engine_hidden_states` runs each prompt once through Tandem's own engine (`load_model` on a Hugging
Face folder, one prefill step into a private paged KV cache) and keeps the last prompt token's
hidden state after the final norm: the vector the prefill worker feeds the LM head, and the one it
will hand to `ProbeHead.score_hidden`. Prompts are tokenized with the folder's tokenizer.json as
plain text; a deployment that wraps prompts in a chat template should train on templated prompts.

`minilm_hidden_states` is the stand-in used for evaluation on this machine: the last-layer state
of all-MiniLM-L6-v2's final ([SEP]) token. It is not the served model, so its figures only show
that a linear probe on a final hidden state can rank difficulty.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import numpy as np

HiddenStateSource = Callable[[Sequence[str]], np.ndarray]


def engine_hidden_states(model_dir: str | pathlib.Path, prompts: Sequence[str], device: str = "cpu",
                         max_prompt_tokens: int | None = None, block_size: int = 16) -> np.ndarray:
    """[N, hidden_size] float32 final hidden states of `prompts` under the model in `model_dir`."""
    import torch
    from tokenizers import Tokenizer

    from tandem.engine.weights import load_model

    model_dir = pathlib.Path(model_dir)
    tokenizer_path = model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ValueError(f"{model_dir} has no tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    model, config = load_model(model_dir, device=device)
    limit = min(max_prompt_tokens or config.max_position_embeddings, config.max_position_embeddings)
    states = np.zeros((len(prompts), config.hidden_size), dtype=np.float32)
    for row, prompt in enumerate(prompts):
        token_ids = tokenizer.encode(prompt).ids[-limit:]  # keep the end: it holds the question
        if not token_ids:
            raise ValueError(f"prompt {row} encodes to no tokens")
        hidden = _prefill_last_hidden(model, config, token_ids, block_size, torch.device(device))
        states[row] = hidden.float().cpu().numpy()
    return states


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

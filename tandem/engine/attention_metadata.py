"""Per-step attention metadata: where each new token reads and writes KV in the paged cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class AttentionMetadata:
    """Describes one forward step over a flattened batch.

    The step's new tokens are flattened in sequence order: sequence 0's new tokens, then
    sequence 1's, and so on. T = total new tokens, S = sequences in the step. Sequence s's new
    tokens sit at positions context_lens[s] - query_lens[s] ... context_lens[s] - 1 and attend
    causally to every earlier position of the same sequence (cached or new).
    """

    # New tokens per sequence in this step (S ints); 1 for a decoding sequence.
    query_lens: list[int]
    # [S] int64: cached plus new tokens per sequence once this step has run.
    context_lens: torch.Tensor
    # [S, max_blocks_per_seq] int64 block ids of each sequence, padded with 0 past its blocks.
    block_tables: torch.Tensor
    # [T] int64: block_id * block_size + offset_in_block where each new token's K/V is written.
    slot_mapping: torch.Tensor

    @property
    def num_sequences(self) -> int:
        """S, the number of sequences in the step."""
        return len(self.query_lens)

    @property
    def is_decode_only(self) -> bool:
        """True when every sequence adds exactly one token (a pure decode step)."""
        return all(n == 1 for n in self.query_lens)

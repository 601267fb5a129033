"""Runs one scheduled batch through the model: builds its inputs and metadata, owns the KV cache."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tandem.engine.attention_metadata import AttentionMetadata
from tandem.engine.cpu_linear import can_pack, pack_linears
from tandem.engine.kv_cache import KVCacheSpec, allocate_kv_cache
from tandem.engine.scheduler import ScheduledBatch
from tandem.engine.sequence import Sequence

logger = logging.getLogger(__name__)

# (request_id, block_ids, start_token, end_token): prompt tokens [start, end) computed this step.
PromptSpan = tuple[str, list[int], int, int]
# Called after each layer has written its KV: (layer_index, the step's prompt spans).
LayerHook = Callable[[int, list[PromptSpan]], None]


@dataclass(slots=True)
class StepOutput:
    """What one forward step gives the sampler: one row per sequence whose last token ran."""

    seqs: list[Sequence]
    logits: torch.Tensor  # [n, vocab] float32
    hidden: torch.Tensor  # [n, hidden] after the final norm


@dataclass(slots=True)
class StepInputs:
    """Flattened model inputs of a batch (T tokens, S sequences)."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    attn: AttentionMetadata
    sample_indices: list[int]  # rows of T whose hidden state feeds the sampler
    sample_seqs: list[Sequence]
    prompt_spans: list[PromptSpan]


class ModelRunner:
    """Owns the model and the paged KV cache tensor; turns a ScheduledBatch into logits."""

    def __init__(self, model: torch.nn.Module, spec: KVCacheSpec, device: str | torch.device,
                 pack_cpu_linears: bool = True) -> None:
        self.model = model
        self.spec = spec
        self.device = torch.device(device)
        weight_dtype = next(model.parameters()).dtype
        if pack_cpu_linears and can_pack(self.device, weight_dtype):
            num_packed = pack_linears(model)
            logger.info("packed %d Linear layers for oneDNN on %s", num_packed, self.device)
        self.block_size = spec.block_size
        # [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim] (kv_cache.py contract).
        self.kv_cache = allocate_kv_cache(spec, self.device)

    def execute(self, batch: ScheduledBatch, layer_hook: LayerHook | None = None) -> StepOutput:
        """Runs the batch's new tokens; returns logits and hidden states of the sampling rows."""
        if batch.block_copies:
            self.copy_blocks(batch.block_copies)
        inputs = self.prepare(batch)
        on_layer_done = None
        if layer_hook is not None and inputs.prompt_spans:
            spans = inputs.prompt_spans

            def on_layer_done(layer_index: int) -> None:
                layer_hook(layer_index, spans)

        with torch.inference_mode():
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_cache, inputs.attn,
                                on_layer_done)  # [T, hidden]
            if len(inputs.sample_indices) != hidden.shape[0]:
                rows = torch.tensor(inputs.sample_indices, dtype=torch.int64, device=self.device)
                hidden = hidden.index_select(0, rows)
            logits = self.model.compute_logits(hidden)  # [n, vocab] float32
        return StepOutput(inputs.sample_seqs, logits, hidden)

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        """Flattens the batch: token ids, positions, slots and block tables of every sequence."""
        block_size = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        context_lens: list[int] = []
        sample_indices: list[int] = []
        sample_seqs: list[Sequence] = []
        prompt_spans: list[PromptSpan] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_new
            block_ids = seq.block_ids
            input_ids += seq.token_ids[start:end]
            positions += range(start, end)
            if num_new == 1:
                slots.append(block_ids[start // block_size] * block_size + start % block_size)
            else:
                slots += [block_ids[p // block_size] * block_size + p % block_size for p in range(start, end)]
            context_lens.append(end)
            if end == seq.num_tokens:
                sample_indices.append(len(input_ids) - 1)
                sample_seqs.append(seq)
            if start < seq.num_prompt_tokens:
                prompt_spans.append((seq.request_id, list(block_ids), start, min(end, seq.num_prompt_tokens)))
        attn = AttentionMetadata(
            query_lens=list(batch.num_new_tokens),
            context_lens=self._tensor(context_lens),
            block_tables=self._block_tables(batch.seqs),
            slot_mapping=self._tensor(slots),
        )
        return StepInputs(self._tensor(input_ids), self._tensor(positions), attn, sample_indices,
                          sample_seqs, prompt_spans)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copies whole blocks (every layer, K and V) from source to destination ids."""
        sources = torch.tensor([src for src, _ in copies], dtype=torch.int64, device=self.device)
        destinations = torch.tensor([dst for _, dst in copies], dtype=torch.int64, device=self.device)
        self.kv_cache.index_copy_(1, destinations, self.kv_cache.index_select(1, sources))

    def _block_tables(self, seqs: list[Sequence]) -> torch.Tensor:
        # [S, max_blocks] int64, padded with block 0 past each sequence's own blocks.
        width = max(len(seq.block_ids) for seq in seqs)
        rows = [seq.block_ids + [0] * (width - len(seq.block_ids)) for seq in seqs]
        return self._tensor(rows)

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)

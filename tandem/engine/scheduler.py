"""Continuous batching: which sequences run in the next step, and how many tokens each computes.

Each step first gives every decoding sequence its one token, then continues running prefills,
then admits waiting sequences, all within a token budget (chunked prefill) and a sequence limit.
When the block pool runs short, the newest running sequence is preempted: its blocks are freed
and it goes back to the front of the queue, to be recomputed later (its outputs are kept).
Prefill-only sequences are the exception: their KV is being sent to another worker, which may
still read any of their blocks, so they take their whole prompt's blocks at admission (they never
need more) and are never preempted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tandem.engine.block_manager import KVCacheManager
from tandem.engine.engine_config import EngineConfig
from tandem.engine.sequence import FinishReason, Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledBatch:
    """One step's work: sequences in batch order (decodes first) and their new-token counts."""

    seqs: list[Sequence]
    num_new_tokens: list[int]
    # (source, destination) KV block copies to run before the forward (copy-on-write).
    block_copies: list[tuple[int, int]]
    # Sequences preempted while this step was scheduled.
    num_preempted: int = 0

    @property
    def is_empty(self) -> bool:
        """True when nothing runs this step."""
        return not self.seqs

    @property
    def num_tokens(self) -> int:
        """Tokens computed in this step."""
        return sum(self.num_new_tokens)


class Scheduler:
    """Owns the waiting queue and the running batch; talks to the KV manager through its verbs."""

    def __init__(self, config: EngineConfig, kv_manager: KVCacheManager) -> None:
        self.config = config
        self.kv_manager = kv_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0  # since start, for metrics and tests

    def add(self, seq: Sequence, at_front: bool = False) -> None:
        """Queues a sequence; at_front for ones that already hold blocks (prefilled, forked)."""
        seq.status = SequenceStatus.WAITING
        if at_front:
            self.waiting.appendleft(seq)
        else:
            self.waiting.append(seq)

    def has_work(self) -> bool:
        """True while any sequence waits or runs."""
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        """Picks the next step's batch, allocating blocks and preempting when the pool is short."""
        scheduled: dict[Sequence, int] = {}
        budget = self.config.max_num_batched_tokens
        num_preempted = 0
        decodes = [seq for seq in self.running if seq.num_uncomputed_tokens == 1]
        prefills = [seq for seq in self.running if seq.num_uncomputed_tokens > 1]
        for seq in decodes + prefills:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(seq.num_uncomputed_tokens, budget)
            while self.kv_manager.allocate_slots(seq, num_new) is None:
                victim = self._newest_preemptible()
                if victim is None:
                    break  # only prefill-only sequences run: seq waits for a release
                budget += scheduled.pop(victim, 0)
                self._preempt(victim)
                num_preempted += 1
                if victim is seq:
                    break
            else:
                scheduled[seq] = num_new
                budget -= num_new
        if num_preempted == 0:
            budget = self._admit_waiting(scheduled, budget)
        return ScheduledBatch(list(scheduled), list(scheduled.values()),
                              self._live_copies(scheduled), num_preempted)

    def update_after_step(self, batch: ScheduledBatch) -> list[Sequence]:
        """Marks the batch's tokens computed, caches full blocks, and returns the sequences whose
        last token ran (they get a new token), in batch order."""
        sampled = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += num_new
            self.kv_manager.cache_blocks(seq)
            if seq.num_computed_tokens == seq.num_tokens:
                sampled.append(seq)
        return sampled

    def finish(self, seq: Sequence, reason: FinishReason, keep_blocks: bool = False) -> int:
        """Takes a sequence out of the queues and frees its blocks, or keeps them held for a later
        release (prefill-only). Returns the number of blocks that became unused."""
        self._remove_from_queues(seq)
        seq.finish_reason = reason
        if keep_blocks:
            seq.status = SequenceStatus.PREFILLED
            return 0
        seq.status = SequenceStatus.FINISHED
        return self.kv_manager.free(seq)

    def num_queued_prompt_tokens(self) -> int:
        """Tokens still to compute before sequences reach decoding (queued plus unfinished chunks)."""
        total = 0
        for seq in (*self.waiting, *self.running):
            total += seq.num_uncomputed_tokens - (1 if seq.num_output_tokens else 0)
        return total

    def _admit_waiting(self, scheduled: dict[Sequence, int], budget: int) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            computed_blocks, num_hit_tokens = [], 0
            if not seq.block_ids:
                computed_blocks, num_hit_tokens = self.kv_manager.get_computed_blocks(seq)
            num_uncomputed = seq.num_tokens - seq.num_computed_tokens - num_hit_tokens
            num_new = min(num_uncomputed, budget)
            num_to_hold = num_uncomputed if seq.is_prefill_only else num_new
            if self.kv_manager.allocate_slots(seq, num_to_hold, computed_blocks) is None:
                break  # first come, first served: later arrivals wait behind it
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            if seq.num_cached_prompt_tokens is None:
                seq.num_cached_prompt_tokens = min(num_hit_tokens, seq.num_prompt_tokens)
            self.running.append(seq)
            scheduled[seq] = num_new
            budget -= num_new
        return budget

    def _newest_preemptible(self) -> Sequence | None:
        # A prefill-only sequence's blocks may be under a KV send that has not read them yet.
        return next((seq for seq in reversed(self.running) if not seq.is_prefill_only), None)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.kv_manager.free(seq)
        self.add(seq, at_front=True)
        self.num_preemptions += 1

    def _remove_from_queues(self, seq: Sequence) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)

    def _live_copies(self, scheduled: dict[Sequence, int]) -> list[tuple[int, int]]:
        # A copy whose destination was freed again by a preemption in this step is dropped.
        copies = self.kv_manager.take_pending_copies()
        if not copies:
            return copies
        live_blocks = {block_id for seq in scheduled for block_id in seq.block_ids}
        return [(src, dst) for src, dst in copies if dst in live_blocks]

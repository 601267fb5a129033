"""One decode request's samples: engine ids, shared budgets, and which are still running.

Sample 0 keeps the request id (it owns the reservation); sample i > 0 runs as "<id>#i". Engine ids
map back to samples through a dict, never by parsing. The request-wide limits, the total-token
ceiling (from the cost budget) and the deadline, are enforced here, where the tokens are counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from tandem.engine.request_output import RequestOutput

from tandem.api.v1 import inference_pb2

CANCELLED = inference_pb2.FINISH_REASON_CANCELLED
# Parallel samples one request may run (the router allows fewer).
MAX_SAMPLES = 64


@dataclass(slots=True)
class SampleGroup:
    """The running samples of one request and the events they feed."""

    request_id: str
    num_samples: int
    max_total_tokens: int = 0
    deadline: float = 0.0
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    running: set[int] = field(default_factory=set)
    num_tokens: int = 0
    # Events taken off the queue but not yet streamed (see next_batched).
    backlog: deque = field(default_factory=deque)
    # Samples whose engine request this Decode made (or claimed), and so must free at the end.
    owned: set[int] = field(default_factory=set)
    # The probe's difficulty of a prompt this worker prefilled itself (None: no probe ran).
    probe_difficulty: float | None = None
    _index_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.num_samples <= MAX_SAMPLES:
            raise ValueError(f"sampling.n must be in [1, {MAX_SAMPLES}], got {self.num_samples}")
        self.running = set(range(self.num_samples))
        self._index_of = {self.engine_id(index): index for index in range(self.num_samples)}

    def engine_id(self, sample_index: int) -> str:
        """The engine's id for one sample."""
        return self.request_id if sample_index == 0 else f"{self.request_id}#{sample_index}"

    def sample_index(self, engine_id: str) -> int:
        """The sample an engine id belongs to; KeyError if it is not one of this group's."""
        return self._index_of[engine_id]

    def engine_ids(self, sample_indices=None) -> list[str]:
        """Engine ids of the given samples (default: those still running)."""
        indices = self.running if sample_indices is None else sample_indices
        return [self.engine_id(i) for i in sorted(indices)]

    def tokens_left(self) -> int | None:
        """Generated tokens the request-wide ceiling still allows (None: no ceiling)."""
        return None if not self.max_total_tokens else max(0, self.max_total_tokens - self.num_tokens)

    def count_tokens(self, num_tokens: int) -> bool:
        """Adds generated tokens; True once the request-wide ceiling is reached."""
        self.num_tokens += num_tokens
        return 0 < self.max_total_tokens <= self.num_tokens

    def seconds_left(self) -> float | None:
        """Seconds to the deadline, or None without one."""
        return None if not self.deadline else self.deadline - time.time()

    async def next_event(self):
        """The next event (see next_batched), or None once the deadline has passed."""
        if not self.backlog and self.queue.empty():
            left = self.seconds_left()
            try:
                self.backlog.append(await asyncio.wait_for(
                    self.queue.get(), timeout=None if left is None else max(0.0, left)))
            except TimeoutError:
                return None
        return self.next_batched()

    def next_batched(self):
        """The next event from the backlog, with the queued outputs of the same sample merged in.

        Under load the engine makes tokens faster than they are streamed; sending what has
        piled up as one chunk costs no latency and saves a message per token.
        """
        while not self.queue.empty():
            self.backlog.append(self.queue.get_nowait())
        event = self.backlog.popleft()
        while (isinstance(event, RequestOutput) and not event.finished and self.backlog
               and isinstance(self.backlog[0], RequestOutput)
               and self.backlog[0].request_id == event.request_id):
            event = merge_outputs(event, self.backlog.popleft())
        return event

    def cancel(self, sample_indices: list[int], detail: str) -> list[int]:
        """Marks samples cancelled and wakes the stream; returns those that were running."""
        stopped = [i for i in sample_indices if i in self.running]
        for index in stopped:
            self.running.discard(index)
            self.queue.put_nowait(SampleStopped(index, CANCELLED, detail))
        return stopped


@dataclass(slots=True, frozen=True)
class SampleStopped:
    """Put on a group's queue when a sample ends outside the engine (cancel, deadline, budget)."""

    sample_index: int
    finish_reason: int
    detail: str


def merge_outputs(first: RequestOutput, later: RequestOutput) -> RequestOutput:
    """One output for two consecutive outputs of the same request."""
    logprobs = (None if first.new_logprobs is None or later.new_logprobs is None
                else first.new_logprobs + later.new_logprobs)
    return RequestOutput(
        first.request_id, first.new_token_ids + later.new_token_ids, logprobs,
        first.new_sections + later.new_sections, first.new_text + later.new_text, later.finished,
        later.finish_reason, first.num_cached_prompt_tokens,
        first.hidden_state if first.hidden_state is not None else later.hidden_state)

"""What the client has been sent of each sample, and the request that resumes a lost sample.

Dispatch records every token it relays here. When a decode worker is lost mid-stream, each of its
unfinished samples resumes on another decode worker from exactly these tokens
(`DecodeRequest.output_token_ids`): the new worker goes on as if it had made them, so max_tokens,
the thinking budget and its section, stop strings and seeded draws continue where they were, and
the absolute deadline is the same. The request-wide token ceiling (from max_cost) spans samples
that may then stream from several workers, so it is counted and enforced here as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.api.v1 import inference_pb2, worker_pb2

COST = inference_pb2.FINISH_REASON_COST
COST_DETAIL = "request token ceiling (max_cost) reached"


@dataclass(slots=True)
class SampleProgress:
    """Tokens relayed per sample, which samples finished, and how often each one migrated."""

    num_samples: int
    # Generated tokens allowed over all samples; 0 means unlimited.
    max_total_tokens: int = 0
    token_ids: list[list[int]] = field(init=False)
    finished: set[int] = field(default_factory=set)
    num_migrations: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.token_ids = [[] for _ in range(self.num_samples)]
        self.num_migrations = [0] * self.num_samples

    @property
    def num_tokens(self) -> int:
        """Tokens relayed over all samples."""
        return sum(len(tokens) for tokens in self.token_ids)

    def tokens_left(self) -> int | None:
        """Tokens the request-wide ceiling still allows (None: no ceiling)."""
        return max(0, self.max_total_tokens - self.num_tokens) if self.max_total_tokens else None

    def unfinished(self) -> list[int]:
        """Samples still running, in index order."""
        return [i for i in range(self.num_samples) if i not in self.finished]

    def record_first_token(self, token_id: int) -> None:
        """Records sample 0's first token (made by the prefill worker or the colocated decode)."""
        self.token_ids[0].append(token_id)

    def record(self, chunk: worker_pb2.DecodeChunk) -> list[worker_pb2.DecodeChunk]:
        """Records a chunk (sample_index already the client's) and returns what to relay: nothing
        for a finished sample, else the chunk cut to the ceiling, followed by a COST finish for
        every other running sample once the ceiling is reached."""
        index = chunk.sample_index
        if index in self.finished:
            return []
        left = self.tokens_left()
        num_new = len(chunk.token_ids)
        if left is not None and (num_new > left or (num_new == left and not chunk.finish_reason)):
            _cut(chunk, left)
        self.token_ids[index].extend(chunk.token_ids)
        if chunk.finish_reason:
            self.finished.add(index)
        relayed = [chunk]
        if self.tokens_left() == 0:
            for other in self.unfinished():
                self.finished.add(other)
                relayed.append(worker_pb2.DecodeChunk(sample_index=other, finish_reason=COST,
                                                      finish_detail=COST_DETAIL))
        return relayed


def resumed_request(request_id: str, prompt_token_ids: list[int],
                    sampling: inference_pb2.SamplingParams, budget: worker_pb2.DecodeBudget,
                    progress: SampleProgress, sample_index: int) -> worker_pb2.DecodeRequest:
    """The colocated Decode that continues one sample on another worker after its tokens so far.

    It runs as a request of its own with one sample, so a seeded sample keeps its own seed
    (seed + sample_index, as the original request gave it); the ceiling is what is left of it.
    """
    resumed_sampling = inference_pb2.SamplingParams()
    resumed_sampling.CopyFrom(sampling)
    resumed_sampling.n = 1
    if sampling.HasField("seed"):
        resumed_sampling.seed = sampling.seed + sample_index
    resumed_budget = worker_pb2.DecodeBudget()
    resumed_budget.CopyFrom(budget)
    left = progress.tokens_left()
    if left is not None:
        resumed_budget.max_total_tokens = left
    return worker_pb2.DecodeRequest(
        request_id=request_id, prompt_token_ids=prompt_token_ids, colocated=True,
        sampling=resumed_sampling, budget=resumed_budget,
        output_token_ids=progress.token_ids[sample_index])


def _cut(chunk: worker_pb2.DecodeChunk, num_allowed: int) -> None:
    del chunk.token_ids[num_allowed:]
    del chunk.logprobs[num_allowed:]
    del chunk.sections[num_allowed:]
    chunk.finish_reason = COST
    chunk.finish_detail = COST_DETAIL

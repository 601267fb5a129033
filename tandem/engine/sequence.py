"""One request's state inside the engine: its tokens, KV blocks, progress and thinking section."""

from __future__ import annotations

import enum
import secrets
from collections import deque
from typing import Any

import torch

from tandem.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"  # queued for (re)computation, possibly holding blocks already
    RUNNING = "running"  # in the batch: prefilling in chunks or decoding
    PREFILLED = "prefilled"  # prefill-only: prompt done, first token made, blocks held until release
    RESERVED = "reserved"  # decode side: blocks reserved for a prompt whose KV arrives from outside
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    """Why a sequence stopped producing tokens."""

    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # aborted by the caller
    # A prefill-only request made its first token without hitting a stop or a limit (whatever the
    # reason, a prefill-only request keeps its blocks until release).
    PREFILLED = "prefilled"


class TokenSection(enum.Enum):
    """Whether a generated token belongs to the thinking section or to the answer."""

    THINKING = 1
    ANSWER = 2


class Sequence:
    """A request's tokens (prompt then output), block table and generation state."""

    __slots__ = (
        "request_id", "params", "token_ids", "num_prompt_tokens", "num_computed_tokens",
        "block_ids", "block_hashes", "num_cached_blocks", "status", "finish_reason", "num_cached_prompt_tokens",
        "is_prefill_only", "is_thinking", "num_thinking_tokens", "forced_token_ids",
        "detokenizer", "_generator", "_device",
    )

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 device: str | torch.device = "cpu", is_prefill_only: bool = False) -> None:
        self.request_id = request_id
        self.params = params
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        # Tokens whose KV is in the cache; the rest still have to run through the model.
        self.num_computed_tokens = 0
        self.block_ids: list[int] = []
        # Chained hashes of the leading full blocks of token_ids (computed on demand, append-only).
        self.block_hashes: list[bytes] = []
        # Leading blocks of block_ids that are in the prefix cache (registered or reused from it).
        self.num_cached_blocks = 0
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        # Prompt tokens served from the prefix cache at first admission (None until admitted).
        self.num_cached_prompt_tokens: int | None = None
        self.is_prefill_only = is_prefill_only
        self.is_thinking = params.starts_in_thinking
        self.num_thinking_tokens = 0
        # Tokens the engine emits next instead of sampling (the end-of-thinking delimiter).
        self.forced_token_ids: deque[int] = deque()
        # The engine's IncrementalDetokenizer and stop-string state for this sequence, if any.
        self.detokenizer: Any = None
        self._generator: torch.Generator | None = None
        self._device = device
        self._force_if_budget_spent()

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens."""
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        """The prompt (a copy)."""
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        """The generated tokens (a copy)."""
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens that must still run through the model before the next sample."""
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        """True once the sequence has stopped."""
        return self.status is SequenceStatus.FINISHED

    @property
    def generator(self) -> torch.Generator:
        """The sequence's own random generator, seeded from params.seed (made on first use)."""
        if self._generator is None:
            seed = self.params.seed if self.params.seed is not None else secrets.randbits(63)
            self._generator = torch.Generator(device=self._device)
            self._generator.manual_seed(seed)
        return self._generator

    def append_token(self, token_id: int) -> TokenSection:
        """Adds a generated token, updates the thinking section, and returns the token's section."""
        if self.forced_token_ids and self.forced_token_ids[0] == token_id:
            self.forced_token_ids.popleft()
            is_forced = True
        else:
            is_forced = False
        self.token_ids.append(token_id)
        if self.is_thinking:
            if not is_forced:
                self.num_thinking_tokens += 1
            if self._ends_with(self.params.think_end_token_ids):
                self.is_thinking = False
                self.forced_token_ids.clear()
            else:
                self._force_if_budget_spent()
            return TokenSection.THINKING
        if self._ends_with(self.params.think_start_token_ids):
            self.is_thinking = True
            self._force_if_budget_spent()
            return TokenSection.THINKING
        return TokenSection.ANSWER

    def fork(self, request_id: str, params: SamplingParams) -> Sequence:
        """A copy with its own id, params and generator that shares this sequence's block ids."""
        child = Sequence(request_id, self.prompt_token_ids, params, self._device)
        child.token_ids = list(self.token_ids)
        child.num_computed_tokens = self.num_computed_tokens
        child.block_ids = list(self.block_ids)
        child.block_hashes = list(self.block_hashes)
        child.num_cached_blocks = self.num_cached_blocks
        child.num_cached_prompt_tokens = self.num_cached_prompt_tokens
        child.is_thinking = self.is_thinking
        child.num_thinking_tokens = self.num_thinking_tokens
        child.forced_token_ids = deque(self.forced_token_ids)
        child._force_if_budget_spent()
        return child

    def _ends_with(self, delimiter: tuple[int, ...]) -> bool:
        n = len(delimiter)
        # The delimiter must lie inside the output: the prompt's own delimiter does not count.
        if n == 0 or n > self.num_output_tokens:
            return False
        return tuple(self.token_ids[-n:]) == delimiter

    def _force_if_budget_spent(self) -> None:
        budget = self.params.max_thinking_tokens
        if (self.is_thinking and budget is not None and not self.forced_token_ids
                and self.num_thinking_tokens >= budget):
            self.forced_token_ids.extend(self.params.think_end_token_ids)

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id!r}, {self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, blocks={self.block_ids})")

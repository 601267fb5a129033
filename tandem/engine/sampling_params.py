"""Per-request sampling and budget settings, validated when they are made."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_TOP_LOGPROBS = 20
MAX_SEED = 2**64 - 1


@dataclass(slots=True)
class SamplingParams:
    """How one request picks its tokens and when it stops.

    Thinking budget: a sequence is in its thinking section from the start when
    `starts_in_thinking` is set (the prompt opened it), or once it emits `think_start_token_ids`.
    When it has made `max_thinking_tokens` tokens inside the section without closing it, the
    engine forces exactly `think_end_token_ids` next, so that an answer still comes.
    """

    # 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    temperature: float = 1.0
    # Nucleus filter: keep the smallest set of tokens whose probability reaches top_p.
    top_p: float = 1.0
    # Keep the k most likely tokens; 0 disables the filter.
    top_k: int = 0
    # Seed of the request's own generator; None draws a fresh one.
    seed: int | None = None
    max_tokens: int = 16
    # Generation stops before any of these strings; the stop string is not returned.
    stop: tuple[str, ...] = ()
    # Generation stops after any of these token ids (as well as after the model's EOS).
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # Return the logprob of each chosen token (log_softmax of the raw model logits).
    logprobs: bool = False
    # Number of most likely alternatives returned with each token, 0 to 20.
    top_logprobs: int = 0
    # Thinking tokens allowed before the end-of-thinking delimiter is forced; None = no limit.
    max_thinking_tokens: int | None = None
    think_start_token_ids: tuple[int, ...] = ()
    think_end_token_ids: tuple[int, ...] = ()
    starts_in_thinking: bool = False

    def __post_init__(self) -> None:
        self.stop = _as_tuple(self.stop, "stop")
        self.stop_token_ids = _as_tuple(self.stop_token_ids, "stop_token_ids")
        self.think_start_token_ids = _as_tuple(self.think_start_token_ids, "think_start_token_ids")
        self.think_end_token_ids = _as_tuple(self.think_end_token_ids, "think_end_token_ids")
        self._check_sampling()
        self._check_stops()
        self._check_thinking()

    def _check_sampling(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        _check_int(self.top_k, "top_k", low=0)
        if self.seed is not None:
            _check_int(self.seed, "seed", low=0, high=MAX_SEED)
        _check_int(self.max_tokens, "max_tokens", low=1)
        _check_int(self.top_logprobs, "top_logprobs", low=0, high=MAX_TOP_LOGPROBS)

    def _check_stops(self) -> None:
        for text in self.stop:
            if not isinstance(text, str) or not text:
                raise ValueError(f"stop strings must be non-empty strings, got {text!r}")
        for token_id in self.stop_token_ids:
            _check_int(token_id, "stop_token_ids entry", low=0)

    def _check_thinking(self) -> None:
        for token_id in self.think_start_token_ids + self.think_end_token_ids:
            _check_int(token_id, "thinking delimiter token id", low=0)
        if self.max_thinking_tokens is None:
            return
        _check_int(self.max_thinking_tokens, "max_thinking_tokens", low=0)
        if not self.think_end_token_ids:
            raise ValueError("max_thinking_tokens needs think_end_token_ids (the delimiter to force)")

    @property
    def is_greedy(self) -> bool:
        """True when the request takes the most likely token at every step."""
        return self.temperature == 0.0

    @property
    def needs_logprobs(self) -> bool:
        """True when the sampler must compute log-probabilities for this request."""
        return self.logprobs or self.top_logprobs > 0


def _as_tuple(value, name: str) -> tuple:
    if isinstance(value, str):
        return (value,) if name == "stop" else _bad_sequence(name, value)
    try:
        return tuple(value)
    except TypeError:
        return _bad_sequence(name, value)


def _bad_sequence(name: str, value) -> tuple:
    raise ValueError(f"{name} must be a list, got {value!r}")


def _check_int(value, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")

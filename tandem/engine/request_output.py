"""What the engine hands back per step (RequestOutput) and per finished request (Completion)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tandem.engine.sequence import FinishReason, TokenSection


@dataclass(slots=True)
class TokenLogprob:
    """A chosen token's logprob and the most likely alternatives (most likely first)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(slots=True)
class RequestOutput:
    """New tokens of one request from one step (or its end)."""

    request_id: str
    new_token_ids: list[int]
    # One entry per new token when the request asked for logprobs, else None.
    new_logprobs: list[TokenLogprob] | None
    # Section (thinking or answer) of each new token.
    new_sections: list[TokenSection]
    # Text added by these tokens; stop strings and anything that may start one are held back.
    new_text: str
    finished: bool
    finish_reason: FinishReason | None
    # Prompt tokens whose KV came from the prefix cache at admission.
    num_cached_prompt_tokens: int
    # Final hidden state (after the final norm) of the last prompt token, [hidden] float32 on the
    # CPU: set in the output that carries the first generated token.
    hidden_state: torch.Tensor | None = None


@dataclass(slots=True)
class Completion:
    """A whole finished request, as LLMEngine.generate returns it."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None
    logprobs: list[TokenLogprob] | None
    num_cached_prompt_tokens: int

    def add(self, output: RequestOutput) -> None:
        """Appends one step's output of this request."""
        self.token_ids += output.new_token_ids
        self.text += output.new_text
        if self.logprobs is not None and output.new_logprobs:
            self.logprobs += output.new_logprobs
        if output.finished:
            self.finish_reason = output.finish_reason
        self.num_cached_prompt_tokens = output.num_cached_prompt_tokens

"""Checks on what callers hand the engine, so that a bad request fails alone with a clear message."""

from __future__ import annotations

from collections.abc import Mapping

from tandem.engine.sampling_params import SamplingParams
from tandem.engine.sequence import Sequence, SequenceStatus


class RequestChecker:
    """Validates new requests, prefilled requests and forks against the engine's limits."""

    def __init__(self, vocab_size: int, max_model_len: int, block_size: int, num_blocks: int,
                 has_tokenizer: bool) -> None:
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.has_tokenizer = has_tokenizer

    def check_new(self, request_id: str, seqs: Mapping[str, Sequence], prompt_token_ids: list[int],
                  params: SamplingParams) -> None:
        """A new request: a fresh id, a non-empty prompt of known tokens that fits with max_tokens."""
        self.check_request_id(request_id, seqs)
        self.check_token_ids(prompt_token_ids, "prompt")
        self.check_params(params, len(prompt_token_ids))

    def check_prefilled(self, reserved: Sequence, prompt_token_ids: list[int], first_token_id: int,
                        params: SamplingParams) -> None:
        """A reservation being claimed: the same prompt, a known first token, params that fit."""
        self.check_token_ids(prompt_token_ids, "prompt")
        if list(prompt_token_ids) != reserved.prompt_token_ids:
            raise ValueError(f"request {reserved.request_id!r}: the prompt differs from the one reserved")
        self.check_token_ids([first_token_id], "first_token_id")
        self.check_params(params, len(prompt_token_ids))

    def check_fork(self, parent: Sequence, new_request_id: str, seqs: Mapping[str, Sequence],
                   params: SamplingParams) -> None:
        """A fork: a started parent, a fresh id, and a max_tokens the parent has not reached yet."""
        if parent.status in (SequenceStatus.RESERVED, SequenceStatus.FINISHED):
            raise ValueError(f"request {parent.request_id!r} is {parent.status.value} and cannot be forked")
        self.check_request_id(new_request_id, seqs)
        self.check_params(params, parent.num_prompt_tokens)
        if parent.num_output_tokens >= params.max_tokens:
            raise ValueError(f"fork of {parent.request_id!r}: max_tokens ({params.max_tokens}) is already "
                             f"reached by its {parent.num_output_tokens} generated tokens")

    def check_resumed(self, output_token_ids: list[int], params: SamplingParams,
                      prefill_only: bool) -> None:
        """Tokens a migrated request made elsewhere: known ids, fewer than max_tokens, not prefill-only."""
        self.check_token_ids(output_token_ids, "output_token_ids")
        if prefill_only:
            raise ValueError("a prefill-only request cannot continue from output tokens")
        if len(output_token_ids) >= params.max_tokens:
            raise ValueError(f"{len(output_token_ids)} output tokens already reach max_tokens "
                             f"({params.max_tokens}): nothing is left to generate")

    def check_request_id(self, request_id: str, seqs: Mapping[str, Sequence]) -> None:
        """A non-empty string not in use."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
        if request_id in seqs:
            raise ValueError(f"request id {request_id!r} is already in use")

    def check_token_ids(self, token_ids: list[int], what: str) -> None:
        """A non-empty list of ints inside the vocabulary."""
        if isinstance(token_ids, (str, bytes)) or not hasattr(token_ids, "__len__"):
            raise ValueError(f"{what} must be a list of token ids, got {type(token_ids).__name__}")
        if len(token_ids) == 0:
            raise ValueError(f"{what} is empty: at least one token is needed")
        for position, token_id in enumerate(token_ids):
            if isinstance(token_id, bool) or not isinstance(token_id, int):
                raise ValueError(f"{what} token at position {position} is not an int: {token_id!r}")
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"{what} token id {token_id} at position {position} is outside the "
                                 f"vocabulary (ids 0 to {self.vocab_size - 1})")

    def check_params(self, params: SamplingParams, num_prompt_tokens: int) -> None:
        """Params that fit the context and the cache, and that this engine can honour."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be SamplingParams, got {type(params).__name__}")
        if num_prompt_tokens >= self.max_model_len:
            raise ValueError(f"prompt has {num_prompt_tokens} tokens, over the context limit: "
                             f"max_model_len is {self.max_model_len} and at least one token must follow")
        if num_prompt_tokens + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt ({num_prompt_tokens} tokens) plus max_tokens ({params.max_tokens}) "
                             f"is over max_model_len ({self.max_model_len})")
        num_needed = -(-(num_prompt_tokens + params.max_tokens) // self.block_size)
        if num_needed > self.num_blocks:
            raise ValueError(f"prompt plus max_tokens needs {num_needed} KV blocks but the cache has "
                             f"only {self.num_blocks}")
        if params.stop and not self.has_tokenizer:
            raise ValueError("stop strings need a tokenizer, and this engine has none")
        for token_id in params.think_start_token_ids + params.think_end_token_ids:
            if token_id >= self.vocab_size:
                raise ValueError(f"thinking delimiter token id {token_id} is outside the vocabulary "
                                 f"(ids 0 to {self.vocab_size - 1})")

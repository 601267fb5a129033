"""Turns a client's GenerateRequest into a validated, tokenized plan for the workers.

Every check here runs before any worker is touched, so a bad request costs nothing and changes
nothing: each failure is a RouterError that names the field and the limit. Size checks come before
anything reads the input, and tokenization and chat templating run in worker threads
(plan_request_off_loop), so that a huge prompt never holds up the router's event loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from router.errors import ErrorCode, RouterError
from tandem.api.v1 import inference_pb2, worker_pb2

VALID_ROLES = {"system", "user", "assistant", "tool"}
MAX_SAMPLES = 16
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16
# Each generated token is checked against every stop string, on the router's event loop.
MAX_STOP_CHARS = 256
MAX_REQUEST_ID_CHARS = 128
# Hard cap on one request's HTTP body or gRPC message, before anything parses it.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# Generous bound on the text one token stands for (real text averages 3-5 characters per token;
# the longest tokens of Llama-family vocabularies are runs of spaces or symbols far shorter than
# this): input longer than max_context times this cannot fit the context, so it is refused
# without being tokenized.
MAX_CHARS_PER_TOKEN = 64
# Inputs this long are planned in a small pool of their own, so that a few huge prompts never
# queue ahead of the short ones (which go through the loop's default executor).
LONG_INPUT_CHARS = 16_384
_LONG_INPUT_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="router-long-input")


@dataclass(slots=True)
class ModelEntry:
    """A model the router serves: its tokenizer, context, prices and its workers' KV block size."""

    name: str
    tokenizer: object
    max_context: int
    price_per_1k_prompt_tokens: float = 0.0
    price_per_1k_completion_tokens: float = 0.0
    block_size: int = 16
    # Models with the same id read token ids alike (a hash of the tokenizer's definition).
    vocabulary_id: str = ""

    @property
    def supports_thinking(self) -> bool:
        """True when the tokenizer knows an end-of-thinking delimiter."""
        return bool(getattr(self.tokenizer, "think_end_token_ids", ()))

    def prompt_cost(self, num_tokens: int) -> float:
        """Cost of num_tokens prompt tokens."""
        return num_tokens * self.price_per_1k_prompt_tokens / 1000.0

    def completion_cost(self, num_tokens: int) -> float:
        """Cost of num_tokens generated tokens."""
        return num_tokens * self.price_per_1k_completion_tokens / 1000.0


@dataclass(slots=True)
class BudgetDefaults:
    """What a request gets where it does not say (from the routing policy)."""

    max_tokens: int = 256
    max_thinking_tokens: int | None = None
    # None leaves thinking to the model's chat template (its own default).
    thinking: bool | None = None
    temperature: float = 1.0
    num_samples: int = 1
    # How the samples are reduced when the request does not say (inference_pb2.SelectionRule).
    selection: int = inference_pb2.SELECTION_RULE_UNSPECIFIED
    selection_m: int = 0


@dataclass(slots=True)
class RequestPlan:
    """A request ready for dispatch."""

    prompt_token_ids: list[int]
    sampling: inference_pb2.SamplingParams
    budget: worker_pb2.DecodeBudget
    num_samples: int
    deadline: float | None


def tokenize_input(request: inference_pb2.GenerateRequest, model: ModelEntry,
                   thinking: bool | None) -> list[int]:
    """The prompt's token ids, from text, chat messages (via the chat template) or ids."""
    tokenizer = model.tokenizer
    kind = request.WhichOneof("input")
    if kind is None:
        raise _invalid("one of prompt, chat or tokens is required", "input")
    if kind == "prompt":
        if not request.prompt:
            raise _invalid("prompt is empty", "prompt")
        return tokenizer.encode(request.prompt)
    if kind == "tokens":
        ids = list(request.tokens.token_ids)
        bad = [t for t in ids if t >= tokenizer.vocab_size]
        if bad:
            raise _invalid(f"token ids {bad[:5]} are outside the vocabulary of {model.name} "
                           f"(size {tokenizer.vocab_size})", "tokens")
        if not ids:
            raise _invalid("tokens is empty", "tokens")
        return ids
    messages = [{"role": m.role, "content": m.content} for m in request.chat.messages]
    if not messages:
        raise _invalid("chat.messages is empty", "messages")
    for index, message in enumerate(messages):
        if message["role"] not in VALID_ROLES:
            raise _invalid(f"messages[{index}].role {message['role']!r} is not one of "
                           f"{sorted(VALID_ROLES)}", "messages")
    add_prompt = (request.chat.add_generation_prompt
                  if request.chat.HasField("add_generation_prompt") else True)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_prompt,
                                         enable_thinking=thinking)
    return tokenizer.encode(text, add_special_tokens=False)


def check_request_id(request_id: str) -> None:
    """Refuses a client request id (a label echoed back) that is long or not printable."""
    if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
        raise _invalid(f"request_id must be at most {MAX_REQUEST_ID_CHARS} printable characters, "
                       f"got {request_id[:MAX_REQUEST_ID_CHARS]!r} ({len(request_id)} characters)",
                       "request_id")


def check_input_size(request: inference_pb2.GenerateRequest, max_context: int, model_name: str) -> int:
    """Refuses input that cannot fit max_context tokens, without reading it; returns its length.

    The length is in characters for text and chat (roles included) and in ids for token input.
    """
    kind = request.WhichOneof("input")
    if kind == "tokens":
        num_ids = len(request.tokens.token_ids)
        if num_ids > max_context:
            raise _invalid(f"tokens: {num_ids} tokens do not fit the context of {max_context} "
                           f"tokens of model {model_name}", "tokens")
        return num_ids
    if kind == "chat":
        param = "messages"
        num_chars = sum(len(m.role) + len(m.content) for m in request.chat.messages)
    else:
        param = "prompt"
        num_chars = len(request.prompt)
    limit = max_context * MAX_CHARS_PER_TOKEN
    if num_chars > limit:
        raise _invalid(f"{param}: {num_chars} characters is over the limit of {limit} characters "
                       f"for model {model_name} (its context of {max_context} tokens x "
                       f"{MAX_CHARS_PER_TOKEN} characters per token)", param)
    return num_chars


async def plan_request_off_loop(request: inference_pb2.GenerateRequest, model: ModelEntry,
                                defaults: BudgetDefaults, arrived_at: float) -> RequestPlan:
    """plan_request in a worker thread, after the size check; the deadline counts from
    arrived_at (Unix time of the request's arrival)."""
    num_chars = check_input_size(request, model.max_context, model.name)
    executor = _LONG_INPUT_EXECUTOR if num_chars >= LONG_INPUT_CHARS else None
    return await asyncio.get_running_loop().run_in_executor(
        executor, plan_request, request, model, defaults, arrived_at)


def plan_request(request: inference_pb2.GenerateRequest, model: ModelEntry,
                 defaults: BudgetDefaults, now: float | None = None) -> RequestPlan:
    """Validates the request against the model and fixes its sampling and budget."""
    now = time.time() if now is None else now
    check_input_size(request, model.max_context, model.name)
    budget = request.budget
    thinking = budget.thinking if budget.HasField("thinking") else defaults.thinking
    if thinking and not model.supports_thinking:
        raise _invalid(f"model {model.name} has no thinking mode", "thinking")
    sampling = _checked_sampling(request.sampling, defaults)
    num_samples = sampling.n
    prompt = tokenize_input(request, model, thinking)
    if thinking and not _ends_with(prompt, model.tokenizer, "think_start_token_ids"):
        # Thinking asked for but not opened by the template: open it, so that it surely happens.
        prompt += list(model.tokenizer.think_start_token_ids)
    max_thinking = (budget.max_thinking_tokens if budget.HasField("max_thinking_tokens")
                    else defaults.max_thinking_tokens)
    # Unless thinking is off, the template (or the model itself) may open a thinking section.
    may_think = thinking is not False and model.supports_thinking
    starts_in_thinking = may_think and _ends_with(prompt, model.tokenizer, "think_start_token_ids")
    if starts_in_thinking and max_thinking == 0:
        # No thinking allowed: close the section the prompt opened, as forcing the delimiter at
        # once would (a prefill worker, which makes the first token, knows no thinking budget).
        prompt += list(model.tokenizer.think_end_token_ids)
        starts_in_thinking = False
    room = model.max_context - len(prompt)
    if room < 1:
        raise _invalid(f"prompt has {len(prompt)} tokens; model {model.name} has a context of "
                       f"{model.max_context} tokens and needs room for at least one more", "prompt")
    max_tokens = _checked_max_tokens(budget, defaults, room)
    deadline, max_cost = _checked_limits(budget)
    max_total_tokens = _tokens_within_cost(model, len(prompt), max_cost, num_samples)
    decode_budget = worker_pb2.DecodeBudget(
        max_tokens=max_tokens,
        deadline=now + deadline if deadline is not None else 0.0,
        max_total_tokens=max_total_tokens,
        starts_in_thinking=starts_in_thinking)
    if may_think and max_thinking is not None:
        # Unset stays unset (no limit): 0 is a budget of its own.
        decode_budget.max_thinking_tokens = max_thinking
    return RequestPlan(prompt, sampling, decode_budget, num_samples,
                       None if deadline is None else now + deadline)


def _checked_sampling(given: inference_pb2.SamplingParams,
                      defaults: BudgetDefaults) -> inference_pb2.SamplingParams:
    sampling = inference_pb2.SamplingParams()
    sampling.CopyFrom(given)
    if not sampling.HasField("temperature"):
        sampling.temperature = defaults.temperature
    if not math.isfinite(sampling.temperature) or not 0.0 <= sampling.temperature <= 2.0:
        raise _invalid(f"temperature must be in [0, 2], got {sampling.temperature}", "temperature")
    if sampling.HasField("top_p") and not 0.0 < sampling.top_p <= 1.0:
        raise _invalid(f"top_p must be in (0, 1], got {sampling.top_p}", "top_p")
    if sampling.top_logprobs > MAX_TOP_LOGPROBS:
        raise _invalid(f"top_logprobs must be at most {MAX_TOP_LOGPROBS}, got "
                       f"{sampling.top_logprobs}", "top_logprobs")
    if not sampling.HasField("n"):
        # Unset, not 1: the policy's samples and selection apply.
        sampling.n = defaults.num_samples
        if sampling.selection == inference_pb2.SELECTION_RULE_UNSPECIFIED:
            sampling.selection, sampling.selection_m = defaults.selection, defaults.selection_m
    if not 1 <= sampling.n <= MAX_SAMPLES:
        raise _invalid(f"n must be in [1, {MAX_SAMPLES}], got {sampling.n}", "n")
    is_majority = sampling.selection == inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M
    if is_majority and not 1 <= sampling.selection_m <= sampling.n:
        raise _invalid(f"selection_m must be in [1, n={sampling.n}], got {sampling.selection_m}",
                       "selection_m")
    if any(not stop for stop in sampling.stop):
        raise _invalid("stop strings must not be empty", "stop")
    if len(sampling.stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in sampling.stop):
        raise _invalid(f"at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_CHARS} "
                       f"characters each", "stop")
    return sampling


def _checked_max_tokens(budget: inference_pb2.Budget, defaults: BudgetDefaults, room: int) -> int:
    if not budget.HasField("max_tokens"):
        return min(defaults.max_tokens, room)
    if budget.max_tokens < 1:
        raise _invalid(f"max_tokens must be >= 1, got {budget.max_tokens}", "max_tokens")
    if budget.max_tokens > room:
        raise _invalid(f"max_tokens {budget.max_tokens} does not fit: the prompt leaves room for "
                       f"{room} tokens in the model's context", "max_tokens")
    return budget.max_tokens


def _checked_limits(budget: inference_pb2.Budget) -> tuple[float | None, float | None]:
    deadline = budget.deadline_seconds if budget.HasField("deadline_seconds") else None
    if deadline is not None and not (math.isfinite(deadline) and deadline > 0):
        raise _invalid(f"deadline_seconds must be > 0, got {deadline}", "deadline_seconds")
    max_cost = budget.max_cost if budget.HasField("max_cost") else None
    if max_cost is not None and not (math.isfinite(max_cost) and max_cost > 0):
        raise _invalid(f"max_cost must be > 0, got {max_cost}", "max_cost")
    return deadline, max_cost


def _tokens_within_cost(model: ModelEntry, num_prompt_tokens: int, max_cost: float | None,
                        num_samples: int) -> int:
    """Generated tokens (over all samples) that the cost ceiling allows; 0 means unlimited."""
    if max_cost is None or model.price_per_1k_completion_tokens <= 0:
        return 0
    left = max_cost - model.prompt_cost(num_prompt_tokens)
    num_tokens = math.floor(left / model.completion_cost(1) + 1e-9) if left > 0 else 0
    if num_tokens < num_samples:
        raise RouterError(ErrorCode.RESOURCE_EXHAUSTED,
                          f"max_cost {max_cost:g} cannot cover the prompt "
                          f"({model.prompt_cost(num_prompt_tokens):g}) and one token per sample "
                          f"({num_samples} x {model.completion_cost(1):g})")
    return num_tokens


def _ends_with(prompt: list[int], tokenizer, attribute: str) -> bool:
    delimiter = list(getattr(tokenizer, attribute, ()) or ())
    return bool(delimiter) and prompt[-len(delimiter):] == delimiter


def _invalid(message: str, param: str) -> RouterError:
    return RouterError(ErrorCode.INVALID_ARGUMENT, message, param=param)

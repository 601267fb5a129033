"""OpenAI request bodies -> GenerateRequest, validating every field and naming the one at fault.

Both `/v1/completions` and `/v1/chat/completions` are accepted with the OpenAI fields Tandem can
honour, plus Tandem's extensions (sent by the openai client through `extra_body`):
`max_thinking_tokens`, `thinking`, `deadline_seconds`, `max_cost`, `top_k`, `stop_token_ids`,
`selection` ("all", "first_finished", "majority") with `selection_m`, and `request_id`.
A field Tandem cannot honour (tools, penalties, echo, ...) is refused rather than ignored.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from router.errors import invalid_argument
from tandem.api.v1 import inference_pb2

MAX_N = 64
MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

_CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
               "tool": "tool"}
_SELECTIONS = {"all": inference_pb2.SELECTION_RULE_UNSPECIFIED,
               "first_finished": inference_pb2.SELECTION_RULE_FIRST_FINISHED,
               "majority": inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M}
# Accepted and ignored: they describe the caller, not the generation.
_METADATA_FIELDS = {"user", "metadata", "store", "service_tier"}
_COMMON_FIELDS = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stop",
                  "stop_token_ids", "stream", "stream_options", "presence_penalty",
                  "frequency_penalty", "logit_bias", "max_thinking_tokens", "thinking",
                  "deadline_seconds", "max_cost", "selection", "selection_m", "request_id"}
_CHAT_FIELDS = _COMMON_FIELDS | {"messages", "max_completion_tokens", "logprobs", "top_logprobs",
                                 "add_generation_prompt", "response_format", "tools", "tool_choice",
                                 "parallel_tool_calls", "functions", "function_call"}
_COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt", "logprobs", "echo", "suffix", "best_of"}


class Endpoint(enum.StrEnum):
    """Which OpenAI endpoint a request came to."""

    COMPLETIONS = "completions"
    CHAT = "chat"


@dataclass(slots=True)
class ParsedRequest:
    """A validated OpenAI request: the GenerateRequest plus how to shape the answer."""

    endpoint: Endpoint
    generate: inference_pb2.GenerateRequest
    is_stream: bool
    include_usage: bool
    wants_logprobs: bool


def parse_request(endpoint: Endpoint, body: object) -> ParsedRequest:
    """Validates an OpenAI request body; RouterError(INVALID_ARGUMENT) names the first bad field."""
    if not isinstance(body, dict):
        raise invalid_argument("body", "the request body must be a JSON object")
    allowed = (_CHAT_FIELDS if endpoint is Endpoint.CHAT else _COMPLETION_FIELDS) | _METADATA_FIELDS
    for name in body:
        if name not in allowed:
            raise invalid_argument(name, f"unrecognized request argument for /v1/{endpoint.value}")
    _refuse_unsupported(body)
    request = inference_pb2.GenerateRequest(model=_string(body, "model", allow_empty=True) or "",
                                            request_id=_string(body, "request_id") or "")
    if endpoint is Endpoint.CHAT:
        _fill_chat_input(request, body)
    else:
        _fill_prompt_input(request, body)
    wants_logprobs = _fill_sampling(request.sampling, body, endpoint)
    _fill_budget(request.budget, body, endpoint)
    is_stream = _boolean(body, "stream") or False
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
            raise invalid_argument("stream_options", "expected an object with 'include_usage'")
        include_usage = _boolean(stream_options, "include_usage", "stream_options.include_usage") or False
    return ParsedRequest(endpoint, request, is_stream, include_usage, wants_logprobs)


def _refuse_unsupported(body: dict) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise invalid_argument(name, "is not supported (only 0)")
    for name in ("logit_bias", "tools", "functions"):
        if body.get(name):
            raise invalid_argument(name, "is not supported")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise invalid_argument(name, "is not supported")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise invalid_argument("response_format", "only {'type': 'text'} is supported")
    if body.get("echo"):
        raise invalid_argument("echo", "is not supported")
    if body.get("suffix"):
        raise invalid_argument("suffix", "is not supported")
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        raise invalid_argument("best_of", "is not supported (use n, or selection for best-of-n)")


def _fill_chat_input(request: inference_pb2.GenerateRequest, body: dict) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_argument("messages", "must be a non-empty list of messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid_argument(where, "must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in _CHAT_ROLES:
            raise invalid_argument(f"{where}.role",
                                   f"unknown role {role!r} (expected one of {sorted(_CHAT_ROLES)})")
        content = _message_content(message.get("content"), f"{where}.content", role)
        request.chat.messages.add(role=_CHAT_ROLES[role], content=content)
    add_prompt = _boolean(body, "add_generation_prompt")
    if add_prompt is not None:
        request.chat.add_generation_prompt = add_prompt


def _message_content(content: object, where: str, role: str) -> str:
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid_argument(f"{where}[{j}]", "only text parts {'type': 'text', 'text': ...} are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid_argument(where, "must be a string or a list of text parts")


def _fill_prompt_input(request: inference_pb2.GenerateRequest, body: dict) -> None:
    prompt = body.get("prompt")
    # A one-element batch is the same as its element; larger batches are one request each.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise invalid_argument("prompt", "must not be empty")
        request.prompt = prompt
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        if any(t < 0 or t > UINT32_MAX for t in prompt):
            raise invalid_argument("prompt", "token ids must be in [0, 2^32)")
        request.tokens.token_ids.extend(prompt)
    elif isinstance(prompt, list) and len(prompt) > 1:
        raise invalid_argument("prompt", "batches of several prompts are not supported; send one request per prompt")
    else:
        raise invalid_argument("prompt", "must be a non-empty string or a non-empty list of token ids")


def _fill_sampling(sampling: inference_pb2.SamplingParams, body: dict, endpoint: Endpoint) -> bool:
    temperature = _number(body, "temperature", low=0.0, high=2.0)
    if temperature is not None:
        sampling.temperature = temperature
    top_p = _number(body, "top_p", low=0.0, high=1.0, low_open=True)
    if top_p is not None:
        sampling.top_p = top_p
    top_k = _integer(body, "top_k", low=-1, high=UINT32_MAX)
    if top_k is not None and top_k > 0:
        sampling.top_k = top_k
    seed = _integer(body, "seed", low=0, high=UINT64_MAX)
    if seed is not None:
        sampling.seed = seed
    num_samples = _integer(body, "n", low=1, high=MAX_N)
    if num_samples is not None:
        # Absent (the openai client leaves out what the caller did not give): the policy decides.
        sampling.n = num_samples
    sampling.stop.extend(_stop_strings(body.get("stop")))
    stop_ids = body.get("stop_token_ids")
    if stop_ids is not None:
        if not isinstance(stop_ids, list) or not all(_is_int(t) and 0 <= t <= UINT32_MAX for t in stop_ids):
            raise invalid_argument("stop_token_ids", "must be a list of token ids")
        sampling.stop_token_ids.extend(stop_ids)
    selection = body.get("selection")
    if selection is not None:
        if selection not in _SELECTIONS:
            raise invalid_argument("selection", f"must be one of {sorted(_SELECTIONS)}")
        sampling.selection = _SELECTIONS[selection]
    selection_m = _integer(body, "selection_m", low=1, high=sampling.n if num_samples else MAX_N)
    if selection_m is not None:
        sampling.selection_m = selection_m
    if endpoint is Endpoint.CHAT:
        sampling.logprobs = _boolean(body, "logprobs") or False
        top_logprobs = _integer(body, "top_logprobs", low=0, high=MAX_TOP_LOGPROBS)
        if top_logprobs and not sampling.logprobs:
            raise invalid_argument("top_logprobs", "needs logprobs: true")
        sampling.top_logprobs = top_logprobs or 0
    else:
        num_logprobs = _integer(body, "logprobs", low=0, high=MAX_COMPLETION_LOGPROBS)
        sampling.logprobs = num_logprobs is not None
        sampling.top_logprobs = num_logprobs or 0
    return sampling.logprobs


def _fill_budget(budget: inference_pb2.Budget, body: dict, endpoint: Endpoint) -> None:
    max_tokens = _integer(body, "max_tokens", low=1, high=UINT32_MAX)
    if endpoint is Endpoint.CHAT:
        max_completion = _integer(body, "max_completion_tokens", low=1, high=UINT32_MAX)
        if max_completion is not None and max_tokens is not None and max_completion != max_tokens:
            raise invalid_argument("max_completion_tokens", "conflicts with max_tokens; send only one")
        max_tokens = max_completion if max_completion is not None else max_tokens
    if max_tokens is not None:
        budget.max_tokens = max_tokens
    max_thinking = _integer(body, "max_thinking_tokens", low=0, high=UINT32_MAX)
    if max_thinking is not None:
        budget.max_thinking_tokens = max_thinking
    thinking = _boolean(body, "thinking")
    if thinking is not None:
        budget.thinking = thinking
    deadline = _number(body, "deadline_seconds", low=0.0, high=math.inf, low_open=True)
    if deadline is not None:
        budget.deadline_seconds = deadline
    max_cost = _number(body, "max_cost", low=0.0, high=math.inf, low_open=True)
    if max_cost is not None:
        budget.max_cost = max_cost


def _stop_strings(stop: object) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise invalid_argument("stop", "must be a non-empty string or a list of non-empty strings")
    if len(stops) > MAX_STOP_STRINGS:
        raise invalid_argument("stop", f"at most {MAX_STOP_STRINGS} stop strings")
    return stops


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(body: dict, name: str, *, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise invalid_argument(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise invalid_argument(name, f"must be in [{low}, {high}], got {value}")
    return value


def _number(body: dict, name: str, *, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid_argument(name, f"must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise invalid_argument(name, f"must be in {interval}, got {value}")
    return float(value)


def _boolean(body: dict, name: str, where: str | None = None) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid_argument(where or name, f"must be true or false, got {value!r}")
    return value


def _string(body: dict, name: str, *, allow_empty: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or (not value and not allow_empty):
        raise invalid_argument(name, f"must be a non-empty string, got {value!r}")
    return value


"""GenerateResponse stream -> OpenAI response bodies and server-sent-event chunks.

Finish reasons outside OpenAI's vocabulary keep a standard value (`length` for every limit that
cut a sample short, `abort` for a cancelled sample) and add Tandem's own in
`tandem_finish_reason` and `finish_detail`. In chat, thinking text goes to `reasoning_content`
and only answer tokens get `logprobs.content` entries; completions return the raw text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from router.openai_schema import Endpoint, ParsedRequest
from tandem.api.v1 import inference_pb2

_FINISH_REASONS = {
    inference_pb2.FINISH_REASON_STOP: "stop",
    inference_pb2.FINISH_REASON_LENGTH: "length",
    inference_pb2.FINISH_REASON_CONTEXT: "length",
    inference_pb2.FINISH_REASON_DEADLINE: "length",
    inference_pb2.FINISH_REASON_COST: "length",
    inference_pb2.FINISH_REASON_CANCELLED: "abort",
}
# JSON has no -Infinity; this stands for "impossible token" as other OpenAI-compatible servers do.
_MIN_LOGPROB = -9999.0


@dataclass(slots=True)
class _Choice:
    index: int
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    logprobs: list[inference_pb2.TokenLogprob] = field(default_factory=list)
    finish_reason: int = inference_pb2.FINISH_REASON_UNSPECIFIED
    finish_detail: str = ""
    num_chars: int = 0
    has_sent_role: bool = False


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else _MIN_LOGPROB


def usage_body(usage: inference_pb2.Usage) -> dict:
    """OpenAI `usage` (reasoning and cached token details) with Tandem's cost, samples and routing."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.thinking_tokens},
        "cost": usage.cost,
        "num_samples": usage.num_samples,
        **({"routing": routing_body(usage.routing)} if usage.HasField("routing") else {}),
    }


def routing_body(routing: inference_pb2.RoutingInfo) -> dict:
    """Tandem's routing information as a JSON extension."""
    return {"model": routing.model, "difficulty": routing.difficulty,
            "probe_difficulty": routing.probe_difficulty, "estimator": routing.estimator,
            "disaggregated": routing.disaggregated, "reason": routing.reason}


def routing_headers(routing: inference_pb2.RoutingInfo | None) -> dict[str, str]:
    """The routing decision as response headers: the tier, the difficulty and its estimator
    (difficulty -1 and estimator "none" when no estimator ran)."""
    if routing is None:
        return {}
    return {"x-tandem-model": routing.model, "x-tandem-difficulty": f"{routing.difficulty:.4f}",
            "x-tandem-estimator": routing.estimator or "none"}


class OpenAIRenderer:
    """Accumulates one request's responses and renders them as OpenAI chunks or a final body."""

    def __init__(self, parsed: ParsedRequest, created: int) -> None:
        self.parsed = parsed
        self.created = created
        self.is_chat = parsed.endpoint is Endpoint.CHAT
        self.request_id = parsed.generate.request_id
        self.model = parsed.generate.model
        self.routing: inference_pb2.RoutingInfo | None = None
        self.usage: inference_pb2.Usage | None = None
        self.num_tokens_seen = 0
        self._choices: dict[int, _Choice] = {}

    @property
    def response_id(self) -> str:
        """The OpenAI id: the request id with the endpoint's prefix."""
        return f"{'chatcmpl' if self.is_chat else 'cmpl'}-{self.request_id}"

    def add(self, response: inference_pb2.GenerateResponse) -> dict | None:
        """Records a response; returns its stream chunk, or None when it carries nothing to show."""
        if response.request_id:
            self.request_id = response.request_id
        if response.HasField("routing"):
            self.routing = response.routing
            self.model = response.routing.model or self.model
        if response.HasField("usage"):
            self.usage = response.usage
            if self.routing is None and response.usage.HasField("routing"):
                self.routing = response.usage.routing
                self.model = response.usage.routing.model or self.model
        self.num_tokens_seen += len(response.token_ids)
        choice = self._choices.setdefault(response.sample_index, _Choice(response.sample_index))
        is_thinking = self.is_chat and response.section == inference_pb2.TOKEN_SECTION_THINKING
        (choice.reasoning if is_thinking else choice.text).append(response.text)
        first_offset = choice.num_chars
        choice.num_chars += len(response.text)
        if self.parsed.wants_logprobs and not is_thinking:
            choice.logprobs.extend(response.logprobs)
        if response.finish_reason:
            choice.finish_reason, choice.finish_detail = response.finish_reason, response.finish_detail
        if not response.text and not response.finish_reason and not (self.is_chat and not choice.has_sent_role):
            return None
        return self._chunk(choice, response, is_thinking, first_offset)

    def _chunk(self, choice: _Choice, response: inference_pb2.GenerateResponse, is_thinking: bool,
               first_offset: int) -> dict:
        logprobs = None
        if self.parsed.wants_logprobs and not is_thinking:
            logprobs = self._logprobs(list(response.logprobs), first_offset)
        body: dict = {"index": choice.index, "logprobs": logprobs,
                      "finish_reason": self._finish(response.finish_reason)}
        if self.is_chat:
            delta: dict = {}
            if not choice.has_sent_role:
                delta["role"] = "assistant"
                choice.has_sent_role = True
            if response.text:
                delta["reasoning_content" if is_thinking else "content"] = response.text
            body["delta"] = delta
        else:
            body["text"] = response.text
        self._add_finish_extension(body, response.finish_reason, response.finish_detail)
        chunk = self._envelope("chat.completion.chunk" if self.is_chat else "text_completion", [body])
        if self.parsed.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self) -> dict:
        """The final chunk of a stream with `include_usage`: no choices, the whole request's usage."""
        chunk = self._envelope("chat.completion.chunk" if self.is_chat else "text_completion", [])
        chunk["usage"] = usage_body(self._final_usage())
        return chunk

    def final_body(self) -> dict:
        """The non-streaming response body with every choice, in index order."""
        choices = []
        for choice in sorted(self._choices.values(), key=lambda c: c.index):
            body: dict = {"index": choice.index, "finish_reason": self._finish(choice.finish_reason),
                          "logprobs": self._logprobs(choice.logprobs, 0) if self.parsed.wants_logprobs else None}
            if self.is_chat:
                message: dict = {"role": "assistant", "content": "".join(choice.text)}
                if choice.reasoning:
                    message["reasoning_content"] = "".join(choice.reasoning)
                body["message"] = message
            else:
                body["text"] = "".join(choice.text)
            self._add_finish_extension(body, choice.finish_reason, choice.finish_detail)
            choices.append(body)
        body = self._envelope("chat.completion" if self.is_chat else "text_completion", choices)
        body["usage"] = usage_body(self._final_usage())
        return body

    def _envelope(self, obj: str, choices: list[dict]) -> dict:
        body = {"id": self.response_id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}
        if self.routing is not None:
            body["routing"] = routing_body(self.routing)
        return body

    def _final_usage(self) -> inference_pb2.Usage:
        if self.usage is not None:
            return self.usage
        # The stream ended without usage (it should not): report what was seen.
        return inference_pb2.Usage(completion_tokens=self.num_tokens_seen, num_samples=len(self._choices))

    @staticmethod
    def _finish(reason: int) -> str | None:
        return _FINISH_REASONS.get(reason) if reason else None

    @staticmethod
    def _add_finish_extension(body: dict, reason: int, detail: str) -> None:
        tandem_reason = inference_pb2.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()
        if reason and _FINISH_REASONS[reason] != tandem_reason:
            body["tandem_finish_reason"] = tandem_reason
        if detail:
            body["finish_detail"] = detail

    def _logprobs(self, entries: list[inference_pb2.TokenLogprob], first_offset: int) -> dict:
        if self.is_chat:
            return {"content": [self._chat_logprob(e) for e in entries], "refusal": None}
        offsets, offset = [], first_offset
        for entry in entries:
            offsets.append(offset)
            offset += len(entry.token)
        return {"tokens": [e.token for e in entries],
                "token_logprobs": [_logprob(e.logprob) for e in entries],
                "top_logprobs": [{t.token: _logprob(t.logprob) for t in e.top} for e in entries],
                "text_offset": offsets}

    @staticmethod
    def _chat_logprob(entry: inference_pb2.TokenLogprob) -> dict:
        return {"token": entry.token, "logprob": _logprob(entry.logprob),
                "bytes": list(entry.token.encode("utf-8")),
                "top_logprobs": [{"token": t.token, "logprob": _logprob(t.logprob),
                                  "bytes": list(t.token.encode("utf-8"))} for t in entry.top]}

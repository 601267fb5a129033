"""The demo's requests: gRPC Generate and the official `openai` client, each printed with its route.

Every request leaves the model to the router ("auto" when a policy routes), sets no budget,
temperature or sample count, so the policy's band decides them; each answer is printed with the
tier that served it, the difficulty, the estimator, the policy's reason, tokens and timing.
"""

from __future__ import annotations

import time

import grpc

from tandem.api.v1 import inference_pb2, inference_pb2_grpc

REQUEST_TIMEOUT_S = 300.0
# Under a majority vote the router holds every sample back until the vote is decided, then sends
# the winner whole: its first token and its pace say when the vote ended, not how fast decode is.
HELD_NOTE = "\n           (the winning sample is sent whole once the majority vote is decided)"


def grpc_request(address: str, prompt: str, model: str | None) -> None:
    """One streaming gRPC Generate call (a chat message), printed."""
    request = inference_pb2.GenerateRequest(
        model=model or "",
        chat=inference_pb2.ChatInput(messages=[inference_pb2.ChatMessage(role="user", content=prompt)]))
    timer = TokenTimer()
    texts: dict[int, list[str]] = {}
    usage = routing = None
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        for response in stub.Generate(request, timeout=REQUEST_TIMEOUT_S):
            if response.token_ids:
                timer.tokens(len(response.token_ids))
            texts.setdefault(response.sample_index, []).append(response.text)
            if response.HasField("routing"):
                routing = response.routing
            if response.HasField("usage"):
                usage = response.usage
    if routing is None and usage is not None and usage.HasField("routing"):
        routing = usage.routing
    answer = " | ".join("".join(parts) for parts in texts.values())
    print_answer("gRPC Generate", prompt, answer, _routing_dict(routing),
                 usage.completion_tokens if usage else 0, usage.num_samples if usage else 0,
                 timer.describe())


def openai_chat(base_url: str, prompt: str, model: str | None) -> None:
    """One non-streaming chat completion through the `openai` client, with the routing headers."""
    client = _client(base_url)
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model=model or client.models.list().data[0].id,
        messages=[{"role": "user", "content": prompt}])
    reply = raw.parse()
    elapsed_ms = (time.monotonic() - started) * 1000
    headers = {name: raw.headers.get(name) for name in
               ("x-tandem-model", "x-tandem-difficulty", "x-tandem-estimator")}
    routing = (reply.model_extra or {}).get("routing") or {}
    print_answer("openai chat.completions", prompt, reply.choices[0].message.content, routing,
                 reply.usage.completion_tokens, (reply.usage.model_extra or {}).get("num_samples", 0),
                 f"{elapsed_ms:.0f} ms in all (not streamed, so no TTFT)",
                 "headers " + " ".join(f"{k}={v}" for k, v in headers.items()))


def openai_stream(base_url: str, prompt: str, model: str | None) -> None:
    """One streaming chat completion through the `openai` client."""
    client = _client(base_url)
    model = model or client.models.list().data[0].id
    timer, parts = TokenTimer(), []
    routing: dict = {}
    num_tokens = num_samples = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=True,
        stream_options={"include_usage": True})
    for chunk in stream:
        routing = (chunk.model_extra or {}).get("routing") or routing
        if chunk.choices and chunk.choices[0].delta.content:
            timer.tokens(1)
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            num_tokens = chunk.usage.completion_tokens
            num_samples = (chunk.usage.model_extra or {}).get("num_samples", 0)
            routing = (chunk.usage.model_extra or {}).get("routing") or routing
    print_answer("openai chat.completions, stream=True", prompt, "".join(parts), routing,
                 num_tokens, num_samples, timer.describe())


def _client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="local", timeout=REQUEST_TIMEOUT_S, max_retries=0)


def _routing_dict(routing: inference_pb2.RoutingInfo | None) -> dict:
    if routing is None:
        return {}
    return {"model": routing.model, "difficulty": routing.difficulty,
            "estimator": routing.estimator, "reason": routing.reason}


class TokenTimer:
    """Time to first token and mean inter-token latency, as the client sees them."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.num_after_first = 0

    def tokens(self, count: int) -> None:
        """Records `count` tokens arriving now."""
        now = time.monotonic()
        if self.first_at is None:
            self.first_at, count = now, count - 1
        self.num_after_first += count
        self.last_at = now

    def describe(self) -> str:
        """'TTFT ... ms, inter-token ... ms', or 'no tokens'."""
        if self.first_at is None:
            return "no tokens"
        ttft_ms = (self.first_at - self.started) * 1000
        if self.num_after_first <= 0:
            return f"TTFT {ttft_ms:.0f} ms"
        itl_ms = (self.last_at - self.first_at) * 1000 / self.num_after_first
        return f"TTFT {ttft_ms:.0f} ms, inter-token {itl_ms:.1f} ms"


def print_answer(via: str, prompt: str, answer: str, routing: dict, num_tokens: int,
                 num_samples: int, timing: str, extra: str = "") -> None:
    """Prints one request: prompt, answer, route (tier, difficulty, estimator), reason, tokens."""
    difficulty = routing.get("difficulty", -1.0)
    shown = f"{difficulty:.3f}" if difficulty >= 0 else "none"
    print(f"[{via}] {prompt}\n"
          f"  answer:  {answer.strip()!r}\n"
          f"  routed:  tier {routing.get('model') or '?'} | difficulty {shown} "
          f"(estimator {routing.get('estimator') or 'none'})\n"
          f"  reason:  {routing.get('reason') or 'none given'}\n"
          f"  tokens:  {num_tokens} generated over {num_samples} sample(s), {timing}"
          + (HELD_NOTE if num_samples > 1 and "TTFT" in timing else "")
          + (f"\n  {extra}" if extra else "") + "\n", flush=True)

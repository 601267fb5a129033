"""`tandem demo` (what `make demo` runs): the whole system on one machine, end to end.

Starts a local cluster (router, prefill and decode workers as processes, KV over UCX on loopback)
on a generated tiny model, sends requests through the gRPC API and through the official `openai`
client (one of them streaming), prints each answer with its time to first token and inter-token
latency, and stops the cluster. The tiny model has random weights: its text is gibberish, but
every byte of it travelled the real path.
"""

from __future__ import annotations

import argparse
import time

import grpc

from tandem.api.v1 import inference_pb2, inference_pb2_grpc
from tandem.local_cluster import LocalCluster, LocalClusterConfig

PROMPTS = [
    "Explain in one sentence why the sky is blue.",
    "Write a haiku about disaggregated inference.",
    "What is the capital of France?",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tandem demo`."""
    parser.add_argument("--model", default="tiny", help="model folder, or 'tiny' (generated)")
    parser.add_argument("--prefill", type=int, default=1)
    parser.add_argument("--decode", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=24)


def run(args: argparse.Namespace) -> int:
    """Runs the demo; returns 0 when every request got an answer."""
    config = LocalClusterConfig(model=args.model, num_prefill=args.prefill, num_decode=args.decode)
    print(f"starting a local cluster: {args.prefill} prefill + {args.decode} decode workers "
          f"(model: {args.model}) ...", flush=True)
    started = time.monotonic()
    with LocalCluster(config) as cluster:
        print(f"ready in {time.monotonic() - started:.1f}s; router gRPC {cluster.grpc_address}, "
              f"OpenAI {cluster.http_url}\n", flush=True)
        for prompt in PROMPTS[:2]:
            _grpc_request(cluster.grpc_address, prompt, args.max_tokens)
        _openai_requests(cluster.http_url, PROMPTS[2], args.max_tokens)
        print(f"logs of every component: {cluster.run_dir}")
    print("cluster stopped.")
    return 0


def _grpc_request(address: str, prompt: str, max_tokens: int) -> None:
    request = inference_pb2.GenerateRequest(
        chat=inference_pb2.ChatInput(messages=[inference_pb2.ChatMessage(role="user", content=prompt)]),
        sampling=inference_pb2.SamplingParams(temperature=0.0),
        budget=inference_pb2.Budget(max_tokens=max_tokens))
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        timer = _TokenTimer()
        text, usage, routing = [], None, None
        for response in stub.Generate(request, timeout=120):
            if response.token_ids:
                timer.tokens(len(response.token_ids))
            text.append(response.text)
            if response.HasField("usage"):
                usage = response.usage
            if response.HasField("routing"):
                routing = response.routing
    mode = "disaggregated" if routing is not None and routing.disaggregated else "colocated"
    _print_answer(f"gRPC Generate ({mode})", prompt, "".join(text), timer, usage.completion_tokens)


def _openai_requests(base_url: str, prompt: str, max_tokens: int) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="local")
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": prompt}]
    timer = _TokenTimer()
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                           temperature=0)
    timer.tokens(reply.usage.completion_tokens)
    _print_answer("openai chat.completions", prompt, reply.choices[0].message.content, timer,
                  reply.usage.completion_tokens, show_latency=False)
    timer, parts = _TokenTimer(), []
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    num_tokens = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            timer.tokens(1)
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            num_tokens = chunk.usage.completion_tokens
    _print_answer("openai chat.completions, stream=True", prompt, "".join(parts), timer, num_tokens)


class _TokenTimer:
    """Time to first token and mean inter-token latency, as the client sees them."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.num_after_first = 0

    def tokens(self, count: int) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at, count = now, count - 1
        self.num_after_first += count
        self.last_at = now

    def describe(self) -> str:
        if self.first_at is None:
            return "no tokens"
        ttft_ms = (self.first_at - self.started) * 1000
        if self.num_after_first <= 0:
            return f"TTFT {ttft_ms:.0f} ms"
        itl_ms = (self.last_at - self.first_at) * 1000 / self.num_after_first
        return f"TTFT {ttft_ms:.0f} ms, inter-token {itl_ms:.1f} ms"


def _print_answer(via: str, prompt: str, answer: str, timer: _TokenTimer, num_tokens: int,
                  show_latency: bool = True) -> None:
    latency = timer.describe() if show_latency else f"{(time.monotonic() - timer.started) * 1000:.0f} ms total"
    print(f"[{via}] {prompt}\n  -> {answer!r}\n  {num_tokens} tokens, {latency}\n", flush=True)

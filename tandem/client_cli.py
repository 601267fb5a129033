"""`tandem generate` and `tandem chat`: command-line clients of the router's gRPC API.

Answer text streams to stdout as it arrives and thinking text to stderr; at the end each prints
the time to first token, the inter-token latency and the usage (to stderr). `--json` prints one
JSON object per request instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import grpc

from tandem.api.v1 import inference_pb2, inference_pb2_grpc

DEFAULT_ROUTER = "127.0.0.1:50051"


def add_arguments(parser: argparse.ArgumentParser, command_name: str) -> None:
    """Options of `tandem generate` (a prompt) and `tandem chat` (interactive)."""
    parser.add_argument("--router", default=os.environ.get("TANDEM_ROUTER", DEFAULT_ROUTER),
                        help="router gRPC address host:port (env TANDEM_ROUTER)")
    parser.add_argument("--api-key", default=os.environ.get("TANDEM_API_KEY"),
                        help="API key sent as 'authorization: Bearer' (env TANDEM_API_KEY)")
    parser.add_argument("--tls-ca", help="PEM file of the CA that signed the router's certificate (turns on TLS)")
    parser.add_argument("--model", default="", help="model tier; empty lets the router choose")
    parser.add_argument("--max-tokens", type=int, help="maximum tokens per sample")
    parser.add_argument("--temperature", type=float, help="sampling temperature (0 = greedy)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    parser.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    parser.add_argument("--n", type=int, default=None,
                        help="parallel samples (default: the routing policy's)")
    parser.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                        help="ask the model to think before answering (or not)")
    parser.add_argument("--max-thinking-tokens", type=int, help="thinking budget per sample")
    parser.add_argument("--deadline-seconds", type=float, help="wall-clock limit of the request")
    parser.add_argument("--timeout", type=float, default=600.0, help="gRPC call timeout in seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object per request")
    if command_name == "chat":
        parser.add_argument("--system", help="system message that starts the conversation")
    else:
        parser.add_argument("prompt", help="the prompt; '-' reads it from stdin")


@dataclass
class Result:
    """What one streamed request produced, with its timings."""

    request_id: str = ""
    routing: inference_pb2.RoutingInfo | None = None
    usage: inference_pb2.Usage | None = None
    answers: dict[int, list[str]] = field(default_factory=dict)
    thoughts: dict[int, list[str]] = field(default_factory=dict)
    finish: dict[int, tuple[str, str]] = field(default_factory=dict)
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)

    def answer(self, sample_index: int = 0) -> str:
        """The answer text of one sample."""
        return "".join(self.answers.get(sample_index, []))

    def to_json(self) -> dict:
        """A JSON-friendly summary."""
        indices = sorted(set(self.answers) | set(self.thoughts) | set(self.finish))
        return {
            "request_id": self.request_id,
            "model": self.routing.model if self.routing else None,
            "difficulty": self.routing.difficulty if self.routing else None,
            "estimator": self.routing.estimator if self.routing else None,
            "reason": self.routing.reason if self.routing else None,
            "samples": [{"index": i, "text": self.answer(i), "thinking": "".join(self.thoughts.get(i, [])),
                         "finish_reason": self.finish.get(i, ("", ""))[0],
                         "finish_detail": self.finish.get(i, ("", ""))[1]} for i in indices],
            "usage": _usage_json(self.usage),
            "ttft_s": self.ttft_s,
            "itl_s": _itl_summary(self.itl_s),
        }


def _usage_json(usage: inference_pb2.Usage | None) -> dict | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage.prompt_tokens, "cached_prompt_tokens": usage.cached_prompt_tokens,
            "completion_tokens": usage.completion_tokens, "thinking_tokens": usage.thinking_tokens,
            "answer_tokens": usage.answer_tokens, "num_samples": usage.num_samples, "cost": usage.cost}


def _itl_summary(gaps: list[float]) -> dict | None:
    if not gaps:
        return None
    ordered = sorted(gaps)
    return {"mean": statistics.fmean(ordered), "p50": ordered[len(ordered) // 2],
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}


def build_request(args: argparse.Namespace, *, prompt: str | None = None,
                  messages: list[inference_pb2.ChatMessage] | None = None) -> inference_pb2.GenerateRequest:
    """The GenerateRequest for the command-line options and one prompt or conversation."""
    request = inference_pb2.GenerateRequest(model=args.model)
    if messages is not None:
        request.chat.messages.extend(messages)
    else:
        request.prompt = prompt or ""
    sampling, budget = request.sampling, request.budget
    for name, target in (("temperature", sampling), ("top_p", sampling), ("seed", sampling),
                         ("max_tokens", budget), ("max_thinking_tokens", budget),
                         ("thinking", budget), ("deadline_seconds", budget)):
        value = getattr(args, name)
        if value is not None:
            setattr(target, name, value)
    if args.n is not None:
        sampling.n = args.n
    return request


def stream_request(stub, request: inference_pb2.GenerateRequest, metadata, timeout: float,
                   echo: bool) -> Result:
    """Runs one request, echoing sample 0 as it streams when `echo`; returns everything it produced."""
    result = Result()
    start = time.perf_counter()
    last_token_at: float | None = None
    call = stub.Generate(request, metadata=metadata, timeout=timeout)
    try:
        for response in call:
            now = time.perf_counter()
            result.request_id = response.request_id or result.request_id
            if response.HasField("routing"):
                result.routing = response.routing
            if response.HasField("usage"):
                result.usage = response.usage
            is_thinking = response.section == inference_pb2.TOKEN_SECTION_THINKING
            pieces = result.thoughts if is_thinking else result.answers
            pieces.setdefault(response.sample_index, []).append(response.text)
            if response.finish_reason:
                result.finish[response.sample_index] = (
                    inference_pb2.FinishReason.Name(response.finish_reason).removeprefix("FINISH_REASON_").lower(),
                    response.finish_detail)
            if response.token_ids and response.sample_index == 0:
                if last_token_at is None:
                    result.ttft_s = now - start
                else:
                    result.itl_s.append((now - last_token_at) / len(response.token_ids))
                last_token_at = now
            if echo and response.sample_index == 0 and response.text:
                stream = sys.stderr if is_thinking else sys.stdout
                stream.write(response.text)
                stream.flush()
    except KeyboardInterrupt:
        call.cancel()
        raise
    return result


def print_summary(result: Result) -> None:
    """Prints the other samples (when several came back), then routing, timings and usage, to stderr."""
    for index in sorted(set(result.answers) - {0}):
        print(f"\n--- sample {index} ---\n{result.answer(index)}", file=sys.stderr)
    parts = []
    if result.routing is not None:
        parts.append(f"model {result.routing.model} (difficulty {result.routing.difficulty:.2f}"
                     f"{', ' + result.routing.estimator if result.routing.estimator else ''}): "
                     f"{result.routing.reason}")
    if result.ttft_s is not None:
        parts.append(f"ttft {result.ttft_s * 1000:.1f} ms")
    itl = _itl_summary(result.itl_s)
    if itl is not None:
        parts.append(f"itl mean {itl['mean'] * 1000:.1f} ms p50 {itl['p50'] * 1000:.1f} ms "
                     f"p90 {itl['p90'] * 1000:.1f} ms")
    if result.usage is not None:
        usage = result.usage
        parts.append(f"tokens prompt {usage.prompt_tokens} completion {usage.completion_tokens} "
                     f"(thinking {usage.thinking_tokens}) cost {usage.cost:.6g}")
    if 0 in result.finish:
        parts.append("finish " + ": ".join(p for p in result.finish[0] if p))
    print("\n[" + " | ".join(parts) + "]", file=sys.stderr)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls_ca:
        with open(args.tls_ca, "rb") as file:
            return grpc.secure_channel(args.router, grpc.ssl_channel_credentials(root_certificates=file.read()))
    return grpc.insecure_channel(args.router)


def _report_error(exc: grpc.RpcError) -> None:
    trailing = dict(exc.trailing_metadata() or ())
    hint = f" (retry after {int(trailing['retry-after-ms']) / 1000:g} s)" if "retry-after-ms" in trailing else ""
    print(f"error: {exc.code().name}: {exc.details()}{hint}", file=sys.stderr)


def _validate(args: argparse.Namespace) -> None:
    if args.n is not None and args.n < 1:
        raise SystemExit("error: --n must be >= 1")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise SystemExit("error: --max-tokens must be >= 1")


def run(args: argparse.Namespace) -> int:
    """Runs `tandem generate` or `tandem chat`."""
    _validate(args)
    metadata = (("authorization", f"Bearer {args.api_key}"),) if args.api_key else ()
    with _channel(args) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        if args.command == "chat":
            return _chat(stub, args, metadata)
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        result = _one_turn(stub, args, metadata, build_request(args, prompt=prompt))
        return 0 if result is not None else 1


def _one_turn(stub, args, metadata, request) -> Result | None:
    try:
        result = stream_request(stub, request, metadata, args.timeout, echo=not args.json)
    except grpc.RpcError as exc:
        _report_error(exc)
        return None
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print_summary(result)
    return result


def _chat(stub, args, metadata) -> int:
    history: list[inference_pb2.ChatMessage] = []
    if args.system:
        history.append(inference_pb2.ChatMessage(role="system", content=args.system))
    print("chat with the router: /reset clears the conversation, /exit or Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            line = input("you> " if sys.stdin.isatty() else "")
        except EOFError:
            return 0
        if line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            del history[1 if args.system else 0:]
            continue
        if not line.strip():
            continue
        turn = [*history, inference_pb2.ChatMessage(role="user", content=line)]
        result = _one_turn(stub, args, metadata, build_request(args, messages=turn))
        if result is not None:
            history = [*turn, inference_pb2.ChatMessage(role="assistant", content=result.answer())]

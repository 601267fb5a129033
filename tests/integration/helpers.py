"""Small clients for integration tests: worker RPCs, router requests, block accounting."""

from __future__ import annotations

import os
import time

import grpc

from tandem.api.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc
from tandem.serving.worker_auth import TOKEN_ENV, authenticated_channel, read_token_file


def worker_token() -> str:
    """The token of the workers the tests start (conftest points TANDEM_WORKER_TOKEN_FILE at it)."""
    return read_token_file(os.environ[TOKEN_ENV])


def decode_stub(address: str) -> worker_pb2_grpc.DecodeWorkerStub:
    """A blocking stub for a decode worker, its calls carrying the worker token."""
    return worker_pb2_grpc.DecodeWorkerStub(authenticated_channel(address, worker_token()))


def prefill_stub(address: str) -> worker_pb2_grpc.PrefillWorkerStub:
    """A blocking stub for a prefill worker, its calls carrying the worker token."""
    return worker_pb2_grpc.PrefillWorkerStub(authenticated_channel(address, worker_token()))


def router_stub(address: str) -> inference_pb2_grpc.InferenceStub:
    """A blocking stub for the router's public API."""
    return inference_pb2_grpc.InferenceStub(grpc.insecure_channel(address))


def used_blocks(stub) -> int:
    """KV blocks a worker holds for requests or reservations now."""
    return stub.GetLoad(worker_pb2.GetLoadRequest(), timeout=5).num_kv_blocks_used


def wait_for_blocks(stub, expected: int, timeout_s: float = 60.0) -> int:
    """Polls until the worker's used blocks equal expected (or the wait ends); returns the last count."""
    deadline = time.monotonic() + timeout_s
    count = used_blocks(stub)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.1)
        count = used_blocks(stub)
    return count


def greedy_request(token_ids: list[int], max_tokens: int, **sampling) -> inference_pb2.GenerateRequest:
    """A router request on pre-tokenized input with greedy sampling."""
    return inference_pb2.GenerateRequest(
        tokens=inference_pb2.TokenInput(token_ids=token_ids),
        sampling=inference_pb2.SamplingParams(temperature=0.0, **sampling),
        budget=inference_pb2.Budget(max_tokens=max_tokens))


def collect(responses) -> tuple[list[int], str, inference_pb2.GenerateResponse | None, list]:
    """Token ids, text, the usage message and the routing infos of a response stream."""
    token_ids, text, usage, routing = [], [], None, []
    for response in responses:
        token_ids.extend(response.token_ids)
        text.append(response.text)
        if response.HasField("usage"):
            usage = response
        if response.HasField("routing"):
            routing.append(response.routing)
    return token_ids, "".join(text), usage, routing


def mixed_prompts(vocab_size: int, count: int, seed: int = 0) -> list[list[int]]:
    """Prompts of mixed lengths (a few tokens to a few hundred), deterministic for a seed."""
    import random

    rng = random.Random(seed)
    lengths = [rng.choice([3, 9, 17, 40, 95, 160, 300]) for _ in range(count)]
    return [[rng.randrange(3, vocab_size) for _ in range(n)] for n in lengths]


def train_features_estimator(tmp_path) -> str:
    """Trains the features estimator with `tandem difficulty train` on labels where arithmetic
    questions are easy and long proofs are hard; returns its folder."""
    import csv
    import subprocess
    import sys

    rows = [(f"What is {i} plus {i}?", True, True) for i in range(40)]
    rows += [(f"Prove theorem {i}: the integral of x^{i} dx, showing each step of the calculus "
              f"and every lemma used along the way.", False, True) for i in range(40)]
    data = tmp_path / "labels.csv"
    with data.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["prompt", "weak", "strong"])
        writer.writerows(rows)
    out = tmp_path / "estimator"
    subprocess.run([sys.executable, "-m", "tandem.cli", "difficulty", "train", "--data", str(data),
                    "--weak-col", "weak", "--strong-col", "strong", "--estimator", "features",
                    "--out", str(out)], check=True, capture_output=True, timeout=180)
    return str(out)

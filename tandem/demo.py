"""`tandem demo` (what `make demo` runs): the whole system on one machine, end to end.

Starts a local cluster (router, prefill and decode workers as processes, KV over UCX on loopback)
serving SmolLM2-135M-Instruct (converted from GGUF once and cached) as two tiers routed by
difficulty (see tandem/demo_setup.py), sends prompts of varied difficulty through the gRPC API and
the official `openai` client (one of them streaming), prints each answer with the tier that served
it and why, and stops the cluster. `--model tiny` runs the same path on the generated random-weight
model in seconds (its text is gibberish, every byte of it still travelled the real path).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tandem.demo_calls import grpc_request, openai_chat, openai_stream
from tandem.demo_setup import DEFAULT_DATA, build_setup
from tandem.local_cluster import LocalCluster

# (prompt, how it is sent): two easy chat questions and two harder MMLU-style ones.
PROMPTS = [
    ("What is the capital of France?", openai_chat),
    ("What is 12 + 30?", grpc_request),
    ("Which of the following statements about the function f(x) = x^3 - 3x is (are) true?\n"
     "I. f has a local maximum at x = -1.\nII. f is increasing on (1, infinity).\n"
     "III. f has exactly two real roots.\nA. I only\nB. II only\nC. I and II\nD. I, II and III\n"
     "Answer:", openai_stream),
    ("If a statement P implies Q, and Q implies R, which of the following must be true?\n"
     "A. R implies P\nB. not R implies not P\nC. Q implies P\nD. not P implies not R\nAnswer:",
     grpc_request),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tandem demo`."""
    parser.add_argument("--model", default="smollm2",
                        help="'smollm2' (default), 'tiny' (generated, random weights), a model "
                             "folder or a .gguf file")
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="RouteLLM-format CSV glob the difficulty estimator is trained on when "
                             "it is not cached yet (default: the shared MMLU labels)")


def run(args: argparse.Namespace) -> int:
    """Runs the demo; returns 0 when every request got an answer."""
    run_dir = Path(tempfile.mkdtemp(prefix="tandem-demo-"))
    setup = build_setup(args.model, args.data, run_dir)
    print(f"starting a local cluster: {setup.description}\n"
          f"(the first run converts the model once; later runs load it from the cache) ...",
          flush=True)
    started = time.monotonic()
    with LocalCluster(setup.config, run_dir) as cluster:
        print(f"ready in {time.monotonic() - started:.1f}s; router gRPC {cluster.grpc_address}, "
              f"OpenAI {cluster.http_url}\n", flush=True)
        for prompt, send in PROMPTS:
            address = cluster.grpc_address if send is grpc_request else cluster.http_url
            send(address, prompt, setup.request_model)
        print(f"logs of every component: {cluster.run_dir}")
    print("cluster stopped.")
    return 0

"""Exposed KV transfer time: how much of the handoff the layer-wise overlap leaves visible.

For prompts of 512, 2048 and 8192 tokens, on a local cluster (one prefill and one decode worker
as processes, KV over UCX on loopback):
  colocated TTFT      the decode worker prefills the prompt itself (Decode, colocated) and
                      streams its first token: the prefill time;
  disaggregated TTFT  Reserve on the decode worker, then Prefill on the prefill worker, whose
                      answer comes only once the KV is committed in the decode worker's blocks.
exposed = (disaggregated - colocated) / colocated, median over repeats that alternate the two
modes. The prefill worker also reports the seconds it spent after its last layer
(kv_exposed_seconds), the part no overlap can hide; its ratio to the prefill time is printed too.

    .venv/bin/python benchmarks/kv_exposed.py            # 512, 2048, 8192 tokens
    .venv/bin/python benchmarks/kv_exposed.py --quick    # 512 and 2048 tokens, fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("UCX_TLS", "tcp,self")
os.environ.setdefault("UCX_NET_DEVICES", "lo")

from tandem.api.v1 import inference_pb2, worker_pb2, worker_pb2_grpc  # noqa: E402
from tandem.engine.tiny_model import make_tiny_model  # noqa: E402
from tandem.local_cluster import LocalCluster, LocalClusterConfig  # noqa: E402
from tandem.serving.worker_auth import authenticated_channel  # noqa: E402

# Big enough that an 8192-token prefill is real work, small enough for a 2-core machine.
MODEL_SHAPE = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=8704)
GREEDY = inference_pb2.SamplingParams(temperature=0.0)


def main() -> None:
    """Measures every prompt length and prints one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--num-layers", type=int, default=MODEL_SHAPE["num_hidden_layers"],
                        help="layers of the model: what stays exposed is about one layer's send")
    parser.add_argument("--hidden-size", type=int, default=MODEL_SHAPE["hidden_size"])
    args = parser.parse_args()
    shape = {**MODEL_SHAPE, "num_hidden_layers": args.num_layers, "hidden_size": args.hidden_size,
             "intermediate_size": 3 * args.hidden_size}
    lengths = [512, 2048] if args.quick else [512, 2048, 8192]
    repeats = args.repeats or (2 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="kv-exposed-") as tmp:
        model_dir = make_tiny_model(Path(tmp) / "model", **shape)
        config = LocalClusterConfig(
            model=str(model_dir), num_prefill=1, num_decode=1, num_blocks=4 * max(lengths) // 16,
            worker_args=["--max-num-batched-tokens", str(max(lengths)), "--kv-timeout", "120"])
        with LocalCluster(config, Path(tmp) / "run") as cluster:
            decode = worker_pb2_grpc.DecodeWorkerStub(
                authenticated_channel(cluster.worker_address(cluster.decode[0]), cluster.worker_token))
            prefill = worker_pb2_grpc.PrefillWorkerStub(
                authenticated_channel(cluster.worker_address(cluster.prefill[0]), cluster.worker_token))
            results = [_measure(decode, prefill, length, repeats) for length in lengths]
    print(json.dumps({"benchmark": "kv_exposed", "params": {
        "prompt_lengths": lengths, "repeats": repeats, "model": shape,
        "ucx_tls": os.environ["UCX_TLS"]}, "results": results,
        "goal": "exposed fraction under 0.1"}, indent=2))


def _measure(decode, prefill, length: int, repeats: int) -> dict:
    colocated, disaggregated, worker_exposed, kv_bytes = [], [], [], 0
    for repeat in range(repeats):
        # Fresh token ids per run: no prefix cache may help either mode.
        prompt = [3 + (repeat * 7919 + position * 31) % 1000 for position in range(length)]
        colocated.append(_colocated_ttft(decode, prompt, f"c-{length}-{repeat}"))
        prompt = [3 + (repeat * 104729 + position * 37) % 1000 for position in range(length)]
        seconds, response = _disaggregated_ttft(decode, prefill, prompt, f"d-{length}-{repeat}")
        disaggregated.append(seconds)
        worker_exposed.append(response.kv_exposed_seconds)
        kv_bytes = response.kv_bytes
    prefill_s = statistics.median(colocated)
    return {"prompt_tokens": length, "kv_bytes": kv_bytes,
            "ttft_colocated_s": round(prefill_s, 4),
            "ttft_disaggregated_s": round(statistics.median(disaggregated), 4),
            "exposed_fraction": round((statistics.median(disaggregated) - prefill_s) / prefill_s, 4),
            "worker_exposed_s": round(statistics.median(worker_exposed), 4),
            "worker_exposed_fraction": round(statistics.median(worker_exposed) / prefill_s, 4)}


def _colocated_ttft(decode, prompt: list[int], request_id: str) -> float:
    request = worker_pb2.DecodeRequest(request_id=request_id, prompt_token_ids=prompt, colocated=True,
                                       sampling=GREEDY, budget=worker_pb2.DecodeBudget(max_tokens=1))
    started = time.perf_counter()
    for chunk in decode.Decode(request, timeout=600):
        if chunk.token_ids:
            elapsed = time.perf_counter() - started
    return elapsed


def _disaggregated_ttft(decode, prefill, prompt: list[int], request_id: str):
    started = time.perf_counter()
    reservation = decode.Reserve(worker_pb2.ReserveRequest(
        request_id=request_id, prompt_token_ids=prompt, lease_seconds=600), timeout=60)
    response = prefill.Prefill(worker_pb2.PrefillRequest(
        request_id=request_id, prompt_token_ids=prompt, sampling=GREEDY, reservation=reservation),
        timeout=600)
    elapsed = time.perf_counter() - started
    decode.Cancel(worker_pb2.CancelRequest(request_id=request_id, reason="benchmark"), timeout=10)
    return elapsed, response


if __name__ == "__main__":
    main()

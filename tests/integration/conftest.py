"""Fixtures for tests that run the real system: a tiny model, local clusters, a reference engine."""

from __future__ import annotations

import os

import pytest

# Each process of a cluster gets these too (LocalCluster passes the environment on).
os.environ.setdefault("UCX_TLS", "tcp,self")
os.environ.setdefault("UCX_NET_DEVICES", "lo")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def worker_token_file(tmp_path_factory):
    """One worker token for every cluster, in-process worker and helper stub of the session."""
    from tandem.serving.worker_auth import TOKEN_ENV, write_token_file

    path = write_token_file(tmp_path_factory.mktemp("worker-token") / "token")
    previous = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = str(path)  # LocalCluster and the processes it starts read it too
    yield path
    if previous is None:
        os.environ.pop(TOKEN_ENV)
    else:
        os.environ[TOKEN_ENV] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-weight Llama-shaped model folder shared by the integration tests."""
    from tandem.engine.tiny_model import make_tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model(path, arch="llama", seed=0)
    return path


@pytest.fixture(scope="session")
def reference_engine(tiny_model_dir):
    """The engine alone, in this process: what the cluster's output must equal."""
    import torch

    from tandem.engine.engine_config import EngineConfig
    from tandem.engine.llm_engine import LLMEngine

    torch.set_num_threads(1)
    return LLMEngine(tiny_model_dir, EngineConfig(num_blocks=1024, block_size=16))

"""Tiny random-weight model folders shared by the engine tests (made once per test session)."""

from __future__ import annotations

import pytest

from tandem.engine.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A Llama-shaped folder: Llama 3.1 rope scaling, untied LM head, BOS-adding tokenizer."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    """A Qwen2-shaped folder: QKV bias, tied embeddings, ChatML tokenizer without BOS."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2", seed=1)

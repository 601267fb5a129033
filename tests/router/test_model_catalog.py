"""The router's tiers: the --model / --tier flags, and a model list that follows discovery."""

from __future__ import annotations

import argparse
import logging

import pytest

from router.model_catalog import ModelCatalog, model_sources
from tandem.api.v1 import worker_pb2
from tandem.local_cluster import TierConfig, parse_tier
from tandem.telemetry.metrics import default_metrics


def test_one_model_keeps_its_flags_and_tiers_name_themselves():
    assert model_sources("/models/qwen", None, []) == {"qwen": "/models/qwen"}
    assert model_sources("/models/qwen", "small", []) == {"small": "/models/qwen"}
    assert model_sources(None, None, ["small=/m/qwen", "large=/m/llama"]) == {
        "small": "/m/qwen", "large": "/m/llama"}


@pytest.mark.parametrize("model, name, tiers, message", [
    (None, None, [], "give --model"),
    ("/m/a", None, ["b=/m/b"], "not both"),
    (None, "x", ["b=/m/b"], "--model-name"),
    (None, None, ["b"], "NAME=FOLDER"),
    (None, None, ["b=/m/b", "b=/m/c"], "twice"),
])
def test_bad_model_flags_name_the_flag(model, name, tiers, message):
    with pytest.raises(ValueError, match=message):
        model_sources(model, name, tiers)


class DiscoveredModels:
    """What WorkerPool.models() reports: one decode worker's load per model, changing over time."""

    def __init__(self) -> None:
        self.loads: dict[str, worker_pb2.WorkerLoad] = {}

    def announce(self, model: str, max_context: int = 2048) -> None:
        self.loads[model] = worker_pb2.WorkerLoad(
            model=model, max_context=max_context, layout=worker_pb2.KVLayout(block_size=16))

    def models(self) -> dict[str, worker_pb2.WorkerLoad]:
        return dict(self.loads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tandem.engine.tiny_model import make_tiny_model
    from tandem.engine.tokenizer import Tokenizer

    return Tokenizer.from_model_dir(make_tiny_model(tmp_path_factory.mktemp("tiny")))


def test_tiers_are_served_while_discovery_finds_their_workers(tokenizer):
    pool = DiscoveredModels()
    catalog = ModelCatalog({"small": tokenizer, "large": tokenizer}, pool)
    assert list(catalog) == [] and catalog.configured == {"small", "large"}
    pool.announce("small")
    assert list(catalog) == ["small"] and catalog["small"].max_context == 2048
    pool.announce("large", max_context=4096)  # joins later
    assert sorted(catalog) == ["large", "small"] and catalog["large"].max_context == 4096
    assert catalog["small"].vocabulary_id == catalog["large"].vocabulary_id
    del pool.loads["small"]  # its workers are gone
    assert list(catalog) == ["large"]


def test_a_model_without_a_tokenizer_is_logged_counted_and_not_served(tokenizer, caplog):
    before = _dropped()
    pool = DiscoveredModels()
    pool.announce("mystery")
    catalog = ModelCatalog({"small": tokenizer}, pool)
    with caplog.at_level(logging.WARNING, logger="router.model_catalog"):
        assert list(catalog) == [] and list(catalog) == []
    assert _dropped() == before + 1  # once per name
    assert "--tier mystery=FOLDER" in caplog.text


def _dropped() -> float:
    return default_metrics().registry.get_sample_value(
        "tandem_dropped_errors_total", {"component": "router", "kind": "model_without_tokenizer"}) or 0.0


def test_serve_tiers_parse_with_their_pool_sizes():
    assert parse_tier("small=tiny") == TierConfig("small", "tiny", 1, 1)
    assert parse_tier("large=/m/llama:prefill=0,decode=2") == TierConfig("large", "/m/llama", 0, 2)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_tier("=tiny")
    with pytest.raises(argparse.ArgumentTypeError, match="decode worker"):
        parse_tier("x=tiny:decode=0")

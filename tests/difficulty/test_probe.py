"""The hidden-state probe: trains on a separating direction, loads light, reads the engine's states."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tandem.difficulty.base import load_estimator
from tandem.difficulty.probe import ProbeHead
from tandem.difficulty.training.data import RoutingDataset
from tandem.difficulty.training.hidden_states import CachedHiddenStates, EngineHiddenStates
from tandem.difficulty.training.metrics import routing_metrics
from tandem.difficulty.training.probe_estimator import REGULARIZATION_GRID, ProbeEstimator

HIDDEN_SIZE = 48


def synthetic_states(num_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """States whose projection on one direction decides the gain class {-1, 0, +1}.

    +1 (only the strong model is right) is four times as common as -1, so the gap is wide.
    """
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(99).normal(size=HIDDEN_SIZE)
    direction /= np.linalg.norm(direction)
    states = rng.normal(size=(num_rows, HIDDEN_SIZE))
    projection = states @ direction
    gain = np.where(projection > 0.5, 1, np.where(projection < -1.5, -1, 0))
    return states.astype(np.float32), gain, direction


def test_the_probe_learns_a_separating_direction_and_round_trips(tmp_path):
    states, gain, direction = synthetic_states(600, seed=0)
    probe = ProbeHead.fit(states, gain, metadata={"model": "synthetic"})
    test_states, test_gain, _ = synthetic_states(300, seed=1)
    scores = probe.score_hidden(test_states)
    assert scores.shape == (300,) and np.all((scores >= 0) & (scores <= 1))
    # Gain +1: only the strong model is right; -1: only the weak one; 0: both.
    weak_correct, strong_correct = test_gain <= 0, test_gain >= 0
    assert routing_metrics(scores, weak_correct, strong_correct).apgr > 0.9
    # Moving a state along the direction makes it harder.
    base = test_states[0].astype(np.float64)
    steps = probe.score_hidden(np.stack([base + t * direction for t in (-2, 0, 2)]))
    assert steps[0] < steps[1] < steps[2]

    probe.save(tmp_path / "probe")
    loaded = ProbeHead.load(tmp_path / "probe")
    np.testing.assert_array_equal(loaded.score_hidden(test_states), scores)
    one = loaded.score_hidden(test_states[3][None])  # what the prefill worker passes
    assert one.shape == (1,) and one[0] == scores[3]
    assert loaded.metadata == {"model": "synthetic"}
    with pytest.raises(ValueError, match="hidden states of size 48"):
        loaded.score_hidden(np.zeros((1, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="hidden-state probe"):
        load_estimator(tmp_path / "probe")


def test_loading_a_probe_imports_neither_torch_nor_sklearn(tmp_path):
    states, gain, _ = synthetic_states(200, seed=2)
    ProbeHead.fit(states, gain).save(tmp_path)
    code = ("import sys, numpy as np\n"
            "from tandem.difficulty.probe import ProbeHead\n"
            f"head = ProbeHead.load({str(tmp_path)!r})\n"
            f"head.score_hidden(np.zeros({HIDDEN_SIZE}, dtype=np.float32)[None])\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'transformers') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert json.loads(result.stdout.strip().replace("'", '"')) == []


def test_bad_probe_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a saved difficulty probe"):
        ProbeHead.load(tmp_path)
    (tmp_path / "probe.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ProbeHead.load(tmp_path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tandem.engine.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", num_hidden_layers=2)


def plain_tokenizer(model_dir):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return lambda text: tokenizer.encode(text).ids


def test_engine_states_are_the_final_norm_output_of_the_last_prompt_token(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    tokenize = plain_tokenizer(tiny_model)
    prompts = ["What is the capital of France?", "Solve 2x + 3 = 7 for x, step by step."]
    states = EngineHiddenStates(tiny_model, tokenize=tokenize)(prompts)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    for row, prompt in enumerate(prompts):
        with torch.inference_mode():
            output = reference(torch.tensor([tokenize(prompt)]), output_hidden_states=True)
        expected = output.hidden_states[-1][0, -1].numpy()  # after the final norm
        np.testing.assert_allclose(states[row], expected, rtol=1e-4, atol=1e-4)


def test_a_probe_trains_on_engine_states_and_loads_for_the_prefill_worker(tiny_model, tmp_path):
    import torch

    torch.set_num_threads(1)
    source = EngineHiddenStates(tiny_model, tokenize=plain_tokenizer(tiny_model))
    prompts = [f"Question {i}: " + ("integral of x^2 dx" if i % 2 else "capital city") * (1 + i % 3)
               for i in range(24)]
    hard = np.array([i % 2 == 1 for i in range(24)])
    dataset = RoutingDataset(prompts, ~hard, np.ones(24, dtype=bool), ["tiny"] * 24)
    estimator = ProbeEstimator(source, "engine:tiny").fit(dataset)
    estimator.save(tmp_path / "probe")
    head = ProbeHead.load(tmp_path / "probe")
    hidden = source(prompts[:1])[0]
    assert head.score_hidden(hidden[None]).shape == (1,)
    np.testing.assert_array_equal(head.score_hidden(source(prompts)), estimator.score(prompts))
    assert head.metadata["hidden_states"] == "engine:tiny"
    assert estimator.score(prompts)[hard].mean() > estimator.score(prompts)[~hard].mean()


def test_hidden_states_are_cached_per_model_and_prompt_format(tiny_model, tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    prompts = ["What is the capital of France?", "Prove that 17 is prime.", "Name a colour."]
    plain = CachedHiddenStates(EngineHiddenStates(tiny_model), root=tmp_path)
    first = plain(prompts[:2])
    np.testing.assert_array_equal(first, EngineHiddenStates(tiny_model)(prompts[:2]))
    chat = CachedHiddenStates(EngineHiddenStates(tiny_model, prompt_format="chat"), root=tmp_path)
    assert chat.cache.folder != plain.cache.folder
    assert not np.allclose(chat(prompts[:1]), first[:1])  # the chat template changes the tokens

    computed: list[list[str]] = []
    original = EngineHiddenStates.__call__

    def counting(self, batch):
        computed.append(list(batch))
        return original(self, batch)

    monkeypatch.setattr(EngineHiddenStates, "__call__", counting)
    reopened = CachedHiddenStates(EngineHiddenStates(tiny_model), root=tmp_path)
    states = reopened(prompts[::-1])
    assert computed == [[prompts[2]]]  # only the prompt never seen before is run
    np.testing.assert_array_equal(states[1:], first[::-1])
    with pytest.raises(ValueError, match="router's tokenization"):
        CachedHiddenStates(EngineHiddenStates(tiny_model, tokenize=plain_tokenizer(tiny_model)))


def test_without_a_given_strength_the_probe_picks_one_on_its_training_domains_only():
    states, gain, _ = synthetic_states(240, seed=3)
    prompts = [f"prompt {i}" for i in range(240)]
    table = dict(zip(prompts, states))
    seen: set[str] = set()

    def source(batch):
        seen.update(batch)
        return np.stack([table[p] for p in batch])

    dataset = RoutingDataset(prompts, gain <= 0, gain >= 0, [f"d{i % 6}" for i in range(240)])
    train = dataset.subset(np.arange(180))
    probe = ProbeEstimator(source, "synthetic").fit(train)
    assert probe.head.metadata["regularization"] in REGULARIZATION_GRID
    assert probe.head.metadata["regularization_selected"] is True
    assert seen == set(prompts[:180])  # the inner folds never touch rows outside `train`
    scores = probe.score(prompts[180:])
    assert routing_metrics(scores, gain[180:] <= 0, gain[180:] >= 0).apgr > 0.8
    fixed = ProbeEstimator(source, "synthetic", regularization=0.5).fit(train)
    assert fixed.head.metadata["regularization"] == 0.5
    assert fixed.head.metadata["regularization_selected"] is False

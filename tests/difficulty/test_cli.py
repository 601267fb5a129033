"""`tandem difficulty train|eval` end to end: RouteLLM's MMLU subset, and a probe on a tiny model."""

from __future__ import annotations

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tandem.cli import main
from tandem.difficulty.base import load_estimator
from tandem.difficulty.probe import ProbeHead
from tandem.difficulty.training.data import shared_data_dir

MMLU = shared_data_dir() / "routing" / "mmlu"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
DATA = ["--data", str(MMLU / "mmlu_*.csv"), "--prompt-col", "prompt", "--weak-col", WEAK,
        "--strong-col", STRONG]
needs_mmlu = pytest.mark.skipif(not MMLU.is_dir(), reason=f"shared data missing: {MMLU}")


@needs_mmlu
def test_eval_prints_the_routellm_metrics_as_json(capsys, tmp_path):
    plot = tmp_path / "curve.png"
    status = main(["difficulty", "eval", *DATA, "--estimator", "features", "--folds", "4",
                   "--limit", "3000", "--json", "--plot", str(plot)])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_rows"] == 3000 and report["num_domains"] == 57 and report["num_folds"] == 4
    metrics = report["metrics"]
    assert set(metrics) == {"features", "random", "oracle"}
    for values in metrics.values():
        assert set(values) == {"apgr", "cpt50", "cpt80"}
    spread = report["random_95pct_half_width"]["apgr"]
    assert abs(metrics["random"]["apgr"] - 0.5) < spread
    assert metrics["random"]["apgr"] + spread < metrics["features"]["apgr"] < metrics["oracle"]["apgr"]
    assert metrics["oracle"]["cpt80"] < metrics["features"]["cpt80"] < metrics["random"]["cpt80"]
    assert len(report["per_fold"]) == 4
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["plot"] == str(plot)


@needs_mmlu
def test_eval_holds_out_whole_subjects(capsys):
    status = main(["difficulty", "eval", *DATA, "--estimator", "features", "--folds", "3",
                   "--split", "domain", "--limit", "1500", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "domain" and report["num_domains"] == 57
    assert len(report["per_fold"]) == 3
    assert main(["difficulty", "eval", *DATA, "--split", "domain", "--folds", "58",
                 "--limit", "600"]) == 2
    assert "folds <= domains" in capsys.readouterr().err


@needs_mmlu
def test_train_writes_an_estimator_the_router_loads(capsys, tmp_path):
    out = tmp_path / "features"
    assert main(["difficulty", "train", *DATA, "--limit", "600", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["num_rows"] == 600
    estimator = load_estimator(out)
    scores = estimator.score(["What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"])
    assert estimator.name == "features" and scores.shape == (1,) and 0 <= scores[0] <= 1


@needs_mmlu
def test_bad_arguments_get_one_clear_line(capsys, tmp_path):
    assert main(["difficulty", "eval", "--data", str(MMLU / "mmlu_*.csv"), "--weak-col", "nope",
                 "--strong-col", STRONG]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    assert main(["difficulty", "train", *DATA, "--model", str(tmp_path), "--out",
                 str(tmp_path / "x")]) == 2
    assert "--model is only for --estimator probe" in capsys.readouterr().err
    assert main(["difficulty", "eval", "--data", str(tmp_path / "none_*.csv"), "--weak-col", WEAK,
                 "--strong-col", STRONG]) == 2
    assert "no CSV file matches" in capsys.readouterr().err


def test_train_probe_on_a_model_folder_for_the_prefill_worker(capsys, tmp_path, monkeypatch):
    import torch

    from tandem.engine.tiny_model import make_tiny_model

    torch.set_num_threads(1)
    model_dir = make_tiny_model(tmp_path / "tiny", num_hidden_layers=2)
    data = tmp_path / "labels.csv"
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "weak", "strong"])
        for row in range(30):
            hard = row % 3 == 0
            writer.writerow([f"Item {row}: " + ("prove the lemma " if hard else "name the city ")
                             * (1 + row % 4), not hard, True])
    out = tmp_path / "probe"
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "cache"))
    assert main(["difficulty", "train", "--data", str(data), "--weak-col", "weak",
                 "--strong-col", "strong", "--estimator", "probe", "--model", str(model_dir),
                 "--prompt-format", "chat", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["estimator"] == "probe"
    head = ProbeHead.load(out)
    assert head.metadata["hidden_states"] == f"engine:{model_dir.resolve()}"
    assert head.metadata["prompt_format"] == "chat"
    assert list((tmp_path / "cache" / "hidden_states").glob("*-chat-context/*.npz"))
    hidden = np.zeros(head.hidden_size, dtype=np.float32)
    assert head.score_hidden(hidden[None]).shape == (1,)


def test_training_a_probe_needs_the_model_it_will_read(capsys, tmp_path):
    data = tmp_path / "labels.csv"
    data.write_text("prompt,weak,strong\nq1,True,True\nq2,False,True\n")
    assert main(["difficulty", "train", "--data", str(data), "--weak-col", "weak", "--strong-col",
                 "strong", "--estimator", "probe", "--out", str(tmp_path / "probe")]) == 2
    assert "needs --model DIR" in capsys.readouterr().err


@needs_mmlu
def test_the_latency_benchmark_runs_quick():
    script = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "difficulty_latency.py"
    result = subprocess.run([sys.executable, str(script), "--quick", "--num-train", "60"],
                            capture_output=True, text=True, check=True, timeout=300)
    report = json.loads(result.stdout)
    assert report["parameters"]["num_train"] == 60 and report["parameters"]["num_timed"] == 10
    assert report["embedding"]["p50_ms"] > 0 and report["features"]["p50_ms"] > 0

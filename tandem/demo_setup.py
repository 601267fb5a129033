"""What `tandem demo` serves: two tiers of one model routed by difficulty, or one announced tier.

The two tiers run the same model with different test-time compute, which is what a 2-core
machine can honestly show: "fast" answers greedily with a short budget, "careful" spends a longer
budget on three sampled answers and returns their majority. The `features` difficulty estimator,
trained once on RouteLLM's MMLU labels and cached under $TANDEM_CACHE/estimators/, scores each
prompt; the policy's band edge at 0.5 sends prompts harder than half of MMLU to "careful".
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from tandem.engine.gguf_import import cache_dir
from tandem.local_cluster import LocalClusterConfig, TierConfig

DEFAULT_DATA = "../shared/data/routing/mmlu/mmlu_*.csv"
PROMPT_COL = "prompt"
WEAK_COL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_COL = "gpt-4-1106-preview"
FAST_TIER, CAREFUL_TIER = "fast", "careful"
# Difficulty is a percentile among the training prompts: 0.5 = harder than half of MMLU.
BAND_EDGE = 0.5
FAST_BUDGET, CAREFUL_BUDGET, CAREFUL_SAMPLES = 48, 128, 3
# Four workers load the model at once on a small shared machine: be patient.
READY_TIMEOUT_S = 600.0


@dataclass(slots=True)
class DemoSetup:
    """The cluster to start, the model name clients ask for, and a line saying what runs."""

    config: LocalClusterConfig
    request_model: str | None  # None: ask the router's model list (single tier)
    description: str


def estimator_dir() -> Path:
    """Where the demo's trained estimator is cached: $TANDEM_CACHE/estimators/features-mmlu."""
    return cache_dir() / "estimators" / "features-mmlu"


def ensure_estimator(data: str) -> Path | None:
    """The cached estimator, trained on `data` first when absent; None when there is no data."""
    target = estimator_dir()
    if (target / "estimator.json").exists():
        print(f"difficulty estimator: features, cached in {target}", flush=True)
        return target
    if not glob.glob(data):
        return None
    from tandem.difficulty.feature_estimator import FeatureEstimator
    from tandem.difficulty.training.data import load_routing_csvs

    print(f"training the features difficulty estimator on {data} (once; cached in {target}) ...",
          flush=True)
    dataset = load_routing_csvs([data], PROMPT_COL, WEAK_COL, STRONG_COL)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so an interrupted run never leaves half a folder.
    scratch = Path(tempfile.mkdtemp(prefix=".features-", dir=target.parent))
    try:
        FeatureEstimator().fit(dataset).save(scratch)
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"  trained on {len(dataset)} prompts of {len(set(dataset.domains))} domains", flush=True)
    return target


def demo_policy() -> dict:
    """The routing policy: easy prompts to "fast", prompts harder than half of MMLU to "careful"."""
    common = {"thinking": False, "num_samples": 1, "selection": "first_finished"}
    return {"version": 1, "probe_weight": 0.5, "bands": [
        {"range": [0.0, BAND_EDGE], "tier": FAST_TIER, **common, "answer_budget": FAST_BUDGET,
         "temperature": 0.0},
        {"range": [BAND_EDGE, 1.0], "tier": CAREFUL_TIER, **common, "answer_budget": CAREFUL_BUDGET,
         "temperature": 0.7, "num_samples": CAREFUL_SAMPLES, "selection": "majority_of_first_m",
         "majority_m": CAREFUL_SAMPLES}]}


def build_setup(model: str, data: str, run_dir: Path) -> DemoSetup:
    """Two tiers of `model` with a policy and estimator, or one tier when `data` is missing."""
    estimator = ensure_estimator(data)
    if estimator is None:
        print(f"NOTE: no routing data at {data} (the shared MMLU labels), so no difficulty "
              f"estimator can be trained: running ONE tier without difficulty routing.", flush=True)
        return DemoSetup(LocalClusterConfig(model=model, ready_timeout_s=READY_TIMEOUT_S), None,
                         f"one tier ({model}): 1 prefill + 1 decode worker, no routing policy")
    policy = run_dir / "demo-policy.yaml"
    policy.write_text(yaml.safe_dump(demo_policy(), sort_keys=False))
    tiers = [TierConfig(FAST_TIER, model), TierConfig(CAREFUL_TIER, model)]
    config = LocalClusterConfig(tiers=tiers, router_args=["--policy", str(policy),
                                                          "--estimator", str(estimator)],
                                ready_timeout_s=READY_TIMEOUT_S)
    description = (f"two tiers of {model}, each 1 prefill + 1 decode worker: "
                   f"{FAST_TIER} (difficulty < {BAND_EDGE}: greedy, {FAST_BUDGET} tokens) and "
                   f"{CAREFUL_TIER} (>= {BAND_EDGE}: majority of {CAREFUL_SAMPLES} samples at "
                   f"temperature 0.7, {CAREFUL_BUDGET} tokens); policy {policy}")
    return DemoSetup(config, "auto", description)

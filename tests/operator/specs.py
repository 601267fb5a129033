"""Small valid pieces of TandemDeployment specs that many operator tests need."""

from __future__ import annotations

from typing import Any

ESTIMATOR = {"pvc": {"claimName": "models", "path": "estimators/features"}}


def policy_for(*tiers: str) -> dict[str, Any]:
    """A difficulty policy the router's loader accepts, one equal band per tier."""
    width = 1.0 / len(tiers)
    return {"version": 1, "bands": [
        {"range": [round(index * width, 6), round((index + 1) * width, 6)], "tier": tier,
         "thinking": False, "answer_budget": 256, "temperature": 0.0, "num_samples": 1,
         "selection": "first_finished"} for index, tier in enumerate(tiers)]}

"""The fault suite with a fixed seed: random faults and hostile tenants, every invariant holds.

A local cluster (2 prefill, 2 decode, 1 router; real processes) serves a few hundred concurrent
streaming requests from three well-behaved tenants and one hostile one over gRPC and the OpenAI
HTTP API, while workers are killed and restarted, stopped and continued, and clients cancel
mid-stream (tests/faults). On failure the message holds the seed, every violation, the fault
windows as they happened and the whole schedule; `benchmarks/fault_suite.py --seeds N` replays a
seed and runs many. TANDEM_FAULT_SEED overrides the seed here.
"""

from __future__ import annotations

import os

import pytest

from tests.faults.runner import run_fault_suite

pytestmark = pytest.mark.slow
FIXED_SEED = 20240610


@pytest.mark.timeout(600)
def test_fault_suite_fixed_seed(tiny_model_dir, reference_engine, tmp_path):
    seed = int(os.environ.get("TANDEM_FAULT_SEED", FIXED_SEED))
    report = run_fault_suite(seed, tiny_model_dir, tmp_path / "cluster", engine=reference_engine)
    summary = report.summary()
    print(summary)
    # The suite must have exercised what it claims: faults of every kind, and requests that ran.
    faults = summary["faults_injected"]
    for kind in ("kill_restart:decode", "kill_restart:prefill", "stall:decode", "stall:prefill",
                 "client_cancel"):
        assert faults.get(kind, 0) > 0, f"seed {seed} injects no {kind}: {faults}"
    assert summary["outcomes_well_behaved"].get("complete", 0) > 100, report.failure_text()
    assert not report.violations, report.failure_text()

"""Fault suite over many seeds: each seed runs on a fresh local cluster (2 prefill, 2 decode,
1 router) with the schedule tests/faults draws from it, and prints one JSON object per seed:
requests, outcomes, faults injected by kind, invariant violations and run time.

    .venv/bin/python benchmarks/fault_suite.py --num-seeds 5
    .venv/bin/python benchmarks/fault_suite.py --seeds 20240610 --verbose   # replay one seed

A final JSON line sums the seeds up. The exit code is 1 when any seed broke an invariant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# Run as a script, this folder comes first on sys.path and benchmarks/router.py would shadow the
# router package; the repository root holds the tests package the harness lives in.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
for name, value in (("UCX_TLS", "tcp,self"), ("UCX_NET_DEVICES", "lo"), ("OMP_NUM_THREADS", "1")):
    os.environ.setdefault(name, value)

from tandem.engine.tiny_model import make_tiny_model  # noqa: E402
from tests.faults.runner import SuiteSettings, run_fault_suite  # noqa: E402
from tests.faults.schedule import ScheduleConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line parameters."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: --num-seeds from 1)")
    parser.add_argument("--num-seeds", type=int, default=3)
    defaults = ScheduleConfig()
    parser.add_argument("--num-requests", type=int, default=defaults.num_requests)
    parser.add_argument("--duration-s", type=float, default=defaults.duration_s)
    parser.add_argument("--allow-role-outage", action="store_true",
                        help="faults at random times: a whole pool may be down at once")
    parser.add_argument("--run-dir", default=None, help="where cluster logs go (default: a temp folder)")
    parser.add_argument("--verbose", action="store_true", help="print the schedule of failing seeds")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs every seed and prints its JSON summary."""
    args = parse_args(argv)
    seeds = args.seeds or list(range(1, args.num_seeds + 1))
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="tandem-faults-"))
    model_dir = make_tiny_model(run_dir / "tiny-llama", arch="llama", seed=0)
    settings = SuiteSettings(schedule=ScheduleConfig(num_requests=args.num_requests,
                                                     duration_s=args.duration_s,
                                                     allow_role_outage=args.allow_role_outage))
    totals: dict[str, int] = {}
    failing = []
    for seed in seeds:
        report = run_fault_suite(seed, model_dir, run_dir / f"seed-{seed}", settings)
        summary = report.summary()
        parameters = {"num_requests": args.num_requests, "duration_s": args.duration_s,
                      "allow_role_outage": args.allow_role_outage}
        print(json.dumps({"parameters": parameters, **summary}), flush=True)
        if report.violations:
            failing.append(seed)
            if args.verbose:
                print(report.failure_text(), file=sys.stderr)
        for invariant, count in summary["violations_by_invariant"].items():
            totals[invariant] = totals.get(invariant, 0) + count
    print(json.dumps({"seeds": seeds, "failing_seeds": failing, "violations_by_invariant": totals}))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())

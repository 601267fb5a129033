"""The `--probe` flag of the workers that prefill prompts (prefill, and decode for colocated ones).

A probe head reads the hidden states of the model it was trained on: loading checks its size
against the served model's, so a probe of another model fails at start, not on a request.
"""

from __future__ import annotations

import argparse


def add_probe_argument(parser: argparse.ArgumentParser) -> None:
    """Adds --probe."""
    parser.add_argument("--probe", default=None,
                        help="folder of a difficulty probe head trained on this model's hidden "
                             "states (tandem difficulty train --estimator probe)")


def load_probe(path: str | None, hidden_size: int):
    """The ProbeHead in `path` (None without one); SystemExit when it fits another model."""
    if path is None:
        return None
    from tandem.difficulty.probe import ProbeHead

    probe = ProbeHead.load(path)
    if probe.hidden_size != hidden_size:
        raise SystemExit(f"--probe {path} reads hidden states of size {probe.hidden_size}, but "
                         f"the model's hidden size is {hidden_size}: train it on this model")
    return probe

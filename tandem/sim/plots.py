"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from tandem.sim.engine import SimResult  # noqa: E402
from tandem.sim.metrics import Latencies  # noqa: E402


def plot_latency_cdfs(lat: Latencies, path: pathlib.Path, title: str = "") -> None:
    """CDFs of TTFT, TBT and end-to-end latency, each beside its unloaded reference."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, name, label in zip(axes, ("ttft", "tbt", "e2e"),
                               ("time to first token (s)", "time between tokens (s)",
                                "end-to-end latency (s)")):
        for values, style, legend in ((getattr(lat, name), "-", "simulated"),
                                      (getattr(lat, f"{name}_ref"), "--", "unloaded reference")):
            finite = np.sort(values[np.isfinite(values)])
            if finite.size:
                ax.plot(finite, np.arange(1, finite.size + 1) / finite.size, style, label=legend)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_replicas(result: SimResult, path: pathlib.Path) -> None:
    """Ready and desired machines of each pool over time, with scaling actions marked."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for pool in result.pools:
        points = [p for p in result.replica_timeline if p["pool"] == pool.name]
        if not points:
            continue
        times = [p["time_s"] / 60 for p in points]
        line, = ax.step(times, [p["ready"] for p in points], where="post", label=f"{pool.name} ready")
        ax.step(times, [p["desired"] for p in points], where="post", linestyle="--",
                color=line.get_color(), alpha=0.6, label=f"{pool.name} desired")
    for action in result.scaling_actions:
        ax.axvline(action["time_s"] / 60, color="grey", alpha=0.15)
    ax.set_xlabel("time (min)")
    ax.set_ylabel("machines")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput_vs_cost(points: list[dict], path: pathlib.Path, title: str = "") -> None:
    """Throughput against cost per hour, one labelled point per run or design."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for point in points:
        ax.scatter(point["cost_per_hour"], point["throughput_rps"], s=40)
        ax.annotate(point["label"], (point["cost_per_hour"], point["throughput_rps"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("cluster cost per hour ($)")
    ax.set_ylabel("throughput (requests/s)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

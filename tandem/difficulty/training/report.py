"""Human-readable output of an evaluation: a metrics table and a quality-vs-strong-calls plot."""

from __future__ import annotations

import pathlib

from tandem.difficulty.training.crossval import Split
from tandem.difficulty.training.evaluation import NUM_RANDOM_DRAWS, Evaluation

SPLIT_NAMES = {Split.PROMPT: "in-domain", Split.DOMAIN: "domain-held-out"}


def format_table(evaluation: Evaluation) -> str:
    """The APGR / CPT(50%) / CPT(80%) table of the estimator, random routing and the oracle."""
    source = f", hidden states: {evaluation.hidden_states}" if evaluation.hidden_states else ""
    lines = [
        f"{evaluation.num_rows} prompts, {evaluation.num_domains} domains; weak accuracy "
        f"{evaluation.weak_accuracy:.3f}, strong accuracy {evaluation.strong_accuracy:.3f}",
        f"estimator {evaluation.estimator}{source}: {evaluation.num_folds}-fold "
        f"{SPLIT_NAMES[evaluation.split]} cross-validation, seed {evaluation.seed}, "
        f"{evaluation.seconds:.1f} s",
        "",
        f"{'router':<12} {'APGR':>7} {'CPT(50%)':>9} {'CPT(80%)':>9}",
    ]
    rows = [(evaluation.estimator, evaluation.estimator_metrics),
            ("random", evaluation.random_metrics), ("oracle", evaluation.oracle_metrics)]
    for name, metrics in rows:
        lines.append(f"{name:<12} {metrics.apgr:>7.3f} {metrics.cpt50:>9.1%} {metrics.cpt80:>9.1%}")
    spread = evaluation.random_half_width
    lines += [
        "",
        f"random: mean of {NUM_RANDOM_DRAWS} seeded draws, 95% half-width APGR {spread.apgr:.3f}, "
        f"CPT(50%) {spread.cpt50:.1%}, CPT(80%) {spread.cpt80:.1%}",
        "per fold APGR: " + " ".join(f"{m.apgr:.3f}" for m in evaluation.per_fold),
    ]
    return "\n".join(lines)


def plot_quality(evaluation: Evaluation, path: str | pathlib.Path) -> pathlib.Path:
    """Writes a PNG of quality against the share of strong-model calls for every router."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--plot {path}: expected a .png path")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    styles = {"random": {"color": "grey", "linestyle": "--"}, "oracle": {"color": "black",
                                                                         "linestyle": ":"}}
    for name, curve in evaluation.curves.items():
        axes.plot(100 * curve.share_strong, 100 * curve.quality, label=name,
                  **styles.get(name, {"color": "tab:blue"}))
    axes.axhline(100 * evaluation.weak_accuracy, color="tab:red", linewidth=0.8, label="weak only")
    axes.axhline(100 * evaluation.strong_accuracy, color="tab:green", linewidth=0.8,
                 label="strong only")
    axes.set_xlabel("strong-model calls (%)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"{evaluation.estimator}: APGR {evaluation.estimator_metrics.apgr:.3f} "
                   f"({evaluation.num_folds}-fold {SPLIT_NAMES[evaluation.split]} CV, "
                   f"{evaluation.num_rows} prompts)")
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

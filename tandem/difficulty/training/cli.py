"""`tandem difficulty`: train and evaluate difficulty estimators on RouteLLM-format CSVs.

    tandem difficulty train --data CSV... --weak-col COL --strong-col COL \
        [--estimator features|embedding|probe] [--model DIR|GGUF|smollm2]
        [--prompt-format plain|chat] --out DIR
    tandem difficulty eval --data CSV... --weak-col COL --strong-col COL \
        [--estimator NAME] [--folds K] [--split prompt|domain] [--seed S] [--json] [--plot PNG]
        [--limit N]

CSV paths may be globs. `train` writes a folder that `load_estimator` (router) or, for the probe,
`ProbeHead.load` (prefill worker) reads. `eval` cross-validates (in-domain, or holding out whole
domains with `--split domain`) and prints APGR, CPT(50%) and CPT(80%) of the estimator, random
routing and the oracle. MiniLM vectors and a served model's hidden states are cached on disk
under $TANDEM_CACHE (default ~/.cache/tandem).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from tandem.difficulty.base import TrainableEstimator
from tandem.difficulty.training.crossval import Split
from tandem.difficulty.training.data import RoutingDataset, load_routing_csvs
from tandem.difficulty.training.hidden_states import PROMPT_FORMATS

ESTIMATOR_NAMES = ("features", "embedding", "probe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `train` and `eval` sub-subcommands."""
    commands = parser.add_subparsers(dest="action", required=True, metavar="{train,eval}")
    train = commands.add_parser("train", help="train an estimator on labelled prompts and save it")
    _add_common(train)
    train.add_argument("--out", required=True, help="folder to write the trained estimator into")
    evaluate = commands.add_parser("eval", help="cross-validate an estimator (APGR, CPT)")
    _add_common(evaluate)
    evaluate.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    evaluate.add_argument("--split", default="prompt", choices=[s.value for s in Split],
                          help="prompt: in-domain folds (every domain in every fold); domain: "
                               "hold out whole domains, i.e. CSV files such as MMLU subjects, so "
                               "that no domain is both trained and tested on (default: prompt)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of folds and random routing")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--plot", default=None, help="write quality vs strong calls to this PNG")


def run(args: argparse.Namespace) -> int:
    """Runs `train` or `eval`; bad input is reported as one line on stderr with exit status 2."""
    try:
        if args.action == "train" and args.estimator == "probe" and args.model is None:
            raise ValueError("train --estimator probe needs --model DIR: a probe must be trained "
                             "on the hidden states of the model it will read")
        make_estimator, hidden_states = estimator_factory(args.estimator, args.model, args.device,
                                                          args.prompt_format)
        dataset = load_routing_csvs(args.data, args.prompt_col, args.weak_col, args.strong_col,
                                    args.limit)
        if args.action == "train":
            return _train(make_estimator, dataset, args.out)
        return _evaluate(make_estimator, dataset, args, hidden_states)
    except (ValueError, OSError, RuntimeError) as error:
        # Bad input, a missing file or a missing model package: one line, not a traceback.
        print(f"tandem difficulty {args.action}: {error}", file=sys.stderr)
        return 2


def estimator_factory(name: str, model_dir: str | None, device: str = "cpu",
                      prompt_format: str = "plain",
                      ) -> tuple[Callable[[], TrainableEstimator], str | None]:
    """A maker of untrained estimators of `name`, and (for the probe) where its states come from.

    Training and evaluation read MiniLM vectors through the embedding cache. The probe reads the
    hidden states of `model_dir` run by Tandem's engine, or without a model folder MiniLM's
    final-token states as a clearly labelled stand-in.
    """
    if name not in ESTIMATOR_NAMES:
        raise ValueError(f"unknown estimator {name!r}; expected one of {list(ESTIMATOR_NAMES)}")
    if model_dir is not None and name != "probe":
        raise ValueError("--model is only for --estimator probe")
    if name == "features":
        from tandem.difficulty.feature_estimator import FeatureEstimator

        return FeatureEstimator, None
    if name == "embedding":
        from tandem.difficulty.training.embedding_cache import EmbeddingCache
        from tandem.difficulty.embedding_estimator import EmbeddingEstimator

        cache = EmbeddingCache()
        return lambda: EmbeddingEstimator(embedder=cache.pooled), None
    from tandem.difficulty.training.probe_estimator import probe_factory

    return probe_factory(model_dir, device, prompt_format)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True,
                        help="RouteLLM-format CSV files or globs (quote globs)")
    parser.add_argument("--prompt-col", default="prompt", help="prompt column (default: prompt)")
    parser.add_argument("--weak-col", required=True, help="column: the weak model was correct")
    parser.add_argument("--strong-col", required=True, help="column: the strong model was correct")
    parser.add_argument("--estimator", default="features", choices=ESTIMATOR_NAMES,
                        help="estimator to train or evaluate (default: features)")
    parser.add_argument("--model", default=None,
                        help="model whose hidden states the probe reads: a folder, a .gguf file or "
                             "an alias such as smollm2 (probe only)")
    parser.add_argument("--device", default="cpu", help="torch device for --model (default: cpu)")
    parser.add_argument("--prompt-format", default="plain", choices=PROMPT_FORMATS,
                        help="how the router tokenizes the prompts the probe will read: plain text "
                             "(completions) or one user message in the chat template (default: plain)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use an evenly spaced subset of at most N rows")


def _train(make_estimator: Callable[[], TrainableEstimator], dataset: RoutingDataset,
           out: str) -> int:
    estimator = make_estimator().fit(dataset)
    estimator.save(out)
    print(json.dumps({"estimator": estimator.name, "out": out, "num_rows": len(dataset),
                      "num_domains": len(set(dataset.domains))}))
    return 0


def _evaluate(make_estimator: Callable[[], TrainableEstimator], dataset: RoutingDataset,
              args: argparse.Namespace, hidden_states: str | None) -> int:
    from tandem.difficulty.training.evaluation import evaluate
    from tandem.difficulty.training.report import format_table, plot_quality

    evaluation = evaluate(make_estimator, dataset, args.folds, args.seed, hidden_states,
                          Split(args.split))
    summary = evaluation.as_dict()
    if args.plot:
        summary["plot"] = str(plot_quality(evaluation, args.plot))
    print(json.dumps(summary, indent=2) if args.json else format_table(evaluation))
    if args.plot and not args.json:
        print(f"plot: {summary['plot']}")
    return 0

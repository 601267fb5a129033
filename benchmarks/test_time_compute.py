"""Test-time compute on checkable arithmetic: accuracy against generated tokens for four strategies.

For each seeded word problem (benchmarks/arithmetic_tasks.py) the engine makes one greedy sample
and k sampled ones (seeds seed+i), all batched together, each up to --max-tokens. The strategies
are then read off these samples, as the engine would have made them, because a seeded sample's
first B tokens are what a request with max_tokens=B makes:
  (a) greedy: one sample, a fixed budget (--max-tokens);
  (b) majority: k samples, majority vote, for every prompt (also the curve over 1..k samples);
  (c) policy: the difficulty policy (YAML, tandem/policy/difficulty_policy.py) maps each prompt's
      difficulty from the `features` estimator (tandem/difficulty; cross-fitted: trained on the
      other folds' problems, labelled greedy-right vs majority-right) to samples, budget and
      selection;
  (d) short-m@k: k samples, the majority of the first m that finish (router/selection.py).
Samples run in lockstep (one token per step each), so a selection decided when a sample finishes
at step t has cost sum(min(length_i, t)) tokens: cancelled samples count up to where they stopped.
Tokens saved at equal accuracy are read off (b)'s curve over 1..k samples, and off the best of (a)
and (b), linearly interpolated; an accuracy above a curve has no saving to report.

    .venv/bin/python benchmarks/test_time_compute.py --model smollm2 --num-problems 90 -k 5
    .venv/bin/python benchmarks/test_time_compute.py --quick --model tiny     # smoke run

Prints one JSON object; writes the accuracy-tokens plot to --plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

# Run as a script, this folder comes first on sys.path and benchmarks/router.py would shadow the
# router package, whose selection rules this benchmark uses.
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "benchmarks"]

from benchmarks.arithmetic_tasks import Problem, chat_messages, extract_answer, make_problems  # noqa: E402
from router.selection import FIRST_FINISHED, MAJORITY, Selection  # noqa: E402
from tandem.difficulty.feature_estimator import FeatureEstimator  # noqa: E402
from tandem.difficulty.training.crossval import assign_folds, training_rows  # noqa: E402
from tandem.difficulty.training.data import RoutingDataset  # noqa: E402
from tandem.engine.engine_config import EngineConfig  # noqa: E402
from tandem.engine.llm_engine import LLMEngine  # noqa: E402
from tandem.engine.request_output import Completion  # noqa: E402
from tandem.engine.sampling_params import SamplingParams  # noqa: E402
from tandem.engine.sequence import FinishReason  # noqa: E402
from tandem.policy.difficulty_policy import DifficultyPolicy, SelectionRule, load_policy  # noqa: E402
from tandem.serving.worker_args import resolve_model_dir  # noqa: E402

log = logging.getLogger("test_time_compute")
DEFAULT_POLICY = pathlib.Path(__file__).with_name("test_time_compute_policy.yaml")


@dataclass(slots=True)
class Sample:
    """One generated sample: its tokens and whether it ended by itself (not by the length limit)."""

    token_ids: list[int]
    is_stopped: bool


@dataclass(slots=True)
class ProblemRun:
    """A problem with its greedy sample and its k sampled ones."""

    problem: Problem
    greedy: Sample
    samples: list[Sample]


@dataclass(slots=True)
class Choice:
    """What a strategy answered for one problem and the tokens it generated."""

    answer: int | None
    num_tokens: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="'smollm2', 'tiny', a GGUF file or a HF folder")
    parser.add_argument("--quick", action="store_true", help="9 problems, k=3, m=2, 3 folds (smoke run)")
    parser.add_argument("--num-problems", type=int, default=90)
    parser.add_argument("-k", "--num-samples", type=int, default=5, help="samples per problem")
    parser.add_argument("-m", "--short-m", type=int, default=3, help="m of the reported short-m@k")
    parser.add_argument("--max-digits", type=int, default=3, choices=(1, 2, 3),
                        help="largest numbers' digits (1: the sizes SmolLM2-135M gets partly right)")
    parser.add_argument("--max-tokens", type=int, default=48, help="budget of every sample")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--policy", type=pathlib.Path, default=DEFAULT_POLICY)
    parser.add_argument("--folds", type=int, default=5, help="cross-fitting folds of the estimator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--chunk", type=int, default=6, help="problems per engine.generate call")
    parser.add_argument("--plot", type=pathlib.Path, default=pathlib.Path("test_time_compute.png"))
    args = parser.parse_args(argv)
    if args.quick:
        args.num_problems, args.num_samples, args.short_m, args.folds = 9, 3, 2, 3
    if not 1 <= args.short_m <= args.num_samples:
        parser.error("-m must be in [1, k]")
    return args


def generate_runs(engine: LLMEngine, problems: list[Problem], args: argparse.Namespace) -> list[ProblemRun]:
    """The greedy and k sampled answers of every problem, batched by the engine."""
    tokenizer, runs = engine.tokenizer, []
    for start in range(0, len(problems), args.chunk):
        chunk = problems[start:start + args.chunk]
        prompts, params = [], []
        for offset, problem in enumerate(chunk):
            text = tokenizer.apply_chat_template(chat_messages(problem))
            prompt = tokenizer.encode(text, add_special_tokens=False)
            base_seed = args.seed * 1_000_003 + (start + offset) * args.num_samples
            prompts += [prompt] * (args.num_samples + 1)
            params.append(SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
            params += [SamplingParams(temperature=args.temperature, top_p=args.top_p,
                                      seed=base_seed + i, max_tokens=args.max_tokens)
                       for i in range(args.num_samples)]
        completions = run_with_shared_prefill(engine, prompts, params, args.num_samples + 1)
        per_problem = args.num_samples + 1
        for offset, problem in enumerate(chunk):
            own = [Sample(c.token_ids, c.finish_reason is FinishReason.STOP)
                   for c in completions[offset * per_problem:(offset + 1) * per_problem]]
            runs.append(ProblemRun(problem, own[0], own[1:]))
        log.info("generated %d/%d problems", len(runs), len(problems))
    return runs


def run_with_shared_prefill(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams],
                            group: int) -> list[Completion]:
    """Runs the requests to completion, each group's first one ahead so the rest reuse its prompt KV.

    The other samples of a prompt join once the first has made a token, so they find the
    prompt's full blocks in the prefix cache instead of computing the prompt k more times.
    """
    request_ids = [f"ttc-{i}" for i in range(len(prompts))]
    completions = {rid: Completion(rid, list(p), [], "", None, None, 0)
                   for rid, p in zip(request_ids, prompts)}
    waiting_leaders = {request_ids[i]: i for i in range(0, len(prompts), group)}
    for request_id, i in waiting_leaders.items():
        engine.add_request(request_id, prompts[i], params[i])
    while engine.has_unfinished_requests():
        for output in engine.step():
            completions[output.request_id].add(output)
            first = waiting_leaders.pop(output.request_id, None)
            if first is not None:
                for i in range(first + 1, min(first + group, len(prompts))):
                    engine.add_request(request_ids[i], prompts[i], params[i])
    return [completions[rid] for rid in request_ids]


def select(tokenizer, samples: list[Sample], rule: int, m: int, budget: int) -> Choice:
    """Runs the router's selection over samples cut at `budget`, counting tokens until it decides."""
    views = []
    for sample in samples:
        token_ids = sample.token_ids[:budget]
        answer = extract_answer(tokenizer.decode(token_ids, skip_special_tokens=True))
        # A sample cut by the budget has no answer to vote with (the router's rule).
        is_stopped = sample.is_stopped and len(sample.token_ids) <= budget
        views.append((len(token_ids), answer, is_stopped and answer is not None))
    selection = Selection(rule, len(samples), m)
    horizon = 0
    for index in sorted(range(len(views)), key=lambda i: (views[i][0], i)):
        length, answer, is_vote = views[index]
        selection.add_finished(index, "" if answer is None else str(answer), is_vote)
        horizon = length
        if selection.is_decided:
            break
    # Lockstep decoding: every sample still running made one token per step until `horizon`.
    num_tokens = sum(min(length, horizon) for length, _, _ in views)
    return Choice(views[selection.winner()][1], num_tokens)


def summarize(runs: list[ProblemRun], choices: list[Choice]) -> dict:
    """Accuracy and mean tokens per problem of one strategy."""
    correct = [c.answer == r.problem.answer for r, c in zip(runs, choices)]
    return {"accuracy": float(np.mean(correct)),
            "mean_tokens": float(np.mean([c.num_tokens for c in choices]))}


def crossfit_difficulty(runs: list[ProblemRun], greedy_right: np.ndarray, majority_right: np.ndarray,
                        num_folds: int, seed: int) -> np.ndarray:
    """Out-of-fold `features` difficulty of each problem (raises ValueError when untrainable)."""
    dataset = RoutingDataset([r.problem.text for r in runs], greedy_right, majority_right,
                             ["arithmetic"] * len(runs))
    folds = assign_folds(dataset, num_folds, seed)
    scores = np.zeros(len(runs))
    for fold in range(num_folds):
        test = np.flatnonzero(folds == fold)
        estimator = FeatureEstimator().fit(dataset.subset(training_rows(dataset, folds, fold)))
        scores[test] = estimator.score([dataset.prompts[i] for i in test])
    return scores


def policy_choice(tokenizer, run: ProblemRun, policy: DifficultyPolicy, difficulty: float,
                  args: argparse.Namespace) -> tuple[Choice, int]:
    """The policy's decision for one problem applied to its samples; also the samples it spent."""
    decision = policy.resolve(float(difficulty))
    budget = decision.answer_budget + (decision.thinking_budget or 0)
    if budget > args.max_tokens:
        raise ValueError(f"policy budget {budget} exceeds --max-tokens {args.max_tokens}")
    if decision.temperature == 0.0:
        if decision.num_samples != 1:
            raise ValueError("a greedy band with num_samples > 1 repeats one answer")
        pool = [run.greedy]
    elif decision.temperature == args.temperature and decision.num_samples <= args.num_samples:
        pool = run.samples[:decision.num_samples]
    else:
        raise ValueError(f"policy band (temperature {decision.temperature}, {decision.num_samples} "
                         f"samples) needs --temperature {decision.temperature} and -k >= "
                         f"{decision.num_samples}")
    is_majority = decision.selection is SelectionRule.MAJORITY_OF_FIRST_M
    rule = MAJORITY if is_majority else FIRST_FINISHED
    return select(tokenizer, pool, rule, decision.majority_m, budget), len(pool)


def tokens_at_accuracy(points: list[dict], accuracy: float) -> float | None:
    """Tokens the baseline's frontier needs for `accuracy` (linear interpolation; None above it)."""
    frontier = []
    for point in sorted(points, key=lambda p: p["mean_tokens"]):
        if not frontier or point["accuracy"] > frontier[-1]["accuracy"]:
            frontier.append(point)
    if accuracy <= frontier[0]["accuracy"]:
        return frontier[0]["mean_tokens"]
    for left, right in zip(frontier, frontier[1:]):
        if accuracy <= right["accuracy"]:
            share = (accuracy - left["accuracy"]) / (right["accuracy"] - left["accuracy"])
            return left["mean_tokens"] + share * (right["mean_tokens"] - left["mean_tokens"])
    return None


def saving(point: dict, baseline: list[dict]) -> dict:
    """Tokens the strategy saves against a baseline's frontier at its own accuracy."""
    needed = tokens_at_accuracy(baseline, point["accuracy"])
    if needed is None:
        return {"baseline_tokens": None, "tokens_saved": None,
                "note": "accuracy above every baseline point"}
    return {"baseline_tokens": round(needed, 2), "tokens_saved": round(1 - point["mean_tokens"] / needed, 4)}


def savings(point: dict, greedy: dict, majority_curve: list[dict]) -> dict:
    """Savings against (b) majority over 1..k samples, against the best of (a) and (b), and
    plainly against (b) with all k samples (tokens and accuracy both differ there)."""
    full = majority_curve[-1]
    return {"vs_majority": saving(point, majority_curve),
            "vs_greedy_or_majority": saving(point, [greedy, *majority_curve]),
            "vs_majority_at_k": {"tokens_saved": round(1 - point["mean_tokens"] / full["mean_tokens"], 4),
                                 "accuracy_change": round(point["accuracy"] - full["accuracy"], 4)}}


def evaluate(tokenizer, runs: list[ProblemRun], args: argparse.Namespace) -> dict:
    """Every strategy's accuracy and tokens, the curves over k and m, and the savings."""
    k, budget = args.num_samples, args.max_tokens
    greedy = [select(tokenizer, [r.greedy], FIRST_FINISHED, 1, budget) for r in runs]
    majority_curve, short_curve, majority_choices = [], [], []
    for num in range(1, k + 1):
        choices = [select(tokenizer, r.samples[:num], MAJORITY, num, budget) for r in runs]
        majority_curve.append({"k": num, **summarize(runs, choices)})
        majority_choices = choices
        short = [select(tokenizer, r.samples, MAJORITY, num, budget) for r in runs]
        short_curve.append({"m": num, **summarize(runs, short)})
    result = {"greedy": summarize(runs, greedy), "majority_at_k": majority_curve[-1],
              "majority_curve": majority_curve, "short_m_at_k": dict(short_curve[args.short_m - 1]),
              "short_m_curve": short_curve}
    result["short_m_at_k"].update(savings(result["short_m_at_k"], result["greedy"], majority_curve))
    greedy_right = np.array([c.answer == r.problem.answer for r, c in zip(runs, greedy)])
    majority_right = np.array([c.answer == r.problem.answer for r, c in zip(runs, majority_choices)])
    result["policy"] = evaluate_policy(tokenizer, runs, greedy_right, majority_right, result, args)
    return result


def evaluate_policy(tokenizer, runs, greedy_right, majority_right, result, args) -> dict:
    """The difficulty policy's accuracy and tokens, or why it could not run."""
    try:
        difficulty = crossfit_difficulty(runs, greedy_right, majority_right, args.folds, args.seed)
    except ValueError as error:
        # A model that gets everything wrong (the tiny random one) leaves a single label class.
        log.warning("features estimator cannot be trained here: %s", error)
        return {"skipped": f"estimator not trainable: {error}"}
    policy = load_policy(args.policy)
    outcomes = [policy_choice(tokenizer, r, policy, d, args) for r, d in zip(runs, difficulty)]
    point = summarize(runs, [choice for choice, _ in outcomes])
    sizes = sorted({r.problem.size for r in runs})
    return {**point, "mean_samples": float(np.mean([n for _, n in outcomes])),
            **savings(point, result["greedy"], result["majority_curve"]),
            "mean_difficulty_by_size": {str(s): round(float(np.mean(
                [d for r, d in zip(runs, difficulty) if r.problem.size == s])), 3) for s in sizes}}


def plot(result: dict, path: pathlib.Path) -> None:
    """Accuracy against mean tokens per problem: the curves over k and m, greedy and the policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for key, label, param in (("majority_curve", "(b) majority of k", "k"),
                              ("short_m_curve", "(d) short-m@k", "m")):
        curve = result[key]
        axes.plot([p["mean_tokens"] for p in curve], [p["accuracy"] for p in curve], "o-", label=label)
        for p in curve:
            axes.annotate(f"{param}={p[param]}", (p["mean_tokens"], p["accuracy"]), fontsize=7)
    axes.plot(result["greedy"]["mean_tokens"], result["greedy"]["accuracy"], "s", label="(a) greedy")
    if "accuracy" in result["policy"]:
        axes.plot(result["policy"]["mean_tokens"], result["policy"]["accuracy"], "*", markersize=12,
                  label="(c) difficulty policy")
    axes.set_xlabel("generated tokens per problem (all samples)")
    axes.set_ylabel("accuracy")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and prints its JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    engine = LLMEngine(resolve_model_dir(args.model), EngineConfig(num_blocks=1536, max_num_seqs=64))
    problems = make_problems(args.num_problems, args.seed, args.max_digits)
    runs = generate_runs(engine, problems, args)
    result = evaluate(engine.tokenizer, runs, args)
    plot(result, args.plot)
    parameters = {key: str(value) if isinstance(value, pathlib.Path) else value
                  for key, value in vars(args).items()}
    print(json.dumps({"benchmark": "test_time_compute", "parameters": parameters, **result,
                      "wall_seconds": round(time.perf_counter() - started, 1)}, indent=2))


if __name__ == "__main__":
    main()

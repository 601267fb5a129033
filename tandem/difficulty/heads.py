"""A small trained linear head over prompt features, and the training target it learns.

Fitting uses scikit-learn's logistic regression; scoring is plain numpy (standardise, one matrix
product, softmax/sigmoid, percentile calibration), so a saved head loads without scikit-learn.

Targets (`Target`), computed from each prompt's weak- and strong-model correctness:
- `gain` (default): a 3-class head over strong minus weak correctness in {-1, 0, +1}; the raw
  score is E[gain] = P(+1) - P(-1), the expected quality won by sending the prompt to the strong
  model. Sorting by E[gain] maximises expected quality at every share of strong calls, so it is
  the target that APGR rewards; it also learns to keep prompts the weak model gets right and the
  strong one gets wrong (5% of MMLU) away from the strong model.
- `weak_fails`: P(weak model wrong); ignores whether the strong model would do better.
- `strong_only`: P(weak wrong and strong right); ignores the prompts that routing would lose.

Calibration: the raw score is mapped to its percentile among the training prompts, so a
difficulty of 0.7 means "harder than 70% of the training traffic" and a policy band [0.7, 1.0]
receives about 30% of in-distribution requests. The map is strictly increasing (exponential tails
beyond the training range), so it never creates ties and never changes the routing order.
"""

from __future__ import annotations

import enum
import pathlib
from dataclasses import dataclass

import numpy as np

NUM_CALIBRATION_POINTS = 1001


class Target(str, enum.Enum):
    """What a head is trained to predict (see the module docstring)."""

    GAIN = "gain"
    WEAK_FAILS = "weak_fails"
    STRONG_ONLY = "strong_only"


def target_labels(target: Target, weak_correct: np.ndarray, strong_correct: np.ndarray) -> np.ndarray:
    """[N] int class labels of `target`: {-1, 0, 1} for gain, {0, 1} otherwise."""
    weak = np.asarray(weak_correct, dtype=bool)
    strong = np.asarray(strong_correct, dtype=bool)
    if target is Target.GAIN:
        return strong.astype(np.int64) - weak.astype(np.int64)
    if target is Target.WEAK_FAILS:
        return (~weak).astype(np.int64)
    return (~weak & strong).astype(np.int64)


@dataclass(slots=True)
class LinearHead:
    """Standardisation, a linear layer, a class readout and a percentile calibration."""

    mean: np.ndarray          # [D] feature means of the training set
    scale: np.ndarray         # [D] feature standard deviations (1 where constant)
    weights: np.ndarray       # [C, D] one row per class (C = 1: binary logistic)
    bias: np.ndarray          # [C]
    class_values: np.ndarray  # [C'] the value of each class: raw score = sum p_c * value_c
    calibration: np.ndarray   # [K] strictly increasing raw scores at percentile levels
    levels: np.ndarray        # [K] the percentile of each calibration point, in (0, 1)

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, regularization: float = 1.0,
            seed: int = 0) -> LinearHead:
        """Fits a logistic (2 classes) or multinomial (3) head; labels are class values."""
        from sklearn.linear_model import LogisticRegression

        features = _as_matrix(features)
        labels = np.asarray(labels)
        if labels.shape != (features.shape[0],):
            raise ValueError(f"LinearHead.fit: {features.shape[0]} rows but {labels.shape} labels")
        classes = np.unique(labels)
        if classes.size < 2:
            raise ValueError("LinearHead.fit: labels need at least two classes, got "
                             f"{classes.tolist()}")
        if regularization <= 0:
            raise ValueError(f"LinearHead.fit: regularization must be > 0, got {regularization}")
        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale[scale < 1e-12] = 1.0
        model = LogisticRegression(C=regularization, max_iter=2000, random_state=seed)
        model.fit((features - mean) / scale, labels)
        class_values = model.classes_.astype(np.float64)
        if classes.size == 2:
            # A binary head's raw score is P(larger class): values (0, 1) after shifting.
            class_values = (class_values == class_values.max()).astype(np.float64)
        head = cls(mean, scale, model.coef_.astype(np.float64), model.intercept_.astype(np.float64),
                   class_values, np.zeros(0), np.zeros(0))
        head.calibration, head.levels = percentile_table(head.raw_scores(features))
        return head

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        """[N] uncalibrated scores: expected class value under the head's class probabilities."""
        standardized = (_as_matrix(features) - self.mean) / self.scale
        logits = standardized @ self.weights.T + self.bias             # [N, C]
        if self.weights.shape[0] == 1:
            positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            probabilities = np.stack([1.0 - positive, positive], axis=1)
        else:
            logits = logits - logits.max(axis=1, keepdims=True)
            probabilities = np.exp(logits)
            probabilities /= probabilities.sum(axis=1, keepdims=True)
        return probabilities @ self.class_values

    def scores(self, features: np.ndarray) -> np.ndarray:
        """[N] difficulty in [0, 1]: the percentile of the raw score among training prompts."""
        return calibrate(self.raw_scores(features), self.calibration, self.levels)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The head's arrays under `prefix`, for safetensors."""
        return {f"{prefix}{name}": np.ascontiguousarray(getattr(self, name), dtype=np.float64)
                for name in LinearHead.__slots__}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> LinearHead:
        """Rebuilds a head saved by `arrays`."""
        missing = [n for n in cls.__slots__ if f"{prefix}{n}" not in arrays]
        if missing:
            raise ValueError(f"saved head lacks arrays {missing}")
        return cls(**{name: arrays[f"{prefix}{name}"] for name in cls.__slots__})


def percentile_table(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strictly increasing (raw score, percentile) points from training raw scores."""
    levels = (np.arange(NUM_CALIBRATION_POINTS) + 0.5) / NUM_CALIBRATION_POINTS
    points = np.quantile(np.asarray(raw, dtype=np.float64), levels)
    unique_points, inverse = np.unique(points, return_inverse=True)
    # Equal quantiles (ties in the training scores) share the mean of their levels.
    unique_levels = np.bincount(inverse, weights=levels) / np.bincount(inverse)
    return unique_points, unique_levels


def calibrate(raw: np.ndarray, points: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Maps raw scores through the percentile table; exponential tails keep it strictly monotone."""
    raw = np.asarray(raw, dtype=np.float64)
    if points.size == 1:
        return 0.5 * (1.0 + np.tanh((raw - points[0]) / 2.0))  # a sigmoid that cannot overflow
    spread = max(float(points[-1] - points[0]) / points.size, 1e-12)
    calibrated = np.interp(raw, points, levels)
    # The tails are computed only where they apply: elsewhere their exponents would overflow.
    below, above = raw < points[0], raw > points[-1]
    calibrated[below] = levels[0] * np.exp((raw[below] - points[0]) / spread)
    calibrated[above] = 1.0 - (1.0 - levels[-1]) * np.exp(-(raw[above] - points[-1]) / spread)
    return calibrated


def save_arrays(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes float arrays as safetensors."""
    from safetensors.numpy import save_file

    save_file(arrays, str(path))


def load_arrays(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Reads arrays written by `save_arrays`."""
    from safetensors.numpy import load_file

    if not path.is_file():
        raise ValueError(f"no saved arrays at {path}")
    return load_file(str(path))


def _as_matrix(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D array [N, D], got shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or infinity")
    return features

"""Difficulty routing policy: difficulty bands -> model tier, thinking, budgets and sampling.

Pure: `parse_policy(dict)` validates a policy and `DifficultyPolicy.resolve(difficulty, tenant_name)`
returns a `RoutingDecision` carrying its reason; only `load_policy(path)` reads a file (YAML).
The router resolves the prompt-level difficulty before prefill, then
`refine_after_probe(decision, probe)` adjusts the decode-side budget once the prefill worker
reports its hidden-state probe (the same decision object back when nothing changes).

Policy document (see examples/policy.yaml):
    version: 1
    probe_weight: 0.5            # weight of the probe in the refined difficulty, in [0, 1]
    bands:                       # must tile [0, 1]: sorted, no gap, no overlap
      - range: [0.0, 0.4]        # [low, high); the last band also includes 1.0
        tier: small              # model name (a pool of workers serving it)
        thinking: false
        thinking_budget: null    # tokens (>= 1) when thinking; null, 0 or absent when it is off
        answer_budget: 512       # tokens after thinking
        temperature: 0.0
        num_samples: 1           # parallel samples per request
        selection: first_finished  # or majority_of_first_m (with majority_m: M <= num_samples)
    tenants:
      free:                      # per-tenant override; every key optional
        bands: [...]             # replaces the default bands
        tier_map: {large: small} # serve a tier with another model
        caps: {max_thinking_budget: 1024, max_answer_budget: 512, max_num_samples: 1}
"""

from __future__ import annotations

import enum
import math
import numbers
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

POLICY_VERSION = 1
_TOP_KEYS = {"version", "probe_weight", "bands", "tenants"}
_BAND_KEYS = {"range", "tier", "thinking", "thinking_budget", "answer_budget", "temperature",
              "num_samples", "selection", "majority_m"}
_TENANT_KEYS = {"bands", "tier_map", "caps"}
_CAP_KEYS = {"max_thinking_budget", "max_answer_budget", "max_num_samples"}


class SelectionRule(str, enum.Enum):
    """How one answer is chosen among a request's parallel samples."""

    FIRST_FINISHED = "first_finished"            # return the first sample that completes
    MAJORITY_OF_FIRST_M = "majority_of_first_m"  # majority answer of the first M completed


@dataclass(slots=True, frozen=True)
class Band:
    """What requests with difficulty in [low, high) get."""

    low: float
    high: float
    tier: str
    thinking: bool
    thinking_budget: int | None  # None exactly when thinking is off
    answer_budget: int
    temperature: float
    num_samples: int
    selection: SelectionRule
    majority_m: int  # samples counted by the majority rule; 1 for first_finished

    def __post_init__(self) -> None:
        where = f"band [{self.low}, {self.high})"
        if not (0.0 <= self.low < self.high <= 1.0):
            raise ValueError(f"{where}: range must satisfy 0 <= low < high <= 1")
        if not self.tier:
            raise ValueError(f"{where}: tier must be a non-empty model name")
        if self.answer_budget < 1:
            raise ValueError(f"{where}: answer_budget must be >= 1, got {self.answer_budget}")
        if self.thinking and (self.thinking_budget is None or self.thinking_budget < 1):
            raise ValueError(f"{where}: thinking is on, so thinking_budget must be >= 1 "
                             f"(got {self.thinking_budget!r})")
        if not self.thinking and self.thinking_budget is not None:
            raise ValueError(f"{where}: thinking_budget is {self.thinking_budget} but thinking is off")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"{where}: temperature must be a finite number >= 0")
        if self.num_samples < 1:
            raise ValueError(f"{where}: num_samples must be >= 1, got {self.num_samples}")
        if self.selection is SelectionRule.FIRST_FINISHED and self.majority_m != 1:
            raise ValueError(f"{where}: majority_m is only for selection majority_of_first_m")
        if not 1 <= self.majority_m <= self.num_samples:
            raise ValueError(f"{where}: majority_m must be in [1, num_samples={self.num_samples}], "
                             f"got {self.majority_m}")

    def contains(self, difficulty: float) -> bool:
        """Whether `difficulty` falls in this band (the band ending at 1.0 includes 1.0)."""
        return self.low <= difficulty < self.high or difficulty == self.high == 1.0


@dataclass(slots=True, frozen=True)
class RoutingDecision:
    """The tier, thinking mode, budgets and sampling chosen for one request, and why."""

    difficulty: float
    tenant_name: str | None
    tier: str
    thinking: bool
    thinking_budget: int | None  # None when thinking is off
    answer_budget: int
    temperature: float
    num_samples: int
    selection: SelectionRule
    majority_m: int
    reason: str


@dataclass(slots=True, frozen=True)
class DifficultyPolicy:
    """Default bands, per-tenant bands (overrides already applied) and the probe weight."""

    bands: tuple[Band, ...]
    tenant_bands: Mapping[str, tuple[Band, ...]]
    probe_weight: float

    @property
    def tiers(self) -> set[str]:
        """Every tier some band routes to (tenant bands and tier maps included)."""
        bands = [*self.bands, *(b for tenant in self.tenant_bands.values() for b in tenant)]
        return {band.tier for band in bands}

    def bands_for(self, tenant_name: str | None) -> tuple[Band, ...]:
        """The tenant's bands, or the default ones for an unknown or absent tenant."""
        return self.tenant_bands.get(tenant_name, self.bands) if tenant_name else self.bands

    def resolve(self, difficulty: float, tenant_name: str | None = None) -> RoutingDecision:
        """The decision for a request of this difficulty from this tenant."""
        difficulty = _check_difficulty(difficulty, "difficulty")
        bands = self.bands_for(tenant_name)
        index = next(i for i, band in enumerate(bands) if band.contains(difficulty))
        return _decision(bands[index], difficulty, tenant_name,
                         f"difficulty {difficulty:.3f} in band {index} {_label(bands[index])} of "
                         f"{_owner(self, tenant_name)} policy")

    def refine_after_probe(self, decision: RoutingDecision,
                           probe_difficulty: float) -> RoutingDecision:
        """Decode-side decision after the prefill probe: `decision` itself when nothing changes.

        The refined difficulty blends the prompt estimate and the probe with `probe_weight`. The
        request keeps its tier (its KV cache is already in that model's decode pool) and its
        thinking mode (the prompt was prefilled with it), so only the bands of that tier and
        thinking mode are candidates: budgets, temperature and sampling come from the one that
        holds the refined difficulty, or the nearest one.
        """
        probe = _check_difficulty(probe_difficulty, "probe_difficulty")
        refined = (1.0 - self.probe_weight) * decision.difficulty + self.probe_weight * probe
        bands = self.bands_for(decision.tenant_name)
        candidates = [(i, b) for i, b in enumerate(bands)
                      if b.tier == decision.tier and b.thinking == decision.thinking]
        if not candidates:
            raise ValueError(f"no band of the {_owner(self, decision.tenant_name)} policy has tier "
                             f"{decision.tier!r} and thinking {decision.thinking}; a decision can "
                             "only be refined by the policy that made it")
        index, band = min(candidates, key=lambda item: _distance(item[1], refined))
        if _same_settings(band, decision):
            return decision
        reason = (f"refined difficulty {refined:.3f} (prompt {decision.difficulty:.3f}, probe "
                  f"{probe:.3f}, weight {self.probe_weight}) -> band {index} {_label(band)}, "
                  f"tier {decision.tier} and thinking {decision.thinking} kept")
        return _decision(band, refined, decision.tenant_name, reason)


def parse_policy(document: Any) -> DifficultyPolicy:
    """Validates a policy document (a dict, as loaded from YAML) into a DifficultyPolicy."""
    top = _mapping(document, "policy", _TOP_KEYS)
    if top.get("version") != POLICY_VERSION:
        raise ValueError(f"policy: version must be {POLICY_VERSION}, got {top.get('version')!r}")
    probe_weight = _number(top.get("probe_weight", 0.5), "policy.probe_weight")
    if not 0.0 <= probe_weight <= 1.0:
        raise ValueError(f"policy.probe_weight must be in [0, 1], got {probe_weight}")
    if "bands" not in top:
        raise ValueError("policy: 'bands' is required")
    bands = _parse_bands(top["bands"], "policy.bands")
    tenants = _mapping(top.get("tenants", {}), "policy.tenants", None)
    tenant_bands = {str(tenant_name): _parse_tenant(spec, bands, f"policy.tenants.{tenant_name}")
                    for tenant_name, spec in tenants.items()}
    return DifficultyPolicy(bands, tenant_bands, probe_weight)


def load_policy(path: str | pathlib.Path) -> DifficultyPolicy:
    """Reads a YAML policy file and validates it."""
    import yaml

    path = pathlib.Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read policy file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"policy file {path} is not valid YAML: {error}") from error
    try:
        return parse_policy(document)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _parse_tenant(spec: Any, default: tuple[Band, ...], where: str) -> tuple[Band, ...]:
    tenant = _mapping(spec, where, _TENANT_KEYS)
    bands = _parse_bands(tenant["bands"], f"{where}.bands") if "bands" in tenant else default
    tier_map = _mapping(tenant.get("tier_map", {}), f"{where}.tier_map", None)
    for source, target in tier_map.items():
        if not isinstance(target, str) or not target:
            raise ValueError(f"{where}.tier_map.{source}: expected a model name, got {target!r}")
    caps = _mapping(tenant.get("caps", {}), f"{where}.caps", _CAP_KEYS)
    limits = {key: _integer(value, f"{where}.caps.{key}") for key, value in caps.items()}
    if 0 in limits.values():
        raise ValueError(f"{where}.caps: every cap must be >= 1, got {limits}")
    return tuple(_apply_overrides(band, tier_map, limits) for band in bands)


def _apply_overrides(band: Band, tier_map: Mapping[str, str], limits: Mapping[str, int]) -> Band:
    num_samples = min(band.num_samples, limits.get("max_num_samples", band.num_samples))
    majority_m = min(band.majority_m, num_samples)
    selection = band.selection if num_samples > 1 else SelectionRule.FIRST_FINISHED
    thinking_budget = band.thinking_budget
    if thinking_budget is not None:
        thinking_budget = min(thinking_budget, limits.get("max_thinking_budget", thinking_budget))
    return replace(
        band, tier=tier_map.get(band.tier, band.tier), thinking_budget=thinking_budget,
        answer_budget=min(band.answer_budget, limits.get("max_answer_budget", band.answer_budget)),
        num_samples=num_samples, selection=selection,
        majority_m=1 if selection is SelectionRule.FIRST_FINISHED else majority_m)


def _parse_bands(raw: Any, where: str) -> tuple[Band, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: expected a non-empty list of bands")
    bands = tuple(_parse_band(item, f"{where}[{i}]") for i, item in enumerate(raw))
    ordered = sorted(bands, key=lambda b: b.low)
    if ordered[0].low != 0.0:
        raise ValueError(f"{where}: bands leave [0, {ordered[0].low}) uncovered")
    if ordered[-1].high != 1.0:
        raise ValueError(f"{where}: bands leave [{ordered[-1].high}, 1] uncovered")
    for left, right in zip(ordered, ordered[1:]):
        if right.low < left.high:
            raise ValueError(f"{where}: bands {_label(left)} and {_label(right)} overlap")
        if right.low > left.high:
            raise ValueError(f"{where}: gap [{left.high}, {right.low}) between bands "
                             f"{_label(left)} and {_label(right)}")
    return tuple(ordered)


def _parse_band(raw: Any, where: str) -> Band:
    band = _mapping(raw, where, _BAND_KEYS)
    missing = sorted(_BAND_KEYS - {"majority_m", "thinking_budget"} - set(band))
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    bounds = band["range"]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise ValueError(f"{where}.range: expected [low, high], got {bounds!r}")
    try:
        selection = SelectionRule(band["selection"])
    except ValueError:
        raise ValueError(f"{where}.selection: {band['selection']!r} is not one of "
                         f"{[rule.value for rule in SelectionRule]}") from None
    if not isinstance(band["thinking"], bool):
        raise ValueError(f"{where}.thinking: expected true or false, got {band['thinking']!r}")
    if not isinstance(band["tier"], str):
        raise ValueError(f"{where}.tier: expected a model name, got {band['tier']!r}")
    is_majority = selection is SelectionRule.MAJORITY_OF_FIRST_M
    if is_majority and "majority_m" not in band:
        raise ValueError(f"{where}: selection majority_of_first_m needs majority_m")
    values = dict(
        low=_number(bounds[0], f"{where}.range[0]"), high=_number(bounds[1], f"{where}.range[1]"),
        tier=band["tier"], thinking=band["thinking"],
        thinking_budget=_thinking_budget(band, where),
        answer_budget=_integer(band["answer_budget"], f"{where}.answer_budget"),
        temperature=_number(band["temperature"], f"{where}.temperature"),
        num_samples=_integer(band["num_samples"], f"{where}.num_samples"),
        selection=selection, majority_m=_integer(band.get("majority_m", 1), f"{where}.majority_m"))
    try:
        return Band(**values)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _mapping(raw: Any, where: str, allowed: set[str] | None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(map(str, raw)) - allowed) if allowed is not None else []
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed or ())}")
    return raw


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{where}: must be >= 0, got {value}")
    return value


def _thinking_budget(band: dict[str, Any], where: str) -> int | None:
    # Without thinking, the budget may be left out, null or 0: all mean "no thinking section".
    value = band.get("thinking_budget")
    if band["thinking"] is True:
        if value is None:
            raise ValueError(f"{where}: thinking is on, so thinking_budget (>= 1) is required")
        return _integer(value, f"{where}.thinking_budget")
    if value is None or (_integer(value, f"{where}.thinking_budget") == 0):
        return None
    raise ValueError(f"{where}: thinking_budget is {value} but thinking is off")


def _check_difficulty(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _same_settings(band: Band, decision: RoutingDecision) -> bool:
    return (band.tier, band.thinking, band.thinking_budget, band.answer_budget, band.temperature,
            band.num_samples, band.selection, band.majority_m) == (
        decision.tier, decision.thinking, decision.thinking_budget, decision.answer_budget,
        decision.temperature, decision.num_samples, decision.selection, decision.majority_m)


def _decision(band: Band, difficulty: float, tenant_name: str | None,
              reason: str) -> RoutingDecision:
    return RoutingDecision(difficulty, tenant_name, band.tier, band.thinking, band.thinking_budget,
                           band.answer_budget, band.temperature, band.num_samples, band.selection,
                           band.majority_m, reason)


def _distance(band: Band, difficulty: float) -> float:
    return 0.0 if band.contains(difficulty) else min(abs(band.low - difficulty),
                                                     abs(band.high - difficulty))


def _label(band: Band) -> str:
    return f"[{band.low:g}, {band.high:g})"


def _owner(policy: DifficultyPolicy, tenant_name: str | None) -> str:
    return f"tenant {tenant_name!r}" if tenant_name in policy.tenant_bands else "the default"

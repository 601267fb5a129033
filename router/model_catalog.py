"""The tiers this router serves: a tokenizer given at start, live while discovery finds workers.

A tier is served while at least one healthy decode worker announces its model (GetLoad's `model`)
and the router holds that model's tokenizer and chat template (`tandem router --tier NAME=FOLDER`
once per tier, or `--model FOLDER` for a single tier). A tier whose workers appear later is served
from then on, and one whose workers are all gone stops being listed. A model that workers announce but that has no
tokenizer here cannot be served: that is logged (WARNING, once per name) and counted in
`tandem_dropped_errors_total{component="router", kind="model_without_tokenizer"}`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from router.request_plan import ModelEntry
from tandem.telemetry.metrics import default_metrics

log = logging.getLogger(__name__)


def model_sources(model: str | None, model_name: str | None, tiers: list[str]) -> dict[str, str]:
    """Served name -> model source: one `--model FOLDER` (named by `--model-name`, else after the
    folder), or `--tier NAME=FOLDER` once per tier. Raises ValueError naming the flag."""
    if model is not None and tiers:
        raise ValueError("give either --model (one tier) or --tier NAME=FOLDER (per tier), not both")
    if model is not None:
        return {model_name or Path(model).name: model}
    if not tiers:
        raise ValueError("give --model FOLDER (one tier) or --tier NAME=FOLDER once per tier")
    if model_name is not None:
        raise ValueError("--model-name names the one --model FOLDER; --tier NAME=FOLDER names its own")
    sources: dict[str, str] = {}
    for value in tiers:
        name, _, source = value.partition("=")
        if not name or not source:
            raise ValueError(f"--tier {value!r}: expected NAME=FOLDER")
        if name in sources:
            raise ValueError(f"--tier: tier {name!r} is given twice")
        sources[name] = source
    return sources


class ModelCatalog(Mapping[str, ModelEntry]):
    """Served name -> ModelEntry for every tier that has both a tokenizer here and live workers."""

    def __init__(self, tokenizers: Mapping[str, object], pool, *,
                 price_per_1k_prompt_tokens: float = 0.0,
                 price_per_1k_completion_tokens: float = 0.0) -> None:
        self.tokenizers = dict(tokenizers)
        self._vocabulary_ids = {name: vocabulary_id(t) for name, t in self.tokenizers.items()}
        self.pool = pool
        self._prices = (price_per_1k_prompt_tokens, price_per_1k_completion_tokens)
        self._entries: dict[str, ModelEntry] = {}
        self._warned: set[str] = set()

    @property
    def configured(self) -> set[str]:
        """Every tier the router has a tokenizer for, served now or not."""
        return set(self.tokenizers)

    def __getitem__(self, name: str) -> ModelEntry:
        return self._served()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._served())

    def __len__(self) -> int:
        return len(self._served())

    def _served(self) -> dict[str, ModelEntry]:
        served = {}
        for name, load in sorted(self.pool.models().items()):
            tokenizer = self.tokenizers.get(name)
            if tokenizer is None:
                self._warn_without_tokenizer(name)
                continue
            entry = self._entries.get(name)
            if entry is None or (entry.max_context, entry.block_size) != (
                    load.max_context, load.layout.block_size):
                entry = ModelEntry(name, tokenizer, load.max_context, *self._prices,
                                   block_size=load.layout.block_size,
                                   vocabulary_id=self._vocabulary_ids[name])
                self._entries[name] = entry
            served[name] = entry
        return served

    def _warn_without_tokenizer(self, name: str) -> None:
        if name in self._warned:
            return
        self._warned.add(name)
        log.warning("workers serve model %r, but this router has no tokenizer for it (tiers: %s); "
                    "give it with --tier %s=FOLDER to serve it", name, sorted(self.tokenizers), name)
        default_metrics().dropped_errors.labels(component="router",
                                                kind="model_without_tokenizer").inc()



def vocabulary_id(tokenizer) -> str:
    """A hash of the tokenizer's full definition: equal ids read token ids as the same text."""
    return hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest()[:16]

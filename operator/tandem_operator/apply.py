"""Idempotent get-compare-patch of one object, with the last applied manifest as the merge base.

Each object carries the manifest the operator last applied (annotation `tandem.dev/last-applied`).
The patch is a three-way JSON merge patch: fields that differ from the live object are set,
fields the operator set before but no longer wants are removed (null), and fields that others
or the API server added (defaults, status) are left alone. An empty patch means nothing to do.
The patch carries the live resourceVersion, so a concurrent change answers 409 and the whole
read-compare-write runs again on fresh state.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any

from tandem_operator.kube import KubeClient, retry_on_conflict
from tandem_operator.naming import LAST_APPLIED


class ForeignObjectError(Exception):
    """An object with a name the operator needs is controlled by someone else."""


class Outcome(str, enum.Enum):
    """What applying one object did."""

    CREATED = "created"
    PATCHED = "patched"
    UNCHANGED = "unchanged"


async def apply_object(kube: KubeClient, desired: Mapping[str, Any],
                       live: Mapping[str, Any] | None,
                       initial: Mapping[str, Any] | None = None) -> tuple[Outcome, dict[str, Any]]:
    """Makes the cluster hold `desired`; `live` is the object as last listed (None: absent).
    `initial` holds fields set only when the object is created and owned by someone else after
    (the replicas an HPA scales): never patched, never removed, kept out of the last-applied."""
    desired = with_last_applied(desired)
    initial = initial or {}
    kind, meta = desired["kind"], desired["metadata"]
    listed = [live]  # the first attempt trusts the listing; retries read fresh state

    async def attempt() -> tuple[Outcome, dict[str, Any]]:
        current = listed.pop() if listed else await kube.get(kind, meta["namespace"], meta["name"])
        if current is None:
            # A 409 here means someone created it meanwhile: the retry compares and patches.
            return Outcome.CREATED, await kube.create(_merged(desired, initial))
        _check_not_foreign(current, desired)
        # Fields handed over to someone else are no longer the operator's to remove.
        patch = three_way_patch(_without(last_applied(current), initial), desired, current)
        if not patch:
            return Outcome.UNCHANGED, dict(current)
        version = current["metadata"].get("resourceVersion")
        if version:
            patch.setdefault("metadata", {})["resourceVersion"] = version
        return Outcome.PATCHED, await kube.patch(kind, meta["namespace"], meta["name"], patch)

    return await retry_on_conflict(attempt)


def _check_not_foreign(current: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
    # Objects without a controller are adopted; another controller's objects are never taken.
    owner_uid = desired["metadata"]["ownerReferences"][0]["uid"]
    for ref in current["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid") != owner_uid:
            raise ForeignObjectError(
                f"{desired['kind']} {desired['metadata']['name']} already exists and is "
                f"controlled by {ref.get('kind')} {ref.get('name')}")


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        inner = merged.get(key)
        merged[key] = (_merged(inner, value) if isinstance(inner, Mapping)
                       and isinstance(value, Mapping) else value)
    return merged


def _without(base: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    kept = {}
    for key, value in base.items():
        if key not in fields:
            kept[key] = value
        elif isinstance(value, Mapping) and isinstance(fields[key], Mapping):
            kept[key] = _without(value, fields[key])
    return kept


def with_last_applied(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest with its own JSON in the last-applied annotation."""
    manifest = json.loads(json.dumps(desired))
    annotations = manifest["metadata"].pop("annotations", {})
    annotations.pop(LAST_APPLIED, None)
    if annotations:
        manifest["metadata"]["annotations"] = annotations
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    manifest["metadata"].setdefault("annotations", {})[LAST_APPLIED] = text
    return manifest


def last_applied(live: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest the operator last applied to an object (empty when unknown or unreadable)."""
    text = (live.get("metadata", {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def three_way_patch(last: Mapping[str, Any], desired: Mapping[str, Any],
                    live: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns `live` into `desired` without touching foreign fields."""
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        have = live.get(key)
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            before = last.get(key)
            sub = three_way_patch(before if isinstance(before, Mapping) else {}, want, have)
            if sub:
                patch[key] = sub
        elif not is_subset(want, have):
            patch[key] = want
    for key in last:
        if key not in desired and key in live:
            patch[key] = None
    return patch


def is_subset(want: Any, have: Any) -> bool:
    """Whether `have` holds everything in `want`; extra keys in `have` (server defaults) are fine.
    Lists must have the same length and match item by item."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            key in have and is_subset(value, have[key]) for key, value in want.items())
    if isinstance(want, list):
        return (isinstance(have, list) and len(want) == len(have)
                and all(is_subset(a, b) for a, b in zip(want, have)))
    return want == have

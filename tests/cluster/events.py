"""Events the controllers post about objects (FailedScheduling, FailedMount, BackOff, ...).

Posting happens in the background and each (object, reason, message) once, so a condition that
persists across sync passes is one event, as `kubectl describe` would show it after aggregation.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aiohttp

from tests.cluster.api import EVENTS, Api, ApiError


class EventRecorder:
    """Posts Warning events once per object, reason and message."""

    def __init__(self, api: Api, component: str) -> None:
        self._api = api
        self._component = component
        self._seen: set[tuple[str, str, str]] = set()
        self._tasks: set[asyncio.Task] = set()
        self.posted: list[dict[str, Any]] = []

    def warn(self, obj: dict[str, Any], reason: str, message: str) -> None:
        """Records a Warning event about `obj` (once)."""
        meta = obj["metadata"]
        key = (meta.get("uid", ""), reason, message)
        if key in self._seen:
            return
        self._seen.add(key)
        event = {
            "apiVersion": "v1", "kind": "Event", "type": "Warning", "reason": reason,
            "message": message, "source": {"component": self._component},
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}",
                         "namespace": meta.get("namespace") or "default"},
            "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"),
                               "kind": obj.get("kind", "Pod"), "name": meta["name"],
                               "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        }
        self.posted.append(event)
        task = asyncio.get_running_loop().create_task(self._post(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, event: dict[str, Any]) -> None:
        # Events are best effort, as the kubelet's: a refused post, or one cut off by the API
        # going away at the end of a test, loses that event only.
        with contextlib.suppress(ApiError, aiohttp.ClientError):
            await self._api.create(EVENTS, event)

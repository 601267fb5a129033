"""Tenant authentication: API keys -> Tenant, loaded from a YAML/JSON file or a mounted Secret folder.

File shape (YAML or JSON; a folder holds any number of such files, e.g. a Kubernetes Secret
mounted as a volume, whose hidden `..data` entries are skipped):

    tenants:
      - name: acme
        api_keys: ["sk-acme-1"]             # plaintext keys, and/or
        api_key_sha256: ["9f86d08..."]      # hex SHA-256 of keys
        quota: {tokens_per_minute: 60000, burst_tokens: 20000, max_concurrent_requests: 8, weight: 1}
        policy: {allowed_models: [small], max_tokens: 1024, max_thinking_tokens: 512,
                 max_deadline_seconds: 60, max_cost: 0.5, max_samples: 4}

Keys are kept as SHA-256 digests and every lookup compares against all of them with
`hmac.compare_digest`, so neither a key's content nor its position leaks through timing.
Anonymous access (for local use) lets requests without a key in as the `anonymous` tenant; a
presented key that matches no tenant is still refused unless no tenants are configured at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import pathlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

import yaml

from router.errors import ErrorCode, RouterError
from tandem.policy.quota import TenantQuota

log = logging.getLogger(__name__)

ANONYMOUS_TENANT_NAME = "anonymous"


@dataclass(slots=True, frozen=True)
class TenantPolicy:
    """A tenant's overrides of the routing policy; None keeps the deployment's value."""

    allowed_models: frozenset[str] | None = None
    max_tokens: int | None = None
    max_thinking_tokens: int | None = None
    max_deadline_seconds: float | None = None
    max_cost: float | None = None
    max_samples: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_thinking_tokens", "max_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"TenantPolicy: {name} must be an integer >= 0, got {value!r}")
        for name in ("max_deadline_seconds", "max_cost"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"TenantPolicy: {name} must be a number > 0, got {value!r}")

    def allows_model(self, model: str) -> bool:
        """Whether the tenant may use this model (every model when no list is set)."""
        return self.allowed_models is None or model in self.allowed_models


@dataclass(slots=True, frozen=True)
class Tenant:
    """Who is calling: a name, quotas and policy overrides."""

    name: str
    quota: TenantQuota = field(default_factory=TenantQuota)
    policy: TenantPolicy = field(default_factory=TenantPolicy)
    is_anonymous: bool = False

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Tenant: name must be a non-empty string, got {self.name!r}")


def key_digest(api_key: str) -> bytes:
    """SHA-256 digest of an API key (what is stored and compared)."""
    return hashlib.sha256(api_key.encode("utf-8")).digest()


class Authenticator:
    """Maps API keys to tenants; reloads its key files when they change."""

    def __init__(self, keys: Mapping[str, Tenant] | None = None, *,
                 keys_path: str | os.PathLike | None = None, allow_anonymous: bool = False,
                 anonymous_tenant: Tenant | None = None) -> None:
        if keys is not None and keys_path is not None:
            raise ValueError("Authenticator: give either keys or keys_path, not both")
        if keys is None and keys_path is None and not allow_anonymous:
            raise ValueError("Authenticator: give API keys (keys or keys_path) or allow anonymous access")
        self.keys_path = pathlib.Path(keys_path) if keys_path is not None else None
        self.allow_anonymous = allow_anonymous
        self.anonymous_tenant = anonymous_tenant or Tenant(ANONYMOUS_TENANT_NAME, is_anonymous=True)
        self.last_reload_error: str | None = None
        self._fingerprint: tuple = ()
        self._entries = [(key_digest(key), tenant) for key, tenant in (keys or {}).items()]
        if self.keys_path is not None:
            self._fingerprint = _fingerprint(self.keys_path)
            self._entries = load_key_entries(self.keys_path)

    @property
    def tenants(self) -> list[Tenant]:
        """The configured tenants (each once)."""
        return list({tenant.name: tenant for _, tenant in self._entries}.values())

    def authenticate(self, api_key: str | None) -> Tenant:
        """The tenant owning this key; RouterError(UNAUTHENTICATED) for a missing or unknown key."""
        if not api_key:
            if self.allow_anonymous:
                return self.anonymous_tenant
            raise RouterError(ErrorCode.UNAUTHENTICATED,
                              "missing API key: send 'authorization: Bearer <key>' or 'x-api-key'")
        digest = key_digest(api_key)
        found: Tenant | None = None
        for entry_digest, tenant in self._entries:
            # No early exit: the time taken does not depend on which entry matches.
            if hmac.compare_digest(entry_digest, digest):
                found = tenant
        if found is not None:
            return found
        if self.allow_anonymous and not self._entries:
            return self.anonymous_tenant
        raise RouterError(ErrorCode.UNAUTHENTICATED, "invalid API key")

    def reload_if_changed(self) -> bool:
        """Reloads the key files if they changed on disk; keeps the old keys if the new ones are bad."""
        if self.keys_path is None:
            return False
        try:
            fingerprint = _fingerprint(self.keys_path)
            if fingerprint == self._fingerprint:
                return False
            entries = load_key_entries(self.keys_path)
        except (OSError, ValueError) as exc:
            if str(exc) != self.last_reload_error:
                log.error("keeping the previous API keys: cannot reload %s: %s", self.keys_path, exc)
            self.last_reload_error = str(exc)
            return False
        self._entries, self._fingerprint, self.last_reload_error = entries, fingerprint, None
        log.info("reloaded API keys from %s: %d tenants", self.keys_path, len(self.tenants))
        return True

    async def watch(self, interval_s: float = 2.0) -> None:
        """Polls the key files every interval_s seconds and reloads them on change (run as a task)."""
        if interval_s <= 0:
            raise ValueError(f"watch: interval_s must be > 0, got {interval_s}")
        while True:
            await asyncio.sleep(interval_s)
            self.reload_if_changed()


def api_key_from_pairs(pairs: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The API key in gRPC metadata or HTTP headers: `authorization: Bearer <key>` or `x-api-key`."""
    authorization = x_api_key = None
    for key, value in pairs:
        value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        lowered = key.lower()
        if lowered == "authorization":
            authorization = value
        elif lowered == "x-api-key":
            x_api_key = value
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RouterError(ErrorCode.UNAUTHENTICATED,
                              "malformed authorization header: expected 'Bearer <key>'")
        return token.strip()
    return x_api_key.strip() if x_api_key else None


def load_key_entries(path: pathlib.Path) -> list[tuple[bytes, Tenant]]:
    """Reads every key file at `path` (a file or a folder) into (key digest, tenant) entries."""
    files = _key_files(path)
    entries: list[tuple[bytes, Tenant]] = []
    names: set[str] = set()
    for file in files:
        try:
            document = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{file}: not valid YAML/JSON: {exc}") from exc
        for tenant, digests in _parse_document(document, file):
            if tenant.name in names:
                raise ValueError(f"{file}: tenant {tenant.name!r} is defined twice")
            names.add(tenant.name)
            entries += [(digest, tenant) for digest in digests]
    seen: set[bytes] = set()
    for digest, tenant in entries:
        if digest in seen:
            raise ValueError(f"{path}: an API key of tenant {tenant.name!r} is also used by another tenant")
        seen.add(digest)
    return entries


def _key_files(path: pathlib.Path) -> list[pathlib.Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"API keys path {path} is neither a file nor a folder")
    return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())


def _fingerprint(path: pathlib.Path) -> tuple:
    # Kubernetes swaps a symlink on Secret updates, so stat() the targets (inode, mtime, size).
    result = []
    for file in _key_files(path):
        stat = file.stat()
        result.append((file.name, stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(result)


def _parse_document(document: object, file: pathlib.Path) -> list[tuple[Tenant, list[bytes]]]:
    if document is None:
        return []
    if not isinstance(document, dict) or set(document) != {"tenants"}:
        raise ValueError(f"{file}: expected a mapping with one key 'tenants'")
    if not isinstance(document["tenants"], list):
        raise ValueError(f"{file}: 'tenants' must be a list")
    return [_parse_tenant(item, f"{file}: tenants[{i}]") for i, item in enumerate(document["tenants"])]


def _parse_tenant(item: object, where: str) -> tuple[Tenant, list[bytes]]:
    allowed = {"name", "api_keys", "api_key_sha256", "quota", "policy"}
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a mapping")
    unknown = set(item) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)} (allowed: {sorted(allowed)})")
    digests = [key_digest(_string(key, f"{where}.api_keys")) for key in item.get("api_keys") or []]
    for hexdigest in item.get("api_key_sha256") or []:
        try:
            digest = bytes.fromhex(_string(hexdigest, f"{where}.api_key_sha256"))
        except ValueError as exc:
            raise ValueError(f"{where}.api_key_sha256: not a hex digest: {hexdigest!r}") from exc
        if len(digest) != 32:
            raise ValueError(f"{where}.api_key_sha256: expected 64 hex characters, got {hexdigest!r}")
        digests.append(digest)
    if not digests:
        raise ValueError(f"{where}: a tenant needs at least one key in api_keys or api_key_sha256")
    try:
        quota = TenantQuota(**_fields_of(TenantQuota, item.get("quota") or {}, f"{where}.quota"))
        policy_fields = _fields_of(TenantPolicy, item.get("policy") or {}, f"{where}.policy")
        models = policy_fields.get("allowed_models")
        if models is not None:
            if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
                raise ValueError(f"allowed_models must be a list of model names, got {models!r}")
            policy_fields["allowed_models"] = frozenset(models)
        policy = TenantPolicy(**policy_fields)
        tenant = Tenant(_string(item.get("name"), f"{where}.name"), quota, policy)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return tenant, digests


def _fields_of(cls: type, values: object, where: str) -> dict:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping")
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)} (allowed: {sorted(names)})")
    return dict(values)


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a non-empty string, got {value!r}")
    return value

"""API keys -> tenants from files and Secret-shaped folders, hot reload, anonymous access, header parsing."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from router.auth import Authenticator, Tenant, api_key_from_pairs
from router.errors import ErrorCode, RouterError

TENANTS_YAML = """
tenants:
  - name: acme
    api_keys: [sk-acme-1, sk-acme-2]
    quota: {tokens_per_minute: 6000, max_concurrent_requests: 4}
    policy: {allowed_models: [small], max_tokens: 512}
  - name: beta
    api_key_sha256: [%s]
""" % hashlib.sha256(b"sk-beta").hexdigest()


def write(path, text: str) -> None:
    path.write_text(text)
    # Make every rewrite visible to the change check even within one clock tick.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_keys_file_maps_keys_to_tenants_with_quotas_and_policy(tmp_path):
    path = tmp_path / "tenants.yaml"
    write(path, TENANTS_YAML)
    auth = Authenticator(keys_path=path)
    acme = auth.authenticate("sk-acme-2")
    assert acme.name == "acme" and acme.quota.tokens_per_minute == 6000
    assert acme.quota.max_concurrent_requests == 4
    assert acme.policy.allows_model("small") and not acme.policy.allows_model("large")
    assert acme.policy.max_tokens == 512
    assert auth.authenticate("sk-beta").name == "beta"
    with pytest.raises(RouterError) as excinfo:
        auth.authenticate("sk-acme-3")
    assert excinfo.value.code is ErrorCode.UNAUTHENTICATED
    with pytest.raises(RouterError, match="missing API key"):
        auth.authenticate(None)


def test_secret_folder_with_kubernetes_symlinks_is_read_and_reloaded(tmp_path):
    # A mounted Secret: visible names link into ..data, which links to a timestamped folder.
    first = tmp_path / "..2026_01_01"
    first.mkdir()
    (first / "tenants.json").write_text(json.dumps({"tenants": [{"name": "acme", "api_keys": ["k1"]}]}))
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "tenants.json").symlink_to("..data/tenants.json")
    auth = Authenticator(keys_path=tmp_path)
    assert auth.authenticate("k1").name == "acme"
    assert not auth.reload_if_changed()

    second = tmp_path / "..2026_01_02"
    second.mkdir()
    (second / "tenants.json").write_text(json.dumps({"tenants": [{"name": "acme", "api_keys": ["k2"]}]}))
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert auth.reload_if_changed()
    assert auth.authenticate("k2").name == "acme"
    with pytest.raises(RouterError):
        auth.authenticate("k1")


def test_a_bad_reload_keeps_the_previous_keys(tmp_path):
    path = tmp_path / "tenants.yaml"
    write(path, TENANTS_YAML)
    auth = Authenticator(keys_path=path)
    write(path, "tenants:\n  - name: acme\n    api_keys: [x]\n    colour: blue\n")
    assert not auth.reload_if_changed()
    assert "colour" in auth.last_reload_error
    assert auth.authenticate("sk-acme-1").name == "acme"
    write(path, "tenants:\n  - name: acme\n    api_keys: [sk-new]\n")
    assert auth.reload_if_changed() and auth.last_reload_error is None
    assert auth.authenticate("sk-new").name == "acme"


@pytest.mark.parametrize("text, message", [
    ("tenants: {acme: 1}", "must be a list"),
    ("tenants:\n  - name: acme\n", "at least one key"),
    ("tenants:\n  - {name: a, api_keys: [k]}\n  - {name: b, api_keys: [k]}\n", "also used"),
    ("tenants:\n  - {name: a, api_keys: [k]}\n  - {name: a, api_keys: [j]}\n", "defined twice"),
    ("tenants:\n  - {name: a, api_keys: [k], quota: {tokens_per_minute: -1}}\n", "tokens_per_minute"),
    ("tenants:\n  - {name: a, api_key_sha256: [abcd]}\n", "64 hex"),
    ("tenants:\n  - {name: a, api_keys: [k], policy: {allowed_models: small}}\n", "allowed_models"),
    ("tenants: [unclosed", "not valid YAML"),
])
def test_bad_key_files_are_rejected_with_a_clear_error(tmp_path, text, message):
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        Authenticator(keys_path=path)


def test_anonymous_access_rules():
    local = Authenticator(allow_anonymous=True)
    assert local.authenticate(None).is_anonymous
    assert local.authenticate("EMPTY").is_anonymous  # no keys configured: any key is fine locally
    mixed = Authenticator({"sk-a": Tenant("a")}, allow_anonymous=True)
    assert mixed.authenticate(None).is_anonymous
    assert mixed.authenticate("sk-a").name == "a"
    with pytest.raises(RouterError):
        mixed.authenticate("sk-typo")
    with pytest.raises(ValueError, match="anonymous"):
        Authenticator()


def test_api_key_extraction_from_headers_and_metadata():
    assert api_key_from_pairs([("Authorization", "Bearer  sk-1 ")]) == "sk-1"
    assert api_key_from_pairs([("x-api-key", b"sk-2")]) == "sk-2"
    assert api_key_from_pairs([("user-agent", "x")]) is None
    with pytest.raises(RouterError, match="Bearer"):
        api_key_from_pairs([("authorization", "Basic abc")])

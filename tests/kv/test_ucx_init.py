"""UCX initialisation never falls back silently: a transport that cannot start is a clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.kv.peers import UCX_ENV

pytestmark = pytest.mark.slow

_PROGRAM = """
import asyncio
from tandem.kv import KVTransferConfig, KVTransportUnavailable, ensure_ucx

async def main():
    try:
        ensure_ucx(KVTransferConfig(ucx_options={"UCX_TLS": "rc"}))
    except KVTransportUnavailable as error:
        print("REFUSED:", error)
    else:
        print("STARTED")

asyncio.run(main())
"""


def test_unavailable_transport_raises_an_error_naming_ucx_and_the_setting():
    env = {**UCX_ENV, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, timeout=120)
    assert "REFUSED:" in result.stdout, result.stdout + result.stderr
    assert "UCX could not be initialised" in result.stdout
    assert "UCX_TLS=rc" in result.stdout

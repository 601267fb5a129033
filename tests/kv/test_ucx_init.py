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

async def attempt(config):
    try:
        ensure_ucx(config)
    except KVTransportUnavailable as error:
        print("REFUSED:", error)
    else:
        print("STARTED")

async def main():
    await attempt(KVTransferConfig(ucx_options={"UCX_TLS": "rc"}))
    await attempt(KVTransferConfig(ucx_options={"UCX_TLS": "tcp,self"}, required_transports=("rc",)))
    await attempt(KVTransferConfig(ucx_options={"UCX_TLS": "tcp,self"}, required_transports=("tcp",)))

asyncio.run(main())
"""


def test_unavailable_transport_raises_an_error_naming_ucx_and_the_setting():
    env = {**UCX_ENV, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("REFUSED", "STARTED"))]
    assert len(lines) == 3, result.stdout + result.stderr
    assert "UCX could not be initialised" in lines[0] and "UCX_TLS=rc" in lines[0]
    assert "without the required transports ['rc']" in lines[1] and "UCX_TLS=tcp,self" in lines[1]
    assert lines[2] == "STARTED"

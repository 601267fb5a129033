"""Fixtures for end-to-end tests on the emulated cluster: the cluster, the operator, a model claim.

The tests need root (network and mount namespaces); where namespaces cannot be made they skip
and say why. When a test fails, the tail of every pod's log is printed with the failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from tandem_operator.context import OperatorOptions
from tests.cluster.cluster import Cluster
from tests.cluster.network import unavailable_reason
from tests.cluster.operator import running_operator

NAMESPACE = "serving"
IMAGE = "registry.example.com/tandem:test"
REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "helm" / "tandem" / "crds" / "tandemdeployments.tandem.dev.yaml"


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Remembers whether the test body failed, for the log dump at teardown."""
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


@pytest.fixture(scope="session")
def namespaces_reason() -> str | None:
    """Why the emulated cluster cannot run here (None when it can)."""
    return unavailable_reason()


@pytest.fixture
async def cluster(request, tmp_path, namespaces_reason, monkeypatch) -> AsyncIterator[Cluster]:
    """A running emulated cluster with a kubeconfig for clients on this machine."""
    if namespaces_reason:
        pytest.skip(f"emulated cluster unavailable: {namespaces_reason}")
    async with Cluster.start(tmp_path / "cluster") as running:
        monkeypatch.setenv("KUBECONFIG", str(running.write_kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        try:
            yield running
        finally:
            if request.node.stash.get(FAILED, True):
                print(f"\npod logs (tails):\n{running.log_tails()}")


@pytest.fixture
async def operator(cluster: Cluster) -> AsyncIterator[None]:
    """The chart's CRD, then `tandem operator -n serving` (in-process), in the order Helm
    installs them: kopf resolves the resources it serves when it starts."""
    await cluster.apply(yaml.safe_load(CRD.read_text()))
    async with running_operator(OperatorOptions(namespaces=[NAMESPACE], worker_image=IMAGE,
                                                liveness_port=None)):
        yield

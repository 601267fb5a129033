"""A tier the router is configured for but whose workers are all gone for the moment (a pool being
replaced) is UNAVAILABLE, which clients retry; only a model the deployment never serves is NOT_FOUND."""

from __future__ import annotations

import pytest

from router.auth import Tenant
from router.core import RouterCore
from router.errors import ErrorCode, RouterError
from router.model_catalog import ModelCatalog
from router.routing_brain import RoutingBrain
from tandem.api.v1 import inference_pb2


class EmptyPool:
    """A worker pool whose every worker has left."""

    def models(self) -> dict:
        return {}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tandem.engine.tiny_model import make_tiny_model
    from tandem.engine.tokenizer import Tokenizer

    return Tokenizer.from_model_dir(make_tiny_model(tmp_path_factory.mktemp("tiny")))


async def _first_error(core: RouterCore, model: str) -> RouterError:
    request = inference_pb2.GenerateRequest(prompt="hello", model=model)
    with pytest.raises(RouterError) as caught:
        async for _ in core.generate(request, Tenant("acme")):
            pass
    return caught.value


async def test_a_configured_tier_without_workers_is_unavailable_and_an_unknown_model_not_found(tokenizer):
    catalog = ModelCatalog({"tiny": tokenizer}, EmptyPool())
    core = RouterCore(catalog, dispatcher=None, brain=RoutingBrain(default_model="tiny"))
    assert (await _first_error(core, "tiny")).code == ErrorCode.UNAVAILABLE
    assert (await _first_error(core, "no-such-model")).code == ErrorCode.NOT_FOUND

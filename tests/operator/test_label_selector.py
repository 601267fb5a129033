"""The emulated API server filters lists by label selector as a real one does."""

from __future__ import annotations

import pytest

from tests.cluster.label_selector import parse_selector, selects

LABELS = {"tandem.dev/deployment": "llama", "tandem.dev/role": "decode"}


@pytest.mark.parametrize(("selector", "expected"), [
    ("", True),
    ("tandem.dev/deployment=llama", True),
    ("tandem.dev/deployment==llama,tandem.dev/role=decode", True),
    ("tandem.dev/deployment=llama,tandem.dev/role=router", False),
    ("tandem.dev/role!=router", True),
    ("tandem.dev/role in (prefill, decode)", True),
    ("tandem.dev/role notin (prefill,decode)", False),
    ("tandem.dev/model", False),
    ("!tandem.dev/model", True),
])
def test_selectors_select_as_the_api_server_does(selector, expected):
    assert selects(parse_selector(selector), LABELS) is expected


def test_a_malformed_selector_is_an_error():
    with pytest.raises(ValueError):
        parse_selector("a in (b")

"""The three-way merge patch behind get-compare-patch."""

from __future__ import annotations

from tandem_operator.apply import is_subset, last_applied, three_way_patch, with_last_applied
from tandem_operator.naming import LAST_APPLIED

LAST = {"spec": {"replicas": 2, "nodeSelector": {"gpu": "h100", "zone": "a"}, "args": ["a"]}}


def test_nothing_to_do_when_live_holds_the_desired_state_plus_server_defaults():
    live = {"spec": {"replicas": 2, "nodeSelector": {"gpu": "h100", "zone": "a"}, "args": ["a"],
                     "revisionHistoryLimit": 10}, "status": {"readyReplicas": 2}}
    assert three_way_patch(LAST, LAST, live) == {}


def test_changes_are_set_and_fields_no_longer_wanted_are_removed():
    desired = {"spec": {"replicas": 3, "nodeSelector": {"gpu": "h100"}, "args": ["a", "b"]}}
    live = {"spec": {**LAST["spec"], "nodeSelector": {"gpu": "h100", "zone": "a", "theirs": "x"}}}
    assert three_way_patch(LAST, desired, live) == {
        "spec": {"replicas": 3, "nodeSelector": {"zone": None}, "args": ["a", "b"]}}


def test_drift_from_the_desired_state_is_corrected():
    live = {"spec": {**LAST["spec"], "replicas": 7}}
    assert three_way_patch(LAST, LAST, live) == {"spec": {"replicas": 2}}


def test_lists_match_item_by_item_with_extra_server_fields():
    want = [{"name": "grpc", "containerPort": 50051}]
    assert is_subset(want, [{"name": "grpc", "containerPort": 50051, "protocol": "TCP"}])
    assert not is_subset(want, [{"name": "grpc", "containerPort": 50052}])
    assert not is_subset(want, want + want)


def test_the_last_applied_annotation_round_trips():
    manifest = with_last_applied({"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}})
    assert LAST_APPLIED in manifest["metadata"]["annotations"]
    assert last_applied(manifest) == {"kind": "ConfigMap", "metadata": {"name": "x"},
                                      "data": {"a": "1"}}
    assert with_last_applied(manifest) == manifest  # stable: no annotation inside the annotation
    assert last_applied({"metadata": {"annotations": {LAST_APPLIED: "not json"}}}) == {}

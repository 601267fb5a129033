"""Selection of parallel samples: all, first finished, majority of the first m."""

from tandem.api.v1 import inference_pb2
from router.selection import Selection, normalize_answer

FIRST = inference_pb2.SELECTION_RULE_FIRST_FINISHED
MAJORITY = inference_pb2.SELECTION_RULE_MAJORITY_OF_FIRST_M


def test_no_rule_streams_every_sample():
    selection = Selection(inference_pb2.SELECTION_RULE_UNSPECIFIED, num_samples=4)
    assert selection.streams_every_sample


def test_a_single_sample_needs_no_selection_whatever_the_rule():
    assert Selection(MAJORITY, num_samples=1, m=1).streams_every_sample


def test_first_finished_wins_at_once():
    selection = Selection(FIRST, num_samples=3)
    assert not selection.is_decided
    selection.add_finished(2, "answer two", True)
    assert selection.is_decided
    assert selection.winner() == 2


def test_majority_waits_for_m_and_picks_the_earliest_holder_of_the_majority():
    selection = Selection(MAJORITY, num_samples=5, m=3)
    selection.add_finished(4, "Paris", True)
    selection.add_finished(1, "Lyon", True)
    assert not selection.is_decided
    selection.add_finished(0, "  paris ", True)
    assert selection.is_decided
    assert selection.winner() == 4


def test_majority_tie_goes_to_the_first_finished():
    selection = Selection(MAJORITY, num_samples=4, m=2)
    selection.add_finished(3, "yes", True)
    selection.add_finished(0, "no", True)
    assert selection.winner() == 3


def test_m_above_n_counts_every_sample():
    selection = Selection(MAJORITY, num_samples=2, m=5)
    assert selection.num_votes_needed == 2


def test_answers_compare_without_case_and_spacing():
    assert normalize_answer("  The   Answer\n") == normalize_answer("the answer")


def test_a_sample_cut_short_finishes_but_casts_no_vote():
    selection = Selection(MAJORITY, num_samples=3, m=2)
    selection.add_finished(0, "Lyon", False)
    selection.add_finished(1, "Paris", True)
    assert not selection.is_decided
    selection.add_finished(2, "Paris", True)
    assert selection.is_decided and selection.winner() == 1

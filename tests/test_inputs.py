"""The one parser of query flags, with each flag's meaning as its route uses it."""

from __future__ import annotations

import pytest

from herder.api.daemons import FOLLOW_ON
from herder.api.inputs import query_flag
from herder.errors import BadRequest


@pytest.mark.parametrize("raw", ["1", "true", "yes", "on", "ON", " True "])
def test_on_words_are_true(raw: str) -> None:
    # `?wipe=` (any of its values) and `?binary=` read flags this way.
    assert query_flag(raw) is True
    assert query_flag(raw, strict="binary") is True


@pytest.mark.parametrize("raw", [None, "", "0", "false", "no", "off"])
def test_off_words_and_absence_are_false(raw: str | None) -> None:
    assert query_flag(raw) is False
    assert query_flag(raw, strict="binary") is False


def test_other_words_are_false_or_refused_when_strict() -> None:
    assert query_flag("maybe") is False
    with pytest.raises(BadRequest, match="binary must be 1 or 0"):
        query_flag("maybe", strict="binary")


@pytest.mark.parametrize(("raw", "follows"), [("1", True), ("yes", True), ("on", False)])
def test_follow_takes_1_true_and_yes_but_not_on(raw: str, follows: bool) -> None:
    assert query_flag(raw, on=FOLLOW_ON) is follows

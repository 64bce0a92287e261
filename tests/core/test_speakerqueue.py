"""The speaker queue's policy on a hand-advanced clock."""

from __future__ import annotations

import pytest

from medcomm.core.speakerqueue import SpeakerLimits, SpeakerQueue
from medcomm.errors import UsageError

LIMITS = SpeakerLimits(least=1, most=3, calm_s=10.0, calm_max_s=40.0)


def test_it_grows_a_block_per_underrun_up_to_the_most() -> None:
    q = SpeakerQueue(LIMITS, now=0.0)
    assert q.blocks == 1
    assert [q.underrun(t, heard=True) for t in (1.0, 1.1, 1.2)] == [True, True, False]
    assert q.blocks == 3 and q.grown == 2


def test_an_underrun_before_any_far_end_audio_grows_nothing_but_restarts_the_calm() -> None:
    q = SpeakerQueue(LIMITS, now=0.0)
    assert not q.underrun(0.2, heard=False)
    assert q.blocks == 1 and q.grown == 0
    q.underrun(1.0, heard=True)
    assert not q.underrun(9.0, heard=False) and q.blocks == 2
    assert not q.poll(18.9), "the calm counts from the last underrun, heard or not"
    assert q.poll(19.0) and q.blocks == 1


def test_it_gives_a_block_back_per_calm_spell_down_to_the_least() -> None:
    q = SpeakerQueue(LIMITS, now=0.0)
    q.underrun(0.0, heard=True)
    q.underrun(0.1, heard=True)
    assert not q.poll(10.0)
    assert q.poll(10.1) and q.blocks == 2
    assert not q.poll(20.0)
    assert q.poll(20.1) and q.blocks == 1
    assert not q.poll(1000.0) and q.blocks == 1


def test_each_regrowth_after_a_shrink_doubles_the_calm_up_to_its_cap() -> None:
    """A PC busy all the time: a few clicks, then the queue stays long."""
    q = SpeakerQueue(LIMITS, now=0.0)
    t = 0.0
    calms = []
    for _ in range(4):
        q.underrun(t, heard=True)
        start = t
        while not q.poll(t):
            t += 0.5
        calms.append(t - start)
    assert calms == [10.0, 20.0, 40.0, 40.0]


def test_underruns_without_a_shrink_between_do_not_back_off() -> None:
    q = SpeakerQueue(LIMITS, now=0.0)
    q.underrun(0.0, heard=True)
    q.underrun(5.0, heard=True)  # grew twice in a row: no block was given back between
    assert not q.poll(14.9) and q.poll(15.0)


@pytest.mark.parametrize(
    "bad", [dict(least=0), dict(least=3, most=2), dict(calm_s=0.0), dict(calm_s=50.0, calm_max_s=40.0)]
)
def test_bad_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(UsageError):
        SpeakerLimits(**bad)  # type: ignore[arg-type]

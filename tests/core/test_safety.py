"""Safety numbers: the same on both sides, changed by any key change, readable."""

from __future__ import annotations

import os

import pytest

from medcomm.core import safety

A1, A2, B1 = os.urandom(32), os.urandom(32), os.urandom(32)


def test_both_members_see_the_same_sixty_digits() -> None:
    mine = safety.safety_number("amina", [A1], "dr.chen", [B1])
    theirs = safety.safety_number("dr.chen", [B1], "amina", [A1])
    assert mine == theirs and len(mine) == 60 and mine.isdigit()


def test_any_key_change_changes_the_number_and_order_does_not() -> None:
    base = safety.safety_number("amina", [A1], "dr.chen", [B1])
    assert safety.safety_number("amina", [A1, A2], "dr.chen", [B1]) != base  # a new device
    assert safety.safety_number("amina", [A2], "dr.chen", [B1]) != base  # a replaced device
    assert safety.safety_number("amina", [A1], "dr.chen", [os.urandom(32)]) != base
    assert safety.safety_number("amina", [A1, A2], "dr.chen", [B1]) == safety.safety_number(
        "amina", [A2, A1, A2], "dr.chen", [B1]
    )
    # Each member's half depends on their own name too: keys cannot be swapped between names.
    assert safety.safety_number("amina", [A1], "dr.chen", [B1]) != safety.safety_number(
        "amina", [B1], "dr.chen", [A1]
    )
    assert safety.keys_digest([A1, A2]) == safety.keys_digest([A2, A1])


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        safety.safety_number("amina", [A1], "amina", [A1])
    with pytest.raises(ValueError):
        safety.safety_number("amina", [], "dr.chen", [B1])
    with pytest.raises(ValueError):
        safety.keys_digest([b"short"])


def test_grouped_for_reading_aloud() -> None:
    text = safety.grouped("0123456789" * 6)
    lines = text.splitlines()
    assert len(lines) == 2 and all(len(line.split()) == 6 for line in lines)
    assert text.replace(" ", "").replace("\n", "") == "0123456789" * 6

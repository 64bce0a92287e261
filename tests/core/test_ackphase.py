"""The ACK-phase controller on a hand-advanced clock: when it moves our packet clock, by how
much, and that two ends running it settle instead of chasing each other."""

from __future__ import annotations

import dataclasses
import random

import pytest

from medcomm.core.ackphase import AckPhase, PhaseLimits
from medcomm.errors import UsageError

LIM = PhaseLimits()


def _feed(ph: AckPhase, phase_ms: float, start: float, packets: int, frame_ms: int = 60) -> float:
    """``packets`` of ours, each leaving ``phase_ms`` after the peer's; returns the clock."""
    t = start
    for _ in range(packets):
        ph.arrived(1, t)
        ph.sent(frame_ms, t + phase_ms / 1000)
        t += 0.06
    return t


def _ask(ph: AckPhase, t: float, *, pause: bool, until: float, phase_ms: float) -> tuple[int, float]:
    """Keep sending at ``phase_ms`` and asking until a move comes or ``until``; (move, when)."""
    while t < until:
        move = ph.shift_ms(60, t, pause=pause)
        if move:
            return move, t
        t = _feed(ph, phase_ms, t, 1)
    return 0, t


def test_a_late_phase_moves_the_clock_by_the_step_that_lands_nearest_the_middle() -> None:
    for phase, want in ((45.0, 20), (52.0, 20), (38.5, 20)):
        ph = AckPhase(rng=random.Random(1))
        t = _feed(ph, phase, 0.0, LIM.judged)
        move, at = _ask(ph, t, pause=True, until=10.0, phase_ms=phase)
        assert move == want, phase
        assert at <= t + LIM.defer_s + 2 * LIM.judged * 0.06  # the deferral, then a fresh window


def test_a_move_never_lands_past_zero_into_the_late_end() -> None:
    """With a round trip that puts the aim low (5 ms), a phase of 38 ms moves 20 ms (to 18),
    not 40: that would carry it below 0, to 58 ms, as late as a phase gets."""
    ph = AckPhase(dataclasses.replace(LIM, defer_s=0.0), random.Random(8))
    assert ph.aim(50.0) < 10.0
    t = _feed(ph, 38.5, 0.0, LIM.judged)
    ph.shift_ms(60, t, pause=True, rtt_ms=50.0)  # found due
    t = _feed(ph, 38.5, t, LIM.judged)
    assert ph.shift_ms(60, t, pause=True, rtt_ms=50.0) == 20


def test_a_phase_in_the_band_is_left_alone() -> None:
    for phase in (21.0, 30.0, 37.0):
        ph = AckPhase(rng=random.Random(2))
        t = _feed(ph, phase, 0.0, LIM.judged)
        assert _ask(ph, t, pause=True, until=30.0, phase_ms=phase)[0] == 0


def test_the_move_waits_for_a_pause_in_our_speech_but_not_for_ever() -> None:
    quick = dataclasses.replace(LIM, defer_s=0.0)
    ph = AckPhase(quick, random.Random(3))
    t = _feed(ph, 50.0, 0.0, LIM.judged)
    assert ph.shift_ms(60, t, pause=False) == 0  # found due: judged again on fresh packets
    move, at = _ask(ph, t, pause=False, until=30.0, phase_ms=50.0)
    assert move == 20
    assert at - t >= quick.pause_wait_s  # talking all along: it waited the whole wait
    ph2 = AckPhase(quick, random.Random(3))
    t = _feed(ph2, 50.0, 0.0, LIM.judged)
    ph2.shift_ms(60, t, pause=False)
    move, at = _ask(ph2, t, pause=True, until=30.0, phase_ms=50.0)
    assert move == 20 and at - t < 1.0  # a pause: at once (once the fresh window is in)


def test_a_jump_in_the_phase_stands_a_due_move_down() -> None:
    """The peer moved first: our phase jumped into the band, and we must not move too."""
    ph = AckPhase(dataclasses.replace(LIM, defer_s=2.0), random.Random(4))
    t = _feed(ph, 50.0, 0.0, LIM.judged)
    ph.shift_ms(60, t, pause=True)  # due, deferred
    t = _feed(ph, 50.0, t, 4)
    t = _feed(ph, 30.0, t, 2 * LIM.judged)  # the peer's clock moved 20 ms earlier
    assert _ask(ph, t, pause=True, until=t + 10.0, phase_ms=30.0)[0] == 0


def test_phases_are_circular() -> None:
    """59 ms and 1 ms are neighbours: packets straddling the period's end still read as late
    (near 60), not as an average near 30."""
    ph = AckPhase(dataclasses.replace(LIM, defer_s=0.0), random.Random(5))
    t = 0.0
    for k in range(LIM.judged):
        phase = 58.0 + (4.0 if k % 2 else 0.0)  # 58 and 62 (= 2 ms after the next arrival)
        ph.arrived(1, t)
        ph.sent(60, t + (phase % 60) / 1000 + (0.0 if phase < 60 else 0.06))
        if phase >= 60:
            ph.arrived(1, t + 0.06)  # the next one of the peer came first
        t += 0.06
    ph.shift_ms(60, t, pause=True)
    assert abs(ph.judged_ms - 60.0) < 3.0 or ph.judged_ms < 3.0


def test_only_the_standard_packet_and_a_single_stream_are_judged() -> None:
    ph = AckPhase(dataclasses.replace(LIM, defer_s=0.0), random.Random(6))
    t = _feed(ph, 50.0, 0.0, 2 * LIM.judged, frame_ms=120)
    assert ph.shift_ms(120, t, pause=True) == 0 and ph.shift_ms(60, t, pause=True) == 0
    for _ in range(2 * LIM.judged):  # two far ends talking: the kernel's ACKs follow either
        ph.arrived(1, t)
        ph.arrived(2, t + 0.01)
        ph.sent(60, t + 0.05)
        t += 0.06
    assert ph.shift_ms(60, t, pause=True) == 0


def test_moves_back_off() -> None:
    ph = AckPhase(dataclasses.replace(LIM, defer_s=0.0), random.Random(7))
    t, moves = 0.0, []
    while t < 40.0:  # a phase that a move never mends (the far end keeps it late)
        move = ph.shift_ms(60, t, pause=True)
        if move:
            ph.shifted(t)
            moves.append(t)
        t = _feed(ph, 50.0, t, 1)
    gaps = [b - a for a, b in zip(moves, moves[1:], strict=False)]
    assert len(moves) <= 7 and all(b >= a for a, b in zip(gaps, gaps[1:], strict=False))


def _two_ends(offset_ms: float, hop_ms: float, seed: int, seconds: float = 60.0) -> tuple[list[float], int]:
    """Both ends of a call sending 60 ms packets through a relay ``hop_ms`` away from each
    (so the peer's packet arrives 2 x hop_ms after it left), departures jittered by up to a
    5 ms tick; returns each end's final median phase and the moves made."""
    rng = random.Random(seed)
    ends = [AckPhase(rng=random.Random(seed * 2 + i)) for i in range(2)]
    nxt = [0.5, 0.5 + offset_ms / 1000]
    phases: list[list[float]] = [[], []]
    last_arrival: list[float | None] = [None, None]
    while min(nxt) < seconds:
        i = 0 if nxt[0] <= nxt[1] else 1
        t, me, other = nxt[i], ends[i], ends[1 - i]
        shift = me.shift_ms(60, t, pause=rng.random() < 0.05, rtt_ms=4 * hop_ms + rng.uniform(0.0, 2.0))
        if shift:
            me.shifted(t)
        leaves = t + rng.uniform(0.0, 0.005)
        me.sent(60 - shift, leaves)
        seen = last_arrival[i]
        if seen is not None and t > seconds - 5.0:
            phases[i].append((leaves - seen) * 1000 % 60)
        other.arrived(1, leaves + 2 * hop_ms / 1000)
        last_arrival[1 - i] = leaves + 2 * hop_ms / 1000
        nxt[i] = t + (60 - shift) / 1000
    finals = [sorted(p)[len(p) // 2] for p in phases]
    return finals, ends[0].shifts + ends[1].shifts


@pytest.mark.parametrize("hop_ms", [2.0, 3.0, 5.0, 6.0, 20.0])
def test_two_ends_settle_with_both_phases_in_the_band(hop_ms: float) -> None:
    """From every starting offset (5 ms apart) the two ends end with both phases under the
    kernel's 40 ms, after at most three moves between them: one end moves, the other stands
    down. Not every round trip allows it: moves come in 20 ms steps, and where the band both
    phases must share is narrower than a step and the tick's wobble (round trips near 0 and
    near 48 ms), an end is left at an edge and the backoff keeps the moves few."""
    for offset in range(0, 60, 5):
        finals, moves = _two_ends(offset, hop_ms, seed=offset)
        assert max(finals) < 40.0, (offset, finals)
        assert moves <= 3, (offset, moves)


def test_the_aim_leaves_both_ends_room_for_the_round_trip() -> None:
    ph = AckPhase()
    assert ph.aim(None) == LIM.aim_ms
    for rtt in (0.0, 10.0, 25.0, 40.0, 55.0, 70.0, 130.0):
        aim = ph.aim(rtt)
        peer = (-rtt - aim) % 60
        assert 0 <= aim < 40 and 0 <= peer < 40, (rtt, aim, peer)


def test_limits_are_checked() -> None:
    with pytest.raises(UsageError):
        PhaseLimits(late_ms=70.0)
    with pytest.raises(UsageError):
        PhaseLimits(grain_ms=0)
    with pytest.raises(UsageError):
        PhaseLimits(defer_s=-1.0)

"""Tests for medcomm.server.auth: challenge signatures and the failed-login throttle."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from medcomm.core.wire import auth_message
from medcomm.limits import RELAY
from medcomm.server.auth import FailureThrottle, new_nonce, verify

NONCE = bytes(range(32))


@pytest.fixture
def key():
    return SigningKey(b"\x11" * 32)


def sign(key, nonce=NONCE, purpose=b"auth"):
    return key.sign(auth_message(nonce, purpose)).signature


def pub(key):
    return bytes(key.verify_key)


# --- verify -----------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", [b"auth", b"register"])
def test_verify_accepts_a_correct_signature(key, purpose):
    assert verify(pub(key), NONCE, sign(key, purpose=purpose), purpose) is True


def test_verify_accepts_fresh_keys_and_nonces():
    for _ in range(3):
        k, nonce = SigningKey.generate(), new_nonce()
        assert verify(pub(k), nonce, sign(k, nonce), b"auth")


def test_verify_refuses_the_wrong_purpose(key):
    assert verify(pub(key), NONCE, sign(key, purpose=b"register"), b"auth") is False
    assert verify(pub(key), NONCE, sign(key, purpose=b"auth"), b"register") is False


def test_verify_refuses_the_wrong_nonce(key):
    other = bytes([NONCE[0] ^ 1]) + NONCE[1:]
    assert verify(pub(key), other, sign(key), b"auth") is False
    assert verify(pub(key), NONCE[:-1], sign(key), b"auth") is False


def test_verify_refuses_a_signature_without_domain_separation(key):
    assert verify(pub(key), NONCE, key.sign(NONCE).signature, b"auth") is False


def test_verify_refuses_another_keys_signature(key):
    other = SigningKey(b"\x22" * 32)
    assert verify(pub(key), NONCE, sign(other), b"auth") is False
    assert verify(pub(other), NONCE, sign(key), b"auth") is False


@pytest.mark.parametrize("index", [0, 1, 31, 32, 33, 63])
@pytest.mark.parametrize("bit", [0, 7])
def test_verify_refuses_a_tampered_signature(key, index, bit):
    sig = bytearray(sign(key))
    sig[index] ^= 1 << bit
    assert verify(pub(key), NONCE, bytes(sig), b"auth") is False


@pytest.mark.parametrize("sig", [b"", b"\x00" * 63, b"\x00" * 64, b"\x00" * 65, None, "x" * 64], ids=repr)
def test_verify_refuses_malformed_signatures(key, sig):
    assert verify(pub(key), NONCE, sig, b"auth") is False


def test_verify_refuses_a_truncated_or_extended_signature(key):
    good = sign(key)
    assert verify(pub(key), NONCE, good[:-1], b"auth") is False
    assert verify(pub(key), NONCE, good + b"\x00", b"auth") is False


@pytest.mark.parametrize(
    "pubkey",
    [b"", b"\x01" * 31, b"\x01" * 33, b"\xff" * 32, b"\x00" * 32, None, "k" * 32, 12345],
    ids=repr,
)
def test_verify_refuses_garbage_keys(key, pubkey):
    assert verify(pubkey, NONCE, sign(key), b"auth") is False


def test_new_nonce_is_32_fresh_bytes():
    nonces = {new_nonce() for _ in range(20)}
    assert len(nonces) == 20
    assert all(type(n) is bytes and len(n) == 32 for n in nonces)


# --- FailureThrottle --------------------------------------------------------------------


def fail_times(throttle, addr, n, now=0.0):
    """Run n failed logins the way the relay does: ask the delay, then record the failure."""
    delays = []
    for _ in range(n):
        delays.append(throttle.delay(addr, now))
        throttle.failed(addr, now)
    return delays


def test_defaults_match_relay_limits():
    t = FailureThrottle()
    assert (t.free, t.delay_max) == (RELAY.login_failures, RELAY.login_delay_max)


def test_first_free_failures_are_not_delayed_then_doubling_up_to_the_cap():
    t = FailureThrottle(free=5, delay_max=8.0)
    assert fail_times(t, "1.2.3.4", 13) == [0.0] * 5 + [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_cap_is_delay_max():
    t = FailureThrottle(free=2, delay_max=1.0)
    assert fail_times(t, "a", 8) == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    t = FailureThrottle(free=2, delay_max=0.3)
    assert max(fail_times(t, "a", 50)) == 0.3


def test_many_failures_do_not_overflow():
    t = FailureThrottle(free=1, delay_max=8.0)
    assert fail_times(t, "a", 2000)[-1] == 8.0


def test_asking_the_delay_does_not_count_as_a_failure():
    t = FailureThrottle(free=2)
    for _ in range(10):
        assert t.delay("a", 0.0) == 0.0
    fail_times(t, "a", 2)
    assert [t.delay("a", 1.0) for _ in range(5)] == [0.25] * 5


def test_addresses_are_counted_separately():
    t = FailureThrottle(free=1)
    fail_times(t, "a", 3)
    assert t.delay("a", 0.0) == 1.0
    assert t.delay("b", 0.0) == 0.0
    assert fail_times(t, "b", 2) == [0.0, 0.25]
    assert t.delay("a", 0.0) == 1.0


def test_failures_are_forgotten_after_forget_seconds():
    t = FailureThrottle(free=1, forget=600.0)
    fail_times(t, "a", 3, now=100.0)
    assert t.delay("a", 100.0 + 600.0) == 1.0  # not yet: exactly forget seconds later
    assert t.delay("a", 100.0 + 600.5) == 0.0
    # and stays forgotten: the next failure starts counting again from one
    assert fail_times(t, "a", 2, now=701.0) == [0.0, 0.25]


def test_forget_counts_from_the_last_failure():
    t = FailureThrottle(free=1, forget=600.0)
    now = 0.0
    for _ in range(4):  # failures 500 s apart never let the count decay
        t.failed("a", now)
        now += 500.0
    assert t.delay("a", now) == 2.0


def test_failure_after_a_quiet_period_restarts_the_count():
    t = FailureThrottle(free=1, forget=10.0)
    fail_times(t, "a", 5, now=0.0)
    t.failed("a", 11.0)  # failed() itself notices the decay, without a delay() call first
    assert t.delay("a", 11.0) == 0.25


def test_success_resets_the_count():
    t = FailureThrottle(free=2)
    fail_times(t, "a", 6)
    assert t.delay("a", 0.0) > 0
    t.succeeded("a")
    assert t.delay("a", 0.0) == 0.0
    assert fail_times(t, "a", 3) == [0.0, 0.0, 0.25]
    t.succeeded("never-seen")  # harmless


def test_number_of_addresses_is_bounded():
    t = FailureThrottle(free=1, max_addresses=3)
    for i in range(50):
        t.failed(f"10.0.0.{i}", float(i))
        assert len(t._seen) <= 3
    remembered = [i for i in range(50) if t.delay(f"10.0.0.{i}", 50.0) > 0]
    assert len(remembered) == 3
    assert 49 in remembered  # the newest failing address is kept


def test_known_address_is_not_evicted_when_full():
    t = FailureThrottle(free=1, max_addresses=2)
    t.failed("a", 0.0)
    t.failed("b", 0.0)
    t.failed("a", 1.0)  # already tracked: no eviction needed
    assert t.delay("a", 1.0) == 0.5
    assert t.delay("b", 1.0) == 0.25


def test_replay_cache_admits_a_nonce_once_and_forgets_it_after_its_lifetime():
    from medcomm.server.auth import ReplayCache

    cache = ReplayCache(window=300.0, capacity=3)
    assert cache.fresh(1000.0, 1299.0) and cache.fresh(1000.0, 701.0)
    assert not cache.fresh(1000.0, 1301.0) and not cache.fresh(1000.0, 699.0)
    assert cache.admit(b"a", 0.0)
    assert not cache.admit(b"a", 10.0)  # replay
    assert cache.admit(b"b", 1.0) and cache.admit(b"c", 2.0)
    assert not cache.admit(b"d", 3.0)  # full: refuse (the device takes a challenge instead)
    assert len(cache) == 3
    assert cache.admit(b"d", 600.5)  # a's lifetime (2 windows) is over: room again
    assert len(cache) == 3
    assert not cache.admit(b"b", 600.5)  # b still remembered until 601
    assert cache.admit(b"b", 601.5)


# --- AttemptWindow (enrolment rate) ---------------------------------------------------------


def test_attempt_window_defaults_match_relay_limits():
    from medcomm.server.auth import AttemptWindow

    w = AttemptWindow()
    assert (w.limit, w.window) == (RELAY.enrol_attempts, RELAY.enrol_window)


def test_attempts_within_the_window_are_counted_and_the_wait_is_exact():
    from medcomm.server.auth import AttemptWindow

    w = AttemptWindow(limit=3, window=60.0)
    assert [w.attempt("a", t) for t in (0.0, 10.0, 20.0)] == [0.0, 0.0, 0.0]
    assert w.attempt("a", 30.0) == 30.0  # the first attempt leaves the window at 60
    assert w.attempt("a", 59.5) == 0.5  # a refused attempt is not recorded: the wait only shrinks
    assert w.attempt("a", 60.0) == 0.0  # the one at 0 has left; this one takes its place
    assert w.attempt("a", 61.0) == 9.0  # now the one at 10 is the oldest
    assert w.attempt("b", 61.0) == 0.0  # addresses are counted separately


def test_attempt_window_is_a_sliding_window_not_a_fixed_minute():
    from medcomm.server.auth import AttemptWindow

    w = AttemptWindow(limit=2, window=60.0)
    assert w.attempt("a", 59.0) == 0.0 and w.attempt("a", 59.9) == 0.0
    assert w.attempt("a", 61.0) > 0  # a new calendar minute does not reset it
    assert w.attempt("a", 119.0) == 0.0


def test_attempt_window_remembers_a_bounded_number_of_addresses_and_times():
    from medcomm.server.auth import AttemptWindow

    w = AttemptWindow(limit=2, window=60.0, max_addresses=3)
    for i in range(50):
        w.attempt(f"10.0.0.{i}", float(i))
        assert len(w._times) <= 3
    for _ in range(100):
        w.attempt("x", 100.0)
    assert all(len(times) <= 2 for times in w._times.values())
    assert w.attempt("10.0.0.49", 100.0) == 0.0  # the newest kept; the stalest forgotten


# --- AddressGate (connections per address) --------------------------------------------------


def test_address_gate_defaults_match_relay_limits():
    from medcomm.server.auth import AddressGate

    g = AddressGate()
    assert (g.max_open, g.max_pending) == (RELAY.max_per_address, RELAY.max_pending_per_address)
    assert RELAY.max_pending_per_address < RELAY.max_per_address


def test_pending_connections_are_bounded_then_refused_then_dropped():
    from medcomm.server.auth import AddressGate

    g = AddressGate(max_open=100, max_pending=2)
    assert [g.arrive("a")[0] for _ in range(2)] == ["admit", "admit"]
    verdict, why = g.arrive("a")
    assert verdict == "refuse" and "authenticating" in why and "limit 2" in why
    assert g.arrive("a")[0] == "refuse"
    assert g.arrive("a")[0] == "drop"  # as many waiting to be refused as may wait to sign in
    assert g.counts("a") == (2, 2, 2)
    assert g.arrive("b")[0] == "admit"  # another address is not affected
    g.authenticated("a")
    assert g.arrive("a")[0] == "admit"  # one signed in: room for one more to wait
    assert g.counts("a") == (3, 2, 2)


def test_open_connections_are_bounded_per_address():
    from medcomm.server.auth import AddressGate

    g = AddressGate(max_open=3, max_pending=3)
    for _ in range(3):
        assert g.arrive("a")[0] == "admit"
        g.authenticated("a")
    verdict, why = g.arrive("a")
    assert verdict == "refuse" and "too many connections from your address" in why and "limit 3" in why
    g.leave("a", "admit", authenticated=True)
    assert g.arrive("a")[0] == "admit"


def test_every_leave_gives_back_exactly_what_arrive_took():
    from medcomm.server.auth import AddressGate

    g = AddressGate(max_open=4, max_pending=2)
    taken = [g.arrive("a")[0] for _ in range(6)]
    assert taken == ["admit", "admit", "refuse", "refuse", "drop", "drop"]
    g.authenticated("a")
    g.leave("a", "admit", authenticated=True)
    g.leave("a", "admit", authenticated=False)
    g.leave("a", "refuse", authenticated=False)
    g.leave("a", "refuse", authenticated=False)
    for verdict in ("drop", "drop"):
        g.leave("a", verdict, authenticated=False)  # a dropped connection took nothing
    assert g.counts("a") == (0, 0, 0)
    assert len(g) == 0  # nothing is kept for an address without connections


def test_address_gate_holds_only_addresses_with_connections():
    from medcomm.server.auth import AddressGate

    g = AddressGate(max_open=2, max_pending=1)
    for i in range(1000):
        addr = f"10.0.{i // 256}.{i % 256}"
        assert g.arrive(addr)[0] == "admit"
        g.leave(addr, "admit", authenticated=False)
    assert len(g) == 0

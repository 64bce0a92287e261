"""End-to-end encryption in the local store: sealed as queued, opened as received, locked
until the key comes, and what a relay could do to the bodies (replay, tamper, strip, move)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from medcomm.adapters.keyring import LOCKED
from medcomm.adapters.localstore import LocalStore
from medcomm.core import e2e, wire
from medcomm.core.delivery import OutItem

C = "k7m2qd"
AMINA = e2e.Identity("amina", b"\x01" * 32)
CHEN = e2e.Identity("dr.chen", b"\x02" * 32)
OSEI = e2e.Identity("dr.osei", b"\x03" * 32)
TEXT = wire.KINDS["text"]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[LocalStore, LocalStore]]:
    a = LocalStore(tmp_path / "amina", AMINA)
    b = LocalStore(tmp_path / "chen", CHEN)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def queue(store: LocalStore, text: str, kind: int = TEXT) -> OutItem:
    item = OutItem(secrets.token_bytes(16), C, kind, text.encode())
    store.enqueue(item)
    return store.wire_item(item)


def deliver(store: LocalStore, item: OutItem, seq: int, sender: str = "amina") -> None:
    msg = wire.Msg(C, seq, item.cid, sender, 1_700_000_000_000 + seq, item.kind, item.body)
    store.add_messages([(msg, seq)])


def key_message(maker: e2e.Identity, maker_store: LocalStore, to: list[e2e.Identity]) -> OutItem:
    ring = maker_store.keyring
    assert ring is not None
    with maker_store.db:
        key_id, key = ring.current(C)
    shared = e2e.SharedKey(maker.name, key_id, key, maker.public)
    (body,) = e2e.bundle(maker, C, [shared], [t.public for t in to])
    return OutItem(secrets.token_bytes(16), C, wire.KINDS["key"], body)


def shown(store: LocalStore) -> list[tuple[str, str]]:
    return [(line.kind, line.text) for line in store.history(C, "dr.chen", queued=False)]


def test_what_is_queued_goes_sealed_and_stays_readable_here(stores: tuple[LocalStore, LocalStore]) -> None:
    amina, _ = stores
    item = queue(amina, "Temp 39.2 C")
    assert e2e.is_sealed(item.body) and b"Temp" not in item.body
    assert amina.outbox() == [item]
    assert [line.text for line in amina.history(C, "amina")] == ["Temp 39.2 C"]  # queued, in the clear
    amina.acked(item.cid, C, 2, 1, "amina", 2)
    assert [(line.text, line.state) for line in amina.history(C, "amina")] == [("Temp 39.2 C", "stored")]


def test_a_client_id_is_sealed_once(stores: tuple[LocalStore, LocalStore]) -> None:
    """The client id is the nonce: queuing the same id again (a retried command) keeps the
    first sealing rather than encrypting another body under the same nonce."""
    amina, _ = stores
    item = OutItem(secrets.token_bytes(16), C, TEXT, b"first")
    amina.enqueue(item)
    amina.enqueue(OutItem(item.cid, C, TEXT, b"other"))
    assert len(amina.outbox()) == 1 and amina.wire_item(item) == amina.outbox()[0]


def test_a_message_waits_locked_then_opens_in_place(stores: tuple[LocalStore, LocalStore]) -> None:
    amina, chen = stores
    item = queue(amina, "Mild indrawing, drinking poorly.")
    deliver(chen, item, 2)
    assert shown(chen) == [("locked", "(encrypted: waiting for the sender's key)")]
    assert chen.keyring is not None
    with chen.db:  # chen knew amina by her old device; she has a new one since
        chen.keyring.set_devices({"amina": [OSEI.public]})
    keys = key_message(AMINA, amina, [CHEN])
    deliver(chen, keys, 3)  # amina's new device is not yet known to be hers: the box waits
    assert shown(chen)[0][0] == "locked"
    assert chen.keyring is not None and chen.keyring.unknown_senders() == {"amina"}
    with chen.db:
        assert chen.keyring.open_bundles() == 0  # still unknown, still waiting
    with chen.db:
        chen.keyring.set_devices({"amina": [AMINA.public]})
        assert chen.keyring.open_bundles() == 1
    assert shown(chen) == [("text", "Mild indrawing, drinking poorly.")]
    assert chen.keyring.opened == 1


def test_a_senders_first_device_is_taken_on_first_use_unless_verified(
    stores: tuple[LocalStore, LocalStore],
) -> None:
    amina, chen = stores
    assert chen.keyring is not None
    chen.keyring.verified_keys = lambda user: (OSEI.public,) if user == "amina" else None
    item = queue(amina, "Refer now.")
    deliver(chen, item, 2)
    deliver(chen, key_message(AMINA, amina, [CHEN]), 3)  # verified with another device: refused
    assert shown(chen)[0][0] == "locked"
    chen.keyring.verified_keys = None  # never verified: the first device seen is hers
    with chen.db:
        assert chen.keyring.open_bundles() == 1
    assert shown(chen) == [("text", "Refer now.")] and chen.keyring.devices("amina") == [AMINA.public]


def test_with_the_key_first_a_message_opens_as_it_arrives(stores: tuple[LocalStore, LocalStore]) -> None:
    amina, chen = stores
    assert chen.keyring is not None
    with chen.db:
        chen.keyring.set_devices({"amina": [AMINA.public]})
    item = queue(amina, "Weight 19 kg.")
    deliver(chen, key_message(AMINA, amina, [CHEN]), 2)
    deliver(chen, item, 3)
    assert shown(chen) == [("text", "Weight 19 kg.")]
    assert chen.last_seq(C) == 3 and chen.cursors()[C] == 3  # the key message moved the cursor, unseen


def _ready(stores: tuple[LocalStore, LocalStore]) -> tuple[LocalStore, LocalStore]:
    amina, chen = stores
    assert chen.keyring is not None
    with chen.db:
        chen.keyring.set_devices({"amina": [AMINA.public]})
    deliver(chen, key_message(AMINA, amina, [CHEN]), 2)
    return amina, chen


def test_a_replayed_message_is_dropped(stores: tuple[LocalStore, LocalStore]) -> None:
    amina, chen = _ready(stores)
    item = queue(amina, "Refer now.")
    deliver(chen, item, 3)
    deliver(chen, item, 4)  # the same bytes again under a new seq
    assert shown(chen) == [("text", "Refer now.")]
    assert chen.cursors()[C] == 4


def test_a_changed_body_is_shown_as_dropped_never_in_part(stores: tuple[LocalStore, LocalStore]) -> None:
    amina, chen = _ready(stores)
    item = queue(amina, "Give 250 mg.")
    bad = bytearray(item.body)
    bad[8] ^= 0x04
    deliver(chen, OutItem(item.cid, C, TEXT, bytes(bad)), 3)
    assert shown(chen) == [("locked", "(dropped: this message failed its integrity check)")]


@pytest.mark.parametrize("change", ["unsealed", "relabelled", "other sender"])
def test_bodies_a_relay_could_forge_do_not_show(stores: tuple[LocalStore, LocalStore], change: str) -> None:
    amina, chen = _ready(stores)
    item = queue(amina, "Give 250 mg.")
    if change == "unsealed":  # a plain body where a sealed one belongs
        deliver(chen, OutItem(item.cid, C, TEXT, b"Give 2500 mg."), 3)
    elif change == "relabelled":  # the text passed off as a case card change
        deliver(chen, OutItem(item.cid, C, wire.KINDS["case"], item.body), 3)
    else:  # the key is amina's; the message claimed for dr.osei (who has no key here): waits
        deliver(chen, item, 3, sender="dr.osei")
    assert len(shown(chen)) == 1 and shown(chen)[0][0] == "locked"
    assert "250" not in shown(chen)[0][1]


def test_a_key_from_a_device_not_the_senders_is_not_taken(stores: tuple[LocalStore, LocalStore]) -> None:
    """dr.osei's device makes a box claiming to carry amina's key: the box names its maker,
    which is not one of the sender's devices, so it is never opened."""
    amina, chen = stores
    assert chen.keyring is not None
    with chen.db:
        chen.keyring.set_devices({"amina": [AMINA.public], "dr.osei": [OSEI.public]})
    fake = key_message(OSEI, amina, [CHEN])  # amina's key id and key, boxed by osei's device
    deliver(chen, fake, 2, sender="amina")
    assert chen.keyring.key(C, "amina", e2e.key_id_of(queue(amina, "x").body)) is None
    assert chen.keyring.unknown_senders() == {"amina"}
    with chen.db:  # the relay, asked again, still does not list that device as amina's: dropped
        chen.keyring.open_bundles(give_up=True)
    assert chen.keyring.unknown_senders() == set()


def test_a_forwarded_false_key_gives_way_to_the_real_one(stores: tuple[LocalStore, LocalStore]) -> None:
    amina, chen = stores
    assert chen.keyring is not None and amina.keyring is not None
    with chen.db:
        chen.keyring.set_devices({"amina": [AMINA.public], "dr.osei": [OSEI.public]})
    item = queue(amina, "BP 150/100.")
    deliver(chen, item, 2)
    key_id = e2e.key_id_of(item.body)
    false = e2e.SharedKey("amina", key_id, secrets.token_bytes(32), OSEI.public)
    (body,) = e2e.bundle(OSEI, C, [false], [CHEN.public])
    deliver(chen, OutItem(secrets.token_bytes(16), C, wire.KINDS["key"], body), 3, sender="dr.osei")
    assert shown(chen)[0][0] == "locked" and chen.keyring.key(C, "amina", key_id) is None  # dropped
    deliver(chen, key_message(AMINA, amina, [CHEN]), 4)
    assert shown(chen) == [("text", "BP 150/100.")]


def test_after_a_removal_the_next_message_has_a_new_key(stores: tuple[LocalStore, LocalStore]) -> None:
    amina, chen = stores
    before = e2e.key_id_of(queue(amina, "one").body)
    assert e2e.key_id_of(queue(amina, "two").body) == before
    event = msgpack.packb({"event": "remove", "member": "dr.osei"})
    note = wire.Msg(C, 5, secrets.token_bytes(16), "amina", 1, wire.KINDS["system"], event)
    amina.add_messages([(note, 5)])
    after = e2e.key_id_of(queue(amina, "three").body)
    assert after != before
    assert [line.text for line in amina.history(C, "amina")][0] == "removed dr.osei"


def test_a_store_without_an_identity_keeps_bodies_plain(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "plain")
    item = OutItem(secrets.token_bytes(16), C, TEXT, b"hello")
    store.enqueue(item)
    assert store.outbox() == [item] and store.keyring is None
    store.close()


def test_locked_is_no_wire_kind() -> None:
    assert LOCKED not in wire.KIND_NAMES

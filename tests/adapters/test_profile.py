"""Profiles: where they live, the private key file, URL checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medcomm.adapters.profile import (
    Profile,
    check_relay_url,
    config_dir,
    load_or_create_seed,
    load_profile,
    save_profile,
)
from medcomm.errors import ProfileError, UsageError


def test_medcomm_home_overrides_platform_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCOMM_HOME", str(tmp_path / "h"))
    assert config_dir() == tmp_path / "h"


def test_seed_is_created_once_private_and_reused(tmp_path: Path) -> None:
    seed = load_or_create_seed(tmp_path)
    assert len(seed) == 32 and load_or_create_seed(tmp_path) == seed
    mode = stat.S_IMODE(os.stat(tmp_path / "device.key").st_mode)
    assert mode == 0o600


def test_damaged_key_and_missing_profile_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="medcomm login"):
        load_profile(tmp_path)
    (tmp_path / "device.key").write_bytes(b"short")
    with pytest.raises(ProfileError, match="damaged"):
        load_or_create_seed(tmp_path)
    (tmp_path / "profile.json").write_text("{not json")
    with pytest.raises(ProfileError, match="damaged"):
        load_profile(tmp_path)


def test_profile_round_trip(tmp_path: Path) -> None:
    save_profile(Profile("ws://relay:8765", "amina", "clinic", home=tmp_path))
    assert load_profile(tmp_path) == Profile("ws://relay:8765", "amina", "clinic", home=tmp_path)


@pytest.mark.parametrize(
    "url", ["http://relay", "ws://127.0.0.1:", "ws://relay:99999", "ws://:80", "relay:8765"]
)
def test_bad_relay_urls_are_refused(url: str) -> None:
    with pytest.raises(UsageError):
        check_relay_url(url)


@pytest.mark.parametrize("url", ["ws://relay:8765", "wss://relay.example", "ws://[::1]:8765/"])
def test_good_relay_urls_pass(url: str) -> None:
    assert check_relay_url(url) == url.rstrip("/")

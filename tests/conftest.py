from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.relay import RelayProcess


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    r = RelayProcess(tmp_path / "relay").start()
    try:
        yield r
    finally:
        r.stop()

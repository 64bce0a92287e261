"""Placeholder replaced by the blob store; requests for blobs are refused until then."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medcomm.errors import UsageError


class BlobStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def request(
        self, user: str, op: str, args: dict[str, object], members: Callable[[str], list[str]]
    ) -> object:
        raise UsageError(f"unknown request {op!r}")

    def close(self) -> None:
        pass

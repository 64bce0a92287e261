"""The desk's image work, a mixin of the app: sharing (the form's file, with its progress in
the consult's image bar) and sending what waits (first views shared offline, then every
tile and original), off the render path, outliving the screen that started it.

Sharing goes as ``medcomm share`` goes: prepared, durable on this device (the line shows
as queued from then on: nothing the clinician sent is lost, whatever happens next), the
first view up, the message stored. The rest, manifest and tiles, is sent by the same
rounds that send images shared offline: after each share, when the link comes up, once
when the desk opens, and when a member asks for an original this device keeps (a request
message arrives: the round uploads it, as ``medcomm sync`` does). When the desk closes with
some still to send, they are left to a background ``medcomm sync``, as ``medcomm share``
leaves them.

The bar shows a stage at once and a byte count at most once a second; the conversation's
lines of images going up are refreshed at most once a second too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work

from medcomm.app.widgets.imagebar import ShareProgress, share_text
from medcomm.core import wire
from medcomm.core.imagemsg import kb
from medcomm.errors import LinkDown, MedcommError

if TYPE_CHECKING:
    from medcomm.app.ports import DeskSession

log = logging.getLogger("medcomm.desk")
REQUEST = wire.KINDS["request"]
IMAGES_TIMEOUT = 3600.0  # one round of sending images (`medcomm share`'s background budget)
PROGRESS_EVERY = 1.0  # seconds between byte counts in the bar, and refreshes of lines going up
EXIT_WAIT = 5.0  # seconds the desk waits for its sending round to let go of its images


def is_request(event: object) -> bool:
    """A message arrived that asks for an image's original (ours, maybe: the sending round
    looks, and uploads the ones this device keeps)."""
    return getattr(getattr(event, "msg", None), "kind", None) == REQUEST


class ImageWork:
    """Needs from the app: ``session``, ``screen_stack``, ``notify``, ``_dirty`` and
    ``_schedule_refresh`` (the coalescing refresh), and ``_base_screen``."""

    session: DeskSession | None
    _dirty: set[str | None]

    def init_images(self) -> None:
        self._shares: dict[str, list[ShareProgress]] = {}
        self._share_shown = 0.0
        self._images_wanted = True  # images may wait from an earlier run
        self._images_sending = False
        self._images_worker: Any = None
        self._lines_shown = 0.0

    # --- sharing -----------------------------------------------------------------------------

    def share_text(self, consult: str) -> str:
        """The image bar's words for a consult: its newest share in progress, or nothing."""
        shares = self._shares.get(consult)
        if not shares:
            return ""
        online = self.session is not None and self.session.status.state == "online"
        return share_text(shares[-1], len(shares) - 1, online)

    @work(exclusive=False, group="image-share")
    async def share_image(self, consult: str, path: str, caption: str, kind: str) -> None:
        """Share a file in ``consult``; an app worker: leaving the consult does not stop it."""
        session = self.session
        if session is None:
            return
        progress = ShareProgress(Path(path).name)
        self._shares.setdefault(consult, []).append(progress)
        self._show_share(consult, force=True)

        def step(name: str, done: int, total: int) -> None:
            if name == "saved":  # durable here: the line appears, queued
                self._refresh_consult(consult)
            self._show_share(consult, force=progress.update(name, done, total) or done >= total)

        try:
            shared = await session.share_image(consult, path, as_kind=kind, caption=caption, step=step)
        except LinkDown:
            self.notify(  # type: ignore[attr-defined]
                "image saved on this device: it goes when the link is up", timeout=8, markup=False
            )
            self._images_wanted = True
        except MedcommError as exc:
            self.notify(f"image not sent: {exc}", severity="error", timeout=10, markup=False)  # type: ignore[attr-defined]
        else:
            self.notify(  # type: ignore[attr-defined]
                f"image stored (#{shared.seq}): first view {kb(shared.first_bytes)} in "
                f"{shared.seconds:.0f} s; the tiles and the original follow",
                timeout=6,
                markup=False,
            )
            self.send_images()
        finally:
            shares = self._shares.get(consult, [])
            if progress in shares:
                shares.remove(progress)
            if not shares:
                self._shares.pop(consult, None)
            self._show_share(consult, force=True)
            self._refresh_consult(consult)

    def _show_share(self, consult: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._share_shown < PROGRESS_EVERY:
            return
        self._share_shown = now
        if not self.screen_stack:  # type: ignore[attr-defined]
            return  # the desk is closing
        screen = self._base_screen()  # type: ignore[attr-defined]
        if getattr(screen, "consult", None) == consult and hasattr(screen, "show_image_bar"):
            screen.show_image_bar()

    def _refresh_consult(self, consult: str | None) -> None:
        self._dirty.add(consult)
        self._schedule_refresh()  # type: ignore[attr-defined]

    # --- sending what waits ------------------------------------------------------------------

    def send_images(self) -> None:
        """Send what waits: now if the link is up (after a round that is running), else when
        it comes up."""
        self._images_wanted = True
        if self.session is not None and self.session.status.state == "online" and not self._images_sending:
            self._images_sending = True
            self._images_worker = self._send_images()

    @work(exclusive=False, group="images")
    async def _send_images(self) -> None:
        def step(name: str, done: int, total: int) -> None:
            now = time.monotonic()
            if now - self._lines_shown >= PROGRESS_EVERY or done >= total:
                self._lines_shown = now
                self._refresh_consult(None)  # our images' lines: "sending tiles 12/65"

        try:
            while self._images_wanted and self.session is not None and self.session.status.state == "online":
                self._images_wanted = False
                try:
                    result = await self.session.send_pending_images(IMAGES_TIMEOUT, step)
                except LinkDown:
                    self._images_wanted = True  # kept on this device; the link coming up retries
                    return
                except MedcommError as exc:
                    self.notify(f"images not sent: {exc}", severity="error", timeout=10, markup=False)  # type: ignore[attr-defined]
                    return
                for _, error in result.failed:  # refused for good: kept here, marked failed
                    self.notify(f"image refused: {error}", severity="error", timeout=10, markup=False)  # type: ignore[attr-defined]
                if result.finished or result.failed:
                    self._refresh_consult(None)
        finally:
            self._images_sending = False

    async def images_on_exit(self, session: Any) -> None:
        """Leave what is still to send to a background ``medcomm sync`` (once this desk's own
        round has let go of its images: two never work on one)."""
        worker = self._images_worker
        if worker is not None and not worker.is_finished:
            worker.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(worker.wait(), EXIT_WAIT)
        try:
            pid = session.continue_images_in_background()
        except (MedcommError, OSError) as exc:
            log.warning("images left on this device for the next sync: %s", type(exc).__name__)
            return
        if pid is not None:
            log.info("images continue in a background sync pid=%d", pid)

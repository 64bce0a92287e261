"""Images for the fake desk session: shared, summarised, opened, without a relay or a cache.

``FakeImages`` is mixed into ``FakeSession``; the test drives the "network" by hand::

    line = fake.add_image(k, "dr.chen", caption="CBC today")   # a stored image, nothing here yet
    fake.hold_share = True          # share_image waits after "prepare" (hold_upload: after "saved")
    fake.hold_first = True          # the first view's fetch waits for release_first()
    fake.hold_tiles = True          # each tile waits for release_tiles(n)
    fake.images[line.id].at_relay = {TileId(0, 1, 1)}   # the sender has uploaded only this tile
    slice_ = fake.add_image(k, "dr.chen", dicom=True)    # a CT slice sent under "mediastinum"
    fake.images_asked   # [("open", id), ("first", id), ("tiles", id, [...]), ("window", id, "lung"), ...]

Pictures are real (Pillow), cut from one native picture per image: a checkerboard of 4-px
squares, which the small first view averages to grey and native tiles show sharp, so a
test can tell which one the viewer drew. A DICOM slice has modality values (HU) and real
windows (``adapters.dicom``): its tiles and first view are the sent window's 8 bits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from medcomm.adapters.dicom import PRESETS, Window, apply_window
from medcomm.adapters.localstore import Line
from medcomm.core import imagemsg
from medcomm.core.imagemsg import BlobRef, Detail, FirstView, ImageInfo, Original
from medcomm.core.tiles import Pyramid, TileId
from medcomm.errors import LinkDown, MedcommError, NotFound, UsageError
from medcomm.session.deskimages import ImageSummary, sent_window

if TYPE_CHECKING:
    from tests.harness.fake_session import FakeSession

SENT_WINDOW = PRESETS["mediastinum"]
OWN_WINDOW = Window("own", 40, 400)


def checkerboard(w: int, h: int, square: int = 4) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    return Image.fromarray((((xx // square + yy // square) % 2) * 255).astype(np.uint8), "L")


def ct_values(side: int = 512) -> np.ndarray:
    """A body of soft tissue (40 HU) in air, two lungs (-800 HU) and a spine (700 HU)."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    v = np.full((side, side), -1000.0, dtype=np.float32)
    v[(xx - 0.5) ** 2 / 0.16 + (yy - 0.5) ** 2 / 0.1 < 1] = 40.0
    for cx in (0.33, 0.67):
        v[(xx - cx) ** 2 / 0.012 + (yy - 0.48) ** 2 / 0.03 < 1] = -800.0
    v[(xx - 0.5) ** 2 + (yy - 0.7) ** 2 < 0.004] = 700.0
    return v


@dataclass
class FakeImage:
    id: str
    consult: str
    sender: str
    info: ImageInfo
    source: Image.Image  # the native picture the tiles are cut from
    first: Image.Image
    first_here: bool = False
    tiles_here: set[TileId] = field(default_factory=set)
    at_relay: set[TileId] | None = None  # None: every tile
    original_here: bool = False
    original_at_relay: bool = False  # sent with the image (share --original), or after a request
    original_gone: bool = False  # the sender's device answered it no longer keeps it
    requested: bool = False  # this user asked the sender's device for it
    values: np.ndarray | None = None  # a DICOM slice's HU
    sending: str | None = None  # ours, still going up
    tiles_up: int = 0

    @property
    def pyramid(self) -> Pyramid:
        assert self.info.detail is not None
        return self.info.detail.pyramid

    def tile(self, tid: TileId) -> Image.Image:
        b = self.pyramid.box(tid)
        mode = "RGB" if self.info.kind == "photo" else "L"
        part = self.source.crop((b.x0, b.y0, b.x1, b.y1)).convert(mode)
        return part.resize((b.out_w, b.out_h), Image.Resampling.BOX)

    def summary(self, me: str) -> ImageSummary:
        d, o = self.info.detail, self.info.original
        return ImageSummary(
            self.id, self.info.kind, self.info.caption, self.info.first.size,
            d.width if d else o.width, d.height if d else o.height, d.tiles if d else 0,
            o.size, o.sent, self.sender == me, self.first_here, len(self.tiles_here), self.original_here,
            self.sending, self.tiles_up, None, sent_window(self.info),
        )  # fmt: skip


@dataclass(frozen=True)
class FakeShared:
    cid: bytes
    seq: int
    kind: str
    first_bytes: int
    seconds: float


@dataclass
class FakeImagesResult:
    finished: list[bytes]
    left: int
    failed: list[tuple[bytes, MedcommError]]


def _sha(n: int) -> bytes:
    return n.to_bytes(32, "big")


class FakeImages:
    """The image half of ``FakeSession`` (``medcomm.app.ports.DeskSession``'s image methods)."""

    def init_images(self: FakeSession) -> None:  # type: ignore[misc]
        self.images: dict[str, FakeImage] = {}
        self.pending_image_lines: list[Line] = []  # shared here, not in the outbox yet
        self.images_asked: list[tuple[object, ...]] = []
        self.sharing: set[str] = set()  # ids a share_image is working on (locked, as on a device)
        self.share_failure: MedcommError | None = None
        self.first_failure: MedcommError | None = None  # the next first_view raises it
        self.hold_share = False  # share_image waits after "prepare" for release_share()
        self.hold_upload = False  # ... and after "saved" (durable here) for release_upload()
        self.hold_first = False
        self.hold_tiles = False
        self.hold_original = False
        self._share_gate = asyncio.Event()
        self._upload_gate = asyncio.Event()
        self._first_gate = asyncio.Event()
        self._tile_gate = asyncio.Semaphore(0)
        self._original_gate = asyncio.Event()

    # --- building ---------------------------------------------------------------------------

    def make_image(  # type: ignore[misc]
        self: FakeSession,
        consult: str,
        sender: str,
        *,
        kind: str = "report",
        caption: str = "",
        size: tuple[int, int] = (4096, 3072),
        first: tuple[int, int] = (512, 384),
        dicom: bool = False,
        original_sent: bool = False,
        image_id: str | None = None,
    ) -> FakeImage:
        values = None
        info_text = ""
        if dicom:
            kind, values, first = "slice", ct_values(512), (384, 384)
            size = (values.shape[1], values.shape[0])
            source = Image.fromarray(apply_window(values, SENT_WINDOW), "L")
            info_text = f"CT {size[0]}x{size[1]} · 0.7x0.7 mm/px · window {SENT_WINDOW.label()} HU"
        else:
            source = checkerboard(*size)
            if kind == "photo":
                source = Image.merge("RGB", (source, source.point(lambda v: 255 - v), source))
        pyr = Pyramid(*size)
        n = len(self.images) + 1
        info = ImageInfo(
            kind, caption, info_text,
            FirstView(_sha(n * 10 + 1), 19_600, "image/avif", first[0], first[1], "avif", 40, True),
            Original(_sha(n * 10 + 2), 524_000 if dicom else 2_100_000,
                     "application/dicom" if dicom else "image/jpeg", size[0], size[1], original_sent),
            Detail(size[0], size[1], pyr.levels, "avif", "image/avif", 40, BlobRef(_sha(n * 10 + 3), 900),
                   pyr.tile_count(), 121_000),
        )  # fmt: skip
        image = FakeImage(
            image_id or self._hex_id(),
            consult,
            sender,
            info,
            source,
            source.resize(first, Image.Resampling.BOX),
        )
        image.values = values
        image.original_at_relay = original_sent
        self.images[image.id] = image
        return image

    def add_image(self: FakeSession, consult: str, sender: str, **kwargs: Any) -> Line:  # type: ignore[misc]
        """A stored image message (someone else's: nothing of it on this device yet)."""
        image = self.make_image(consult, sender, image_id=self._hex_id(), **kwargs)
        if sender == self.me:
            image.first_here = image.original_here = True
            image.tiles_here = set(all_tiles(image.pyramid))
        return self.add_message(consult, sender, imagemsg.describe(image.info), kind="image", msg_id=image.id)

    def release_share(self: FakeSession) -> None:  # type: ignore[misc]
        self._share_gate.set()

    def release_upload(self: FakeSession) -> None:  # type: ignore[misc]
        self._upload_gate.set()

    def release_first(self: FakeSession) -> None:  # type: ignore[misc]
        self._first_gate.set()

    def release_tiles(self: FakeSession, n: int = 1) -> None:  # type: ignore[misc]
        for _ in range(n):
            self._tile_gate.release()

    def release_original(self: FakeSession) -> None:  # type: ignore[misc]
        self._original_gate.set()

    # --- the DeskSession protocol -------------------------------------------------------------

    async def share_image(  # type: ignore[misc]
        self: FakeSession,
        consult: str,
        path: str,
        *,
        as_kind: str = "auto",
        caption: str = "",
        step: Callable[[str, int, int], None] | None = None,
    ) -> FakeShared:
        self.images_asked.append(("share", consult, path, as_kind, caption))
        say = step or (lambda *_: None)
        if self.share_failure is not None:
            error, self.share_failure = self.share_failure, None
            raise error
        self._consult(consult)
        say("prepare", 0, 1)
        if self.hold_share:
            self._share_gate.clear()
            await self._share_gate.wait()
        say("prepare", 1, 1)
        image = self.make_image(
            consult, self.me, kind="report" if as_kind == "auto" else as_kind, caption=caption
        )
        image.first_here = image.original_here = True
        image.tiles_here = set(all_tiles(image.pyramid))
        image.sending = "saved"
        line = Line(
            consult, None, image.id, self.me, self._tick(), "image", imagemsg.describe(image.info), "queued"
        )
        self.pending_image_lines.append(line)
        self.sharing.add(image.id)
        try:
            say("saved", 1, 1)
            if self.status.state != "online":
                raise LinkDown("the link is down")
            size = image.info.first.size
            say("first view", 0, size)
            if self.hold_upload:
                self._upload_gate.clear()
                await self._upload_gate.wait()
            say("first view", size // 2, size)
            say("first view", size, size)
        finally:
            self.sharing.discard(image.id)
        self.pending_image_lines.remove(line)
        self.outbox.append(line)
        image.sending = "tiles"
        stored = self.ack(line.id)
        assert stored.seq is not None
        return FakeShared(bytes.fromhex(image.id), stored.seq, image.info.kind, size, 7.0)

    def pending_images(self: FakeSession, consult: str) -> list[Line]:  # type: ignore[misc]
        return [ln for ln in self.pending_image_lines if ln.consult == consult]

    def pending_image_count(self: FakeSession) -> int:  # type: ignore[misc]
        return sum(1 for ln in self.pending_image_lines if ln.state == "queued")

    def image_summaries(self: FakeSession, ids: Sequence[str]) -> dict[str, ImageSummary]:  # type: ignore[misc]
        return {i: self.images[i].summary(self.me) for i in ids if i in self.images}

    async def send_pending_images(  # type: ignore[misc]
        self: FakeSession, timeout: float, step: Callable[[str, int, int], None] | None = None
    ) -> FakeImagesResult:
        self.images_asked.append(("send",))
        if self.status.state != "online":
            raise LinkDown("the link is down")
        finished = []
        for line in list(self.pending_image_lines):
            if line.id not in self.sharing:  # a share at work holds its image: skipped, as busy
                self.pending_image_lines.remove(line)
                self.outbox.append(line)
        for image in self.images.values():
            if image.sending is not None and image.id not in self.sharing:
                image.sending, image.tiles_up = None, image.info.detail.tiles if image.info.detail else 0
                finished.append(bytes.fromhex(image.id))
                if step is not None:
                    step("detail", 1, 1)
        return FakeImagesResult(finished, 0, [])

    def continue_images_in_background(self: FakeSession) -> int | None:  # type: ignore[misc]
        self.images_asked.append(("background",))
        return 4242 if any(i.sending for i in self.images.values()) else None

    async def open_image(self: FakeSession, image_id: str) -> FakeImageHandle:  # type: ignore[misc]
        self.images_asked.append(("open", image_id))
        image = self.images.get(image_id)
        if image is None:
            raise NotFound(f"no image {image_id} on this device")
        return FakeImageHandle(self, image)


class FakeImageHandle:
    """``medcomm.app.ports.ImageHandle`` over a ``FakeImage``."""

    def __init__(self, fake: FakeSession, image: FakeImage) -> None:
        self.fake = fake
        self.image = image

    @property
    def id(self) -> str:
        return self.image.id

    @property
    def info(self) -> ImageInfo:
        return self.image.info

    def original_here(self) -> bool:
        return self.image.original_here

    async def first_view(self, progress: Callable[[int, int], None] | None = None) -> Image.Image:
        self.fake.images_asked.append(("first", self.id))
        if self.fake.first_failure is not None:
            error, self.fake.first_failure = self.fake.first_failure, None
            raise error
        size = self.info.first.size
        if not self.image.first_here:
            if progress is not None:
                progress(0, size)
            if self.fake.hold_first:
                self.fake._first_gate.clear()
                await self.fake._first_gate.wait()
            if progress is not None:
                progress(size, size)
            self.image.first_here = True
        return self.image.first.copy()

    async def tiles(
        self, ids: Sequence[TileId], arrived: Callable[[TileId, Any], None], parallel: int | None = None
    ) -> None:
        self.fake.images_asked.append(("tiles", self.id, list(ids)))
        for tid in ids:  # one at a time, in the order asked
            if tid not in self.image.tiles_here:
                at_relay = self.image.at_relay
                if at_relay is not None and tid not in at_relay:
                    arrived(tid, None)
                    continue
                if self.fake.hold_tiles:
                    await self.fake._tile_gate.acquire()
                self.image.tiles_here.add(tid)
            arrived(tid, self.image.tile(tid))

    async def window(self, name: str, progress: Callable[[int, int], None] | None = None) -> tuple[Any, str]:
        self.fake.images_asked.append(("window", self.id, name))
        if self.info.kind != "slice" or self.image.values is None:
            raise UsageError("windows apply to DICOM slices only")
        if not self.image.original_here:
            if self.image.original_gone:
                raise NotFound("dr.chen's device no longer keeps the original", later=False)
            if not self.image.original_at_relay and not self.info.original.sent:
                self.fake.images_asked.append(("request", self.id))  # once per user and image
                self.image.requested = True
                raise NotFound(
                    "the original was requested from the sender's device", later=True, requested=True
                )
            if not self.image.original_at_relay:
                raise NotFound("the original has not reached the relay yet", later=True)
            size = self.info.original.size
            if progress is not None:
                progress(0, size)
            if self.fake.hold_original:
                self.fake._original_gate.clear()
                await self.fake._original_gate.wait()
            if progress is not None:
                progress(size, size)
            self.image.original_here = True
        window = OWN_WINDOW if name == "file" else PRESETS[name]
        label = window.label().replace("own ", "file's own ", 1)
        return Image.fromarray(apply_window(self.image.values, window), "L"), label


def all_tiles(pyr: Pyramid) -> list[TileId]:
    return [
        TileId(lv, c, r)
        for lv in range(pyr.levels)
        for c in range(pyr.grid(lv)[0])
        for r in range(pyr.grid(lv)[1])
    ]

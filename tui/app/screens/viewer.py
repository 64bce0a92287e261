"""The image viewer: one image over the whole screen in half-block cells, pan and zoom with
the keyboard, detail fetched by region, DICOM windows.

Keys: arrows or hjkl pan a quarter of the view, + and - zoom by two, 0 fits the picture
again, w cycles a DICOM slice's window (as sent → lung → mediastinum → bone → brain →
the file's own → as sent), Esc goes back.

The first view is drawn first (fetched, with its progress in the bar, when it is not on
this device). Zooming in asks for tiles only once the first view's own pixels are coarser
than the screen's (:mod:`medcomm.app.viewport`): the tiles of the visible region at the
level that matches the screen, the one under the centre first, and the bar says what is
still coming ("tiles 3/8 arriving") or what the sender has not uploaded yet. Each tile that
arrives redraws the picture, at most once per ``ARRIVAL_DELAY``; a new view cancels the
tiles it no longer needs (a partial download resumes next time).

A slice was sent as 8 bits under the sender's window; the tiles are cut from that picture,
so another window cannot be made from them (what the window clipped is gone). It needs the
original DICOM file: the first ``w`` fetches it from the relay (its size is in the bar
before and during the fetch; ``w`` back round to "as sent" stops it) or, when the sender's
device still keeps it (the default), asks that device for it with a request message and
says so: it arrives with that device's next sync, and ``w`` then makes the window. From
then on every window is made here, at once.

Nothing runs while nothing happens: no timer but the arrival one, and only while tiles
arrive.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from medcomm.adapters.localstore import Line
from medcomm.app.viewport import Viewport, compose, plan, sharpest
from medcomm.app.widgets.callbar import Part
from medcomm.app.widgets.imagebar import ICON, short
from medcomm.app.widgets.picture import InfoBar, Picture, palette_of
from medcomm.app.widgets.status import StatusLine
from medcomm.core.imagemsg import kb
from medcomm.core.tiles import Pyramid, TileId
from medcomm.errors import MedcommError, NotFound

if TYPE_CHECKING:
    from PIL import Image

    from medcomm.app.ports import ImageHandle

ARRIVAL_DELAY = 0.1  # seconds: tiles arriving together are drawn once
PROGRESS_EVERY = 1.0  # seconds between progress updates of a fetch in the bar
MAX_TILES = 32  # decoded tiles kept in memory (512x512: at most 24 MB in colour)
CHOICES = ("sent", "lung", "mediastinum", "bone", "brain", "file")


class ImageViewer(Screen[None]):
    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("left,h", "pan(-1, 0)", "Pan", key_display="←↑↓→"),
        Binding("right,l", "pan(1, 0)", "Pan", show=False),
        Binding("up,k", "pan(0, -1)", "Pan", show=False),
        Binding("down,j", "pan(0, 1)", "Pan", show=False),
        Binding("plus,equals_sign", "zoom(1)", "Zoom", key_display="+ -"),
        Binding("minus", "zoom(-1)", "Zoom out", show=False),
        Binding("0", "fit", "Fit"),
        Binding("w", "window", "Window"),
        Binding("f1", "app.help", "Help"),
    ]

    def __init__(self, line: Line) -> None:
        super().__init__()
        self.line = line
        self.handle: ImageHandle | None = None
        self.first: Image.Image | None = None
        self.pyramid: Pyramid | None = None
        self.vp: Viewport | None = None
        self.tiles: OrderedDict[TileId, Image.Image] = OrderedDict()
        self.wanted: list[TileId] = []  # the tiles the current view would use
        self.asked = self.got = self.absent = 0  # of the current view's fetch
        self.asks: list[list[TileId]] = []  # every fetch, in order (what was asked of the link)
        self.choice = "sent"  # the DICOM window shown (or being made)
        self.full: tuple[str, Image.Image, str] | None = None  # (choice, picture, label) of a window
        self.fetching: tuple[int, int] | None = None  # first view or original: (bytes, size)
        self.error = ""
        self._gen = 0
        self._arrival_timer: Any = None
        self._shown_at = 0.0
        self._windowing = False
        self._have_original = False  # a slice's original is on this device
        self.requested = False  # this viewer asked the sender's device for the original

    def compose(self) -> ComposeResult:
        yield Static(f"{ICON} {self.line.text}", id="title")
        yield Picture(id="picture")
        yield InfoBar(id="info")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.app.refresh_status()  # type: ignore[attr-defined]
        self._show_info()
        self.load()

    def on_screen_resume(self) -> None:
        self.app.refresh_status()  # type: ignore[attr-defined]

    @property
    def picture(self) -> Picture:
        return self.query_one(Picture)

    @property
    def kind(self) -> str:
        return self.handle.info.kind if self.handle is not None else ""

    # --- loading ---------------------------------------------------------------------------

    @work(exclusive=True, group="load")
    async def load(self) -> None:
        session = self.app.session  # type: ignore[attr-defined]
        if session is None:
            return
        try:
            self.handle = await session.open_image(self.line.id)
            self._have_original = self.handle.original_here()
            self._title()
            self.refresh_bindings()  # w only for a slice
            self.fetching = (0, self.handle.info.first.size)
            self._show_info()
            self.first = await self.handle.first_view(self._progress)
        except MedcommError as exc:
            self.error = f"cannot show the image: {exc}"
            self.notify(self.error, severity="error", timeout=10, markup=False)
            self._show_info()
            return
        finally:
            self.fetching = None
        d = self.handle.info.detail
        self.pyramid = d.pyramid if d is not None else None
        size = (d.width, d.height) if d is not None else self.first.size
        cols, rows = self.picture.size.width, self.picture.size.height
        self.vp = Viewport(size[0], size[1], max(1, cols), max(1, rows))
        self._redraw()

    def _title(self) -> None:
        info = self.handle.info if self.handle is not None else None
        if info is None:
            return
        when = time.strftime("%H:%M", time.localtime(self.line.time / 1000))
        caption = f' "{short(info.caption, 60)}"' if info.caption else ""
        parts = [f"{ICON} {info.kind}{caption}", f"{self.line.sender} {when}", info.info or ""]
        self.query_one("#title", Static).update(" · ".join(p for p in parts if p))

    def _progress(self, done: int, total: int) -> None:
        """A fetch's progress: the bar at most once a second, and at its end."""
        self.fetching = (done, total)
        now = time.monotonic()
        if done >= total or now - self._shown_at >= PROGRESS_EVERY:
            self._shown_at = now
            self._show_info()

    # --- drawing ---------------------------------------------------------------------------

    def on_picture_resized(self, event: Picture.Resized) -> None:
        if self.vp is not None:
            self.vp = self.vp.resized(event.cols, event.rows)
        self._redraw()

    def _redraw(self, replan: bool = True) -> None:
        """Draw the view from what is here, then ask for what would make it sharper."""
        if self.first is None or self.vp is None or not self.is_attached:
            return  # not drawn yet, or the viewer is closing
        full = self.full[1] if self.full is not None else None
        image = compose(self.vp, self.first, self.tiles, self.pyramid, full)
        self.picture.show(image, palette_of(self.app.console.color_system))
        if replan:
            self._plan()
        self._show_info()

    def _plan(self) -> None:
        """Ask for the tiles this view needs and does not have: when the view needs other
        tiles than before, or (on a key) again for those the relay did not have yet."""
        assert self.vp is not None and self.first is not None
        ids = [] if self.full is not None else plan(self.vp, self.pyramid, self.first.size)
        asked_again = self.absent and self.got + self.absent >= self.asked
        if ids == self.wanted and not asked_again:
            return  # the same tiles: what is on its way stays on its way
        self.wanted = ids
        need = [t for t in ids if t not in self.tiles]
        self._gen += 1
        self.asked, self.got, self.absent = len(need), 0, 0
        if need:
            self.asks.append(need)
            self._fetch(need, self._gen)
        else:
            self.workers.cancel_group(self, "tiles")

    @work(exclusive=True, group="tiles")
    async def _fetch(self, need: list[TileId], gen: int) -> None:
        assert self.handle is not None

        def arrived(tid: TileId, picture: Any) -> None:
            if picture is not None:
                self.tiles[tid] = picture
                self.tiles.move_to_end(tid)
                while len(self.tiles) > MAX_TILES:
                    self.tiles.popitem(last=False)
            if gen != self._gen:
                return  # a tile of an earlier view: kept, not counted
            if picture is None:
                self.absent += 1
                self._show_info()
            else:
                self.got += 1
                self._soon()

        try:
            await self.handle.tiles(need, arrived)
        except MedcommError as exc:
            if gen == self._gen:
                self.notify(f"tiles: {exc}", severity="error", timeout=8, markup=False)
                self.absent = self.asked - self.got
                self._show_info()

    def _soon(self) -> None:
        """Redraw once for tiles that arrive together."""
        if self._arrival_timer is None:
            self._arrival_timer = self.set_timer(ARRIVAL_DELAY, self._arrivals)

    def _arrivals(self) -> None:
        self._arrival_timer = None
        self._redraw(replan=False)  # the view did not change: nothing new to ask

    # --- the bar ---------------------------------------------------------------------------

    def info_parts(self) -> list[Part]:
        if self.error:
            return [Part(self.error, 0)]
        if self.first is None:
            if self.fetching is not None and self.fetching[1]:
                done, total = self.fetching
                return [Part(f"fetching the first view {kb(done)} of {kb(total)}", 0)]
            return [Part("opening the image…", 0)]
        assert self.vp is not None
        slice_ = self.kind == "slice"
        parts = [Part(self.vp.label(), 0, bold=True)]
        if self.full is not None:
            parts.append(Part(f"window {self.full[2]}, from the original", 0))
        else:  # a slice's window says more than "first view" where both do not fit
            parts.append(
                Part(sharpest(self.vp, self.pyramid, self.tiles, self.first.size), 2 if slice_ else 0)
            )
        if self.asked and self.got + self.absent < self.asked:
            parts.append(Part(f"tiles {self.got}/{self.asked} arriving", 0, bold=True))
        elif self.absent:
            parts.append(Part(f"{self.absent} of {self.asked} tiles not at the relay yet", 1))
        if slice_:
            parts += self._window_parts()
        parts.append(Part(f"{self.vp.width}x{self.vp.height}", 4))
        return parts

    def _window_parts(self) -> list[Part]:
        assert self.handle is not None
        from medcomm.session.deskimages import sent_window

        o = self.handle.info.original
        sent = sent_window(self.handle.info)
        if self._windowing and self.choice != "sent":
            done, total = self.fetching or (0, o.size)
            pct = f" {100 * done // total}%" if total else ""
            if self._have_original:
                return [Part(f"window {self.choice}…", 0)]
            return [Part(f"window {self.choice}: fetching the original {kb(o.size)}…{pct}", 0)]
        parts = [] if self.full is not None else [Part(f"sent window {sent or 'unknown'}", 1)]
        if self.full is None and not self._have_original:
            if self.requested:
                parts.append(Part(f"original asked of {self.line.sender}", 1))
            else:
                parts.append(Part(f"w: others need the original, {kb(o.size)}", 1))
        return parts

    def _show_info(self) -> None:
        for bar in self.query(InfoBar):  # none while the viewer closes
            bar.show(self.info_parts())

    # --- keys ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "window":
            return self.kind == "slice"
        return True

    def action_close(self) -> None:
        self.app.pop_screen()

    def action_zoom(self, steps: int) -> None:
        if self.vp is None:
            return
        vp = self.vp.zoomed(steps)
        if vp == self.vp:
            what = "the deepest zoom: 4 screen pixels per pixel" if steps > 0 else "the whole picture"
            self.notify(f"already at {what}", timeout=3)
            return
        self.vp = vp
        self._redraw()

    def action_fit(self) -> None:
        if self.vp is not None and self.vp != self.vp.fitted():
            self.vp = self.vp.fitted()
            self._redraw()

    def action_pan(self, dx: int, dy: int) -> None:
        if self.vp is None:
            return
        vp = self.vp.panned(dx, dy)
        if vp != self.vp:  # at the edge: nothing moves, nothing is drawn
            self.vp = vp
            self._redraw()

    def action_window(self) -> None:
        """w: the next window; made from the original, which the first one fetches."""
        if self.handle is None or self.kind != "slice":
            return
        self.choice = CHOICES[(CHOICES.index(self.choice) + 1) % len(CHOICES)]
        if self.choice == "sent":
            self.workers.cancel_group(self, "window")  # a fetch of the original stops here
            self._windowing = False
            self.full = None
            self.wanted = []  # the sent picture's tiles: planned again
            self._redraw()
            return
        if not self._windowing:
            self._windowing = True
            self._make_window()
        self._show_info()

    def _not_here(self, choice: str, exc: NotFound) -> str:
        """Why a window cannot be made yet, and what happens next."""
        size = kb(self.handle.info.original.size) if self.handle is not None else ""
        need = f"window {choice} needs the original DICOM ({size})"
        if exc.data.get("requested"):
            self.requested = True
            return (
                f"{need}: asked {self.line.sender}'s device for it, which sends it at its next "
                "sync; press w again later"
            )
        if exc.data.get("later"):
            return f"{need}: it has not reached the relay yet; press w again later"
        return f"{need}: {exc}"  # the sender's device no longer keeps it

    @work(exclusive=True, group="window")
    async def _make_window(self) -> None:
        """Make the chosen window (the original is fetched once); if the choice moved on
        meanwhile, make that one next."""
        assert self.handle is not None
        try:
            while self.choice != "sent":
                choice = self.choice
                self.fetching = None
                try:
                    picture, label = await self.handle.window(choice, self._progress)
                except NotFound as exc:
                    self.notify(self._not_here(choice, exc), timeout=10, markup=False)
                    self.choice = "sent"
                    return
                except MedcommError as exc:
                    self.notify(f"window {choice}: {exc}", severity="error", timeout=8, markup=False)
                    self.choice = "sent"
                    return
                self._have_original = True
                if self.choice == choice:
                    self.full = (choice, picture, label)
                    return
        finally:
            self._windowing = False
            self.fetching = None
            if self.choice == "sent":
                self.full = None
            self._redraw()

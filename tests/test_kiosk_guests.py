"""Another scene for the same guest (``serve/guests.py``): the kiosk holds a guest's photos in memory, a second
portrait skips decoding, face detection and the face encoders (the bundle's conditioning cache), and a forgotten
guest (asked, idle, or pushed out of a full book) leaves neither photos nor conditioning behind. Real tiny-lcm ONNX
bundle, real HTTP on loopback; every portrait is compared pixel for pixel with the bundle run directly."""

from __future__ import annotations

import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from runtime_fixtures import CountingRunner  # noqa: E402
from kiosk_fixtures import (  # noqa: E402
    FACE_A,
    FACE_B,
    ThreadServer,
    assert_one_line_error,
    client,
    decode_data_url,
    kiosk_bundle,
    photo_files,
)

from dhumandiff.contract.images import load_rgb  # noqa: E402
from dhumandiff.runtimes.conditioning_cache import ConditioningCache  # noqa: E402
from dhumandiff.serve import presets  # noqa: E402
from dhumandiff.serve.app import KioskSettings, create_app  # noqa: E402

FACE_GRAPHS = {"identity_encoder", "image_encoder", "face_projection"}
SCENES = {s.id: s.prompt for s in presets.SCENES}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kiosk_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(bundle: Path) -> Any:
    """The same bundle run directly, without a cache: (seed, scene, swapped) -> the portrait's pixels."""
    from dhumandiff.runtimes import load_bundle

    gen = load_bundle(bundle, num_threads=1)
    a, b = load_rgb(FACE_A.read_bytes()), load_rgb(FACE_B.read_bytes())

    @lru_cache(maxsize=None)
    def make(seed: int, scene: str, swapped: bool = False) -> np.ndarray:
        x, y = (b, a) if swapped else (a, b)
        return np.asarray(gen(x, y, SCENES[scene], seed=seed, layout=presets.layout_boxes("")[1]).image)

    return make


def _kiosk(bundle: Path, **settings: Any) -> tuple[Any, Any, ConditioningCache]:
    from dhumandiff.runtimes import load_bundle

    cache = ConditioningCache()
    gen = load_bundle(bundle, num_threads=1, conditioning_cache=cache)
    gen.runner = CountingRunner(gen.runner)
    return create_app(gen, KioskSettings(**settings), warm=False), gen, cache


def test_another_scene_reuses_the_guests_photos_and_faces_until_the_guest_is_forgotten(
    bundle: Path, reference: Any
) -> None:
    app, gen, cache = _kiosk(bundle)
    with ThreadServer(app) as srv, client(srv.url) as c:
        r = c.post("/api/generate", files=photo_files(), data={"scene": "beach", "seed": "7", "guest": "new"})
        assert r.status_code == 200, r.text
        first = r.json()
        guest = first["guest"]
        assert re.fullmatch(r"[0-9a-f]{32}", guest) and first["conditioning_cache"] == "miss"
        np.testing.assert_array_equal(decode_data_url(first["image"]), reference(7, "beach"))
        held = app.state.guests.get(guest)
        assert held is not None and cache.photos() == set(held.digests) and len(held.digests) == 2
        health = c.get("/api/health").json()
        assert health["guests"] == 1 and health["conditioning_cache"]["entries"] >= 2

        # another scene: no photo sent, none decoded, no face found or encoded again; the bundle's own portrait
        gen.runner.calls.clear()
        r = c.post("/api/generate", data={"scene": "city", "seed": "8", "guest": guest})
        assert r.status_code == 200, r.text
        second = r.json()
        assert (second["guest"], second["scene"], second["conditioning_cache"]) == (guest, "city", "hit")
        assert not FACE_GRAPHS & set(gen.runner.calls), gen.runner.calls
        # (what was skipped is proven by the graph calls above, not by wall-clock timings, which a loaded CPU blurs)
        np.testing.assert_array_equal(decode_data_url(second["image"]), reference(8, "city"))

        # new photos for the same guest replace the held ones (here the same two, swapped: still remembered)
        files = photo_files(a=FACE_B.read_bytes(), b=FACE_A.read_bytes())
        r = c.post("/api/generate", files=files, data={"scene": "garden", "seed": "9", "guest": guest})
        assert r.status_code == 200 and r.json()["guest"] == guest and r.json()["conditioning_cache"] == "hit"
        np.testing.assert_array_equal(decode_data_url(r.json()["image"]), reference(9, "garden", True))

        # a page elsewhere cannot make the kiosk forget (or use) a guest
        assert c.post("/api/forget", data={"guest": guest}, headers={"Origin": "http://evil.example"}).status_code \
            == 403
        assert app.state.guests.get(guest) is not None

        # the page's "New guest": photos and faces go; another scene is refused in a guest's words
        assert c.post("/api/forget", data={"guest": guest}).json() == {"forgotten": True, "guests": 0}
        assert cache.photos() == set() and app.state.guests.get(guest) is None
        body = assert_one_line_error(c.post("/api/generate", data={"scene": "city", "guest": guest}), 410, 3,
                                     "take or choose your photos again")
        assert body["type"] == "GuestGone"
        assert c.post("/api/forget", data={"guest": guest}).json()["forgotten"] is False
        assert_one_line_error(c.post("/api/generate", data={"scene": "city", "guest": "../etc"}), 422, 1, "guest")
        assert c.get("/api/health").json()["guests"] == 0


def test_a_one_off_portrait_leaves_no_face_behind(bundle: Path, reference: Any) -> None:
    app, gen, cache = _kiosk(bundle)
    with ThreadServer(app) as srv, client(srv.url) as c:
        r = c.post("/api/generate", files=photo_files(), data={"scene": "wedding", "seed": "3"})
        assert r.status_code == 200 and r.json()["guest"] is None
        np.testing.assert_array_equal(decode_data_url(r.json()["image"]), reference(3, "wedding"))
        assert cache.photos() == set() and c.get("/api/health").json()["guests"] == 0
        # a new guest whose second photo is refused (no face in it) is not held, and leaves no face either
        blank = photo_files(b=_png(np.full((112, 112, 3), 200, np.uint8)))
        assert_one_line_error(c.post("/api/generate", files=blank, data={"scene": "wedding", "guest": "new"}), 422, 4,
                              "no face")
        assert cache.photos() == set() and c.get("/api/health").json()["guests"] == 0
        assert c.post("/api/generate", files=photo_files(), data={"scene": "wedding", "guest": "new"}).json()["guest"]
        assert len(cache.photos()) == 2
    assert len(app.state.guests) == 0 and cache.photos() == set()  # the kiosk stopped: every guest forgotten


def _png(arr: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_a_full_book_and_idle_time_forget_guests_but_not_a_photo_another_guest_holds(
    bundle: Path, reference: Any
) -> None:
    app, gen, cache = _kiosk(bundle, guests=1, guest_idle_s=1.5)
    with ThreadServer(app) as srv, client(srv.url) as c:
        one = c.post("/api/generate", files=photo_files(), data={"scene": "beach", "seed": "1", "guest": "new"})
        swapped = photo_files(a=FACE_B.read_bytes(), b=FACE_A.read_bytes())
        two = c.post("/api/generate", files=swapped, data={"scene": "beach", "seed": "1", "guest": "new"})
        g1, g2 = one.json()["guest"], two.json()["guest"]
        assert g1 != g2 and two.json()["conditioning_cache"] == "hit"
        # the book holds one guest: the first is forgotten, but their photos' faces stay (the second holds them)
        assert_one_line_error(c.post("/api/generate", data={"scene": "city", "guest": g1}), 410, 3)
        assert len(cache.photos()) == 2
        r = c.post("/api/generate", data={"scene": "city", "seed": "2", "guest": g2})
        assert r.status_code == 200 and r.json()["conditioning_cache"] == "hit"
        np.testing.assert_array_equal(decode_data_url(r.json()["image"]), reference(2, "city", True))
        # idle: forgotten by the kiosk's own sweep, with nobody asking
        end = time.monotonic() + 10
        while len(app.state.guests) and time.monotonic() < end:
            time.sleep(0.1)
        assert len(app.state.guests) == 0 and cache.photos() == set()
        assert_one_line_error(c.post("/api/generate", data={"scene": "city", "guest": g2}), 410, 3)


def test_keep_dir_keeps_another_scene_complete(bundle: Path, tmp_path: Path) -> None:
    keep = tmp_path / "kept"
    app, _, _ = _kiosk(bundle, keep_dir=keep)
    with ThreadServer(app) as srv, client(srv.url) as c:
        guest = c.post("/api/generate", files=photo_files(), data={"scene": "beach", "guest": "new"}).json()["guest"]
        assert c.post("/api/generate", data={"scene": "city", "guest": guest}).status_code == 200
    folders = sorted(keep.iterdir())
    assert len(folders) == 2
    for folder in folders:
        assert (folder / "face_a.png").read_bytes() == FACE_A.read_bytes()
        assert (folder / "face_b.png").read_bytes() == FACE_B.read_bytes()


def test_guest_settings_are_checked() -> None:
    from dhumandiff.errors import SettingsError

    for bad in ({"guests": -1}, {"guests": 65}, {"guest_idle_s": 0}, {"guest_idle_s": float("nan")}):
        with pytest.raises(SettingsError):
            KioskSettings(**bad)

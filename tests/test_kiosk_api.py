"""The kiosk service over a real tiny-lcm ONNX bundle, through real HTTP on loopback.

One ``dhumandiff serve`` process answers the API and load tests (its memory is measured on its own); apps that
need a wrapped generator (to fill the line deterministically) run on uvicorn in a thread. Every portrait the
service returns is compared pixel for pixel with the same bundle run directly with the same seed.
"""

from __future__ import annotations

import io
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from kiosk_fixtures import (  # noqa: E402
    FACE_A,
    FACE_B,
    Gated,
    KioskServer,
    ThreadServer,
    assert_one_line_error,
    client,
    decode_data_url,
    kiosk_bundle,
    photo_files,
)

from dhumandiff.serve import presets  # noqa: E402
from dhumandiff.serve.app import KioskSettings, create_app  # noqa: E402
from dhumandiff.contract.images import load_rgb  # noqa: E402

BUSY = re.compile(r"^busy, (\d+) ahead of you; try again in a moment$")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kiosk_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with KioskServer(bundle, tmp_path_factory.mktemp("kiosk-server"), "--queue", "4", "--max-upload-mb", "2",
                     "--max-pixels", "1000000") as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(bundle: Path) -> Any:
    """The same bundle run directly: (seed, prompt, layout id) -> the portrait's pixels."""
    from dhumandiff.runtimes import load_bundle

    gen = load_bundle(bundle, num_threads=1)
    a, b = load_rgb(FACE_A.read_bytes()), load_rgb(FACE_B.read_bytes())

    @lru_cache(maxsize=None)
    def make(seed: int, prompt: str, layout: str) -> np.ndarray:
        return np.asarray(gen(a, b, prompt, seed=seed, layout=presets.layout_boxes(layout)[1]).image)

    return make


def png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- the API


def test_health_presets_and_page(server: KioskServer) -> None:
    with client(server.url) as c:
        health = c.get("/api/health").json()
        assert health["status"] == "ok" and health["model"] == "tiny-lcm" and health["runtime"] == "onnx"
        assert health["queue_limit"] == 4 and health["running"] is False and health["waiting"] == 0
        p = c.get("/api/presets").json()
        assert [s["id"] for s in p["scenes"]] == ["wedding", "beach", "garden", "city"]
        assert {lay["id"] for lay in p["layouts"]} >= {"side-by-side", "swapped"}
        assert p["limits"] == {"max_upload_mb": 2.0, "max_pixels": 1_000_000, "queue": 4}
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        for element in ('id="face_a"', 'id="face_b"', 'id="prompt"', 'id="layout"', 'id="seed"', 'id="result"',
                        'id="timing"', "/api/generate"):
            assert element in html
        # self-contained: nothing fetched from elsewhere, and the policy forbids it
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
        assert "@import" not in html and "default-src 'none'" in page.headers["content-security-policy"]


def test_generate_returns_the_bundles_portrait_for_that_seed(server: KioskServer, reference: Any) -> None:
    with client(server.url) as c:
        r = c.post("/api/generate", files=photo_files(), data={"scene": "beach", "seed": "7"})
        assert r.status_code == 200, r.text
        d = r.json()
        beach = next(s.prompt for s in presets.SCENES if s.id == "beach")
        assert (d["seed"], d["scene"], d["prompt"], d["layout"]) == (7, "beach", beach, "side-by-side")
        assert (d["width"], d["height"], d["steps"], d["runtime"]) == (64, 64, 4, "onnx")
        assert {"queue_wait", "read_photos", "encode_faces", "denoise", "decode", "total", "request_total"} <= set(
            d["timings"])
        img = decode_data_url(d["image"])
        np.testing.assert_array_equal(img, reference(7, beach, "side-by-side"))

        # the raw PNG form answers the same pixels, with the seed in a header
        r = c.post("/api/generate?format=png", files=photo_files(), data={"scene": "beach", "seed": "7"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "7"
        from PIL import Image

        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), img)

        # a typed prompt wins over the scene; the layout choice and the seed change the picture
        prompt = "a woman and a man in a garden"
        r = c.post("/api/generate", files=photo_files(),
                   data={"scene": "beach", "prompt": prompt, "seed": "7", "layout": "swapped"})
        d2 = r.json()
        assert (d2["prompt"], d2["scene"], d2["layout"]) == (prompt, None, "swapped")
        img2 = decode_data_url(d2["image"])
        np.testing.assert_array_equal(img2, reference(7, prompt, "swapped"))
        assert np.abs(img2.astype(int) - img.astype(int)).mean() > 2.0

        # no seed: a random one, echoed so the guest can get the same portrait again
        d3 = c.post("/api/generate", files=photo_files(), data={"scene": "city"}).json()
        city = next(s.prompt for s in presets.SCENES if s.id == "city")
        assert isinstance(d3["seed"], int) and d3["seed"] >= 0
        np.testing.assert_array_equal(decode_data_url(d3["image"]), reference(d3["seed"], city, "side-by-side"))


def _blank(w: int, h: int) -> bytes:
    return png_bytes(np.full((h, w, 3), 200, np.uint8))


BAD_INPUTS = {
    # name: (files kwargs, form data, status, exit code, fragment of the message)
    "not an image": (dict(a=b"this is not a photo"), {"scene": "beach"}, 400, 3, "not an image"),
    "empty photo": (dict(a=b""), {"scene": "beach"}, 400, 3, "empty"),
    "over the pixel limit": (dict(a=_blank(1001, 1000)), {"scene": "beach"}, 400, 3, "MP limit"),
    "no face": (dict(b=_blank(112, 112)), {"scene": "beach"}, 422, 4, "no face"),
    "two faces in one photo": (
        dict(a=png_bytes(np.concatenate([load_rgb(FACE_A.read_bytes()), load_rgb(FACE_B.read_bytes())], axis=1))),
        {"scene": "beach"}, 422, 5, "2 faces"),
    "prompt without people": (dict(), {"prompt": "two cats on a sofa"}, 422, 6, "person word"),
    "no prompt, no scene": (dict(), {}, 422, 6, "pick a scene"),
    "unknown scene": (dict(), {"scene": "moon"}, 422, 6, "unknown scene"),
    "unknown layout": (dict(), {"scene": "beach", "layout": "diagonal"}, 422, 7, "unknown layout"),
    "bad seed": (dict(), {"scene": "beach", "seed": "-3"}, 422, 1, "seed must be"),
    "photo over the upload limit": (dict(a=b"\0" * (2 * 2**20 + 10)), {"scene": "beach"}, 413, 3, "over the 2 MB"),
    # a real selfie given to the synthetic-world default: the one line says so (no --face-index advice)
    "a real photo": (dict(a=png_bytes(__import__("skimage.data").data.astronaut())), {"scene": "beach"}, 422, 4,
                     "looks like a real photo", "Real photos"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_refused_with_one_json_line(server: KioskServer, case: str) -> None:
    photos, data, status, code, *fragments = BAD_INPUTS[case]
    with client(server.url) as c:
        r = c.post("/api/generate", files=photo_files(**photos), data=data)
        assert_one_line_error(r, status, code, *fragments)


def test_missing_photo_and_oversize_bodies(server: KioskServer) -> None:
    import httpx

    with client(server.url) as c:
        files = photo_files()
        del files["face_b"]
        assert_one_line_error(c.post("/api/generate", files=files, data={"scene": "beach"}), 400, 3, "photo b")

        # a body over the limit is refused from its Content-Length, before it is read...
        big = {"face_a": ("a.png", b"\0" * (5 * 2**20), "image/png"), "face_b": files["face_a"]}
        assert_one_line_error(c.post("/api/generate", files=big), 413, 3, "too large")

        # ...and by counting when the client sends it chunked, without a Content-Length
        req = httpx.Request("POST", f"{server.url}/api/generate", files=big)
        body = req.read()

        def chunks() -> Any:
            for i in range(0, len(body), 1 << 16):
                yield body[i : i + (1 << 16)]

        r = c.post("/api/generate", content=chunks(), headers={"content-type": req.headers["content-type"]})
        assert_one_line_error(r, 413, 3, "too large")

        health = c.get("/api/health").json()
        assert health["status"] == "ok" and health["waiting"] == 0


# ------------------------------------------------------------------------------------ the bounded line


def test_past_the_line_the_answer_is_busy_with_how_many_are_ahead(bundle: Path, reference: Any) -> None:
    from dhumandiff.runtimes import load_bundle

    gated = Gated(load_bundle(bundle, num_threads=1))
    app = create_app(gated, KioskSettings(queue=2))
    answers: dict[int, Any] = {}

    def post(url: str, seed: int) -> None:
        with client(url) as c:
            answers[seed] = c.post("/api/generate", files=photo_files(), data={"scene": "wedding", "seed": str(seed)})

    with ThreadServer(app) as srv:
        threads = [threading.Thread(target=post, args=(srv.url, 1))]
        threads[0].start()
        assert gated.entered.wait(30), "the first request never reached the generator"
        for seed in (2, 3):
            threads.append(threading.Thread(target=post, args=(srv.url, seed)))
            threads[-1].start()
        with client(srv.url) as c:
            end = time.monotonic() + 30
            while c.get("/api/health").json()["waiting"] < 2:
                assert time.monotonic() < end, "two requests never queued"
                time.sleep(0.02)
            r = c.post("/api/generate", files=photo_files(), data={"scene": "wedding", "seed": "4"})
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["error"] == "busy, 3 ahead of you; try again in a moment" and body["ahead"] == 3
            assert int(r.headers["retry-after"]) >= 1 and body["retry_after"] == int(r.headers["retry-after"])
            health = c.get("/api/health").json()
            assert (health["running"], health["waiting"], health["refused"]) == (True, 2, 1)
            gated.release.set()
            for t in threads:
                t.join(60)
            health = c.get("/api/health").json()
            assert (health["running"], health["waiting"], health["completed"]) == (False, 0, 3)
    wedding = next(s.prompt for s in presets.SCENES if s.id == "wedding")
    for seed in (1, 2, 3):
        assert answers[seed].status_code == 200, answers[seed].text
        d = answers[seed].json()
        assert d["seed"] == seed
        np.testing.assert_array_equal(decode_data_url(d["image"]), reference(seed, wedding, "side-by-side"))


class Failing(Gated):
    """A real generator that fails the way a bug would (not a user mistake)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug, not a user mistake")


def test_an_unexpected_failure_is_one_json_line_and_the_kiosk_carries_on(bundle: Path) -> None:
    from dhumandiff.runtimes import load_bundle

    app = create_app(Failing(load_bundle(bundle, num_threads=1)), KioskSettings(queue=1))
    with ThreadServer(app) as srv, client(srv.url) as c:
        for _ in range(3):  # the line is freed after each failure
            body = assert_one_line_error(c.post("/api/generate", files=photo_files(), data={"scene": "city"}),
                                         500, 1, "internal error (RuntimeError)")
            assert "a bug" not in body["error"]  # details go to the log, not to the guest
        health = c.get("/api/health").json()
        assert (health["status"], health["running"], health["waiting"], health["completed"]) == ("ok", False, 0, 3)


def test_keep_dir_keeps_each_answer_only_when_configured(bundle: Path, tmp_path: Path) -> None:
    from dhumandiff.runtimes import load_bundle

    keep = tmp_path / "kept"
    app = create_app(load_bundle(bundle, num_threads=1), KioskSettings(keep_dir=keep))
    with ThreadServer(app) as srv, client(srv.url) as c:
        d = c.post("/api/generate", files=photo_files(), data={"scene": "garden", "seed": "5"}).json()
        assert c.post("/api/generate", files=photo_files(b=_blank(112, 112)), data={"scene": "garden"}).status_code \
            == 422
    (folder,) = list(keep.iterdir())  # the refused request kept nothing
    assert sorted(p.name for p in folder.iterdir()) == ["face_a.png", "face_b.png", "portrait.png", "request.json"]
    assert (folder / "face_a.png").read_bytes() == FACE_A.read_bytes()
    np.testing.assert_array_equal(load_rgb(folder / "portrait.png"), decode_data_url(d["image"]))
    import json

    kept = json.loads((folder / "request.json").read_text())
    assert (kept["seed"], kept["scene"], kept["request_id"]) == (5, "garden", d["request_id"])


def test_keep_dir_that_cannot_be_written_still_answers_the_guest(bundle: Path, tmp_path: Path, caplog) -> None:
    """Archiving is best-effort: a keep folder that cannot be written (here a read-only one; a full disk raises the
    same OSError) is logged, and the guest still gets the portrait (it used to be a 500)."""
    from dhumandiff.runtimes import load_bundle

    if os.geteuid() == 0:
        keep = tmp_path / "a-file"  # root ignores permission bits: a file where the folder should be fails alike
        keep.write_text("not a folder")
    else:
        keep = tmp_path / "read-only"
        keep.mkdir(mode=0o500)
    app = create_app(load_bundle(bundle, num_threads=1), KioskSettings(keep_dir=keep / "kept" if keep.is_file()
                                                                       else keep))
    with caplog.at_level("WARNING", logger="dhumandiff.serve"), ThreadServer(app) as srv, client(srv.url) as c:
        r = c.post("/api/generate", files=photo_files(), data={"scene": "garden", "seed": "5"})
    assert r.status_code == 200 and r.json()["image"].startswith("data:image/png;base64,")
    assert any("could not keep request" in rec.getMessage() for rec in caplog.records)


# ------------------------------------------------------------------------------------------ under load


@dataclass(frozen=True)
class Job:
    index: int
    seed: int
    scene: str
    layout: str


def test_load_50_requests_from_8_clients_no_lost_or_mixed_answers_and_memory_returns(
    server: KioskServer, reference: Any
) -> None:
    scenes = {s.id: s.prompt for s in presets.SCENES}
    layouts = [lay.id for lay in presets.LAYOUTS]
    with client(server.url) as c:
        for i in range(8):  # warm-up: allocator, runtime arenas, the worker and the anyio threads
            assert c.post("/api/generate", files=photo_files(),
                          data={"scene": list(scenes)[i % 4], "seed": str(i)}).status_code == 200
        before = c.get("/api/health").json()
    time.sleep(0.5)
    baseline = server.rss()

    jobs: queue.Queue[Job] = queue.Queue()
    for i in range(50):
        jobs.put(Job(i, 10_000 + 37 * i, list(scenes)[i % 4], layouts[i % len(layouts)]))
    answers: dict[int, tuple[Job, int, dict[str, Any]]] = {}
    busy: list[tuple[str | None, dict[str, Any]]] = []
    problems: list[str] = []
    peak = [baseline]
    done = threading.Event()

    def sample_memory() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], server.rss())

    def worker() -> None:
        with client(server.url) as c:
            while True:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    return
                for _ in range(300):
                    r = c.post("/api/generate", files=photo_files(),
                               data={"scene": job.scene, "layout": job.layout, "seed": str(job.seed)})
                    if r.status_code == 503:
                        busy.append((r.headers.get("retry-after"), r.json()))
                        time.sleep(min(int(r.headers.get("retry-after", "1")), 2))
                        continue
                    answers[job.index] = (job, r.status_code, r.json())
                    break
                else:
                    problems.append(f"request {job.index} was refused 300 times")

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    clients = [threading.Thread(target=worker) for _ in range(8)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(600)
    done.set()
    assert not problems and not any(t.is_alive() for t in clients), problems

    # nothing lost, nothing mixed up: 50 answers, each the portrait of its own seed, scene and layout
    assert sorted(answers) == list(range(50))
    ids = set()
    for job, status, d in answers.values():
        assert status == 200, d
        assert (d["seed"], d["scene"], d["layout"], d["prompt"]) == (job.seed, job.scene, job.layout,
                                                                     scenes[job.scene])
        np.testing.assert_array_equal(decode_data_url(d["image"]), reference(job.seed, scenes[job.scene], job.layout),
                                      err_msg=f"request {job.index} got another request's portrait")
        ids.add(d["request_id"])
    assert len(ids) == 50
    # every refusal is a well-formed busy answer, and the server counted exactly what it did
    for retry_after, body in busy:
        m = BUSY.match(body["error"])
        assert m and 1 <= int(m.group(1)) == body["ahead"] <= 5, body
        assert retry_after is not None and int(retry_after) >= 1 and body["code"] == 1 and body["type"] == "Busy"
    with client(server.url) as c:
        after = c.get("/api/health").json()
    assert after["completed"] - before["completed"] == 50
    assert after["refused"] - before["refused"] == len(busy)
    assert (after["running"], after["waiting"]) == (False, 0)

    # memory returns to within 32 MiB of the warmed-up baseline once the burst is over
    bound = baseline + 32 * 2**20
    end = time.monotonic() + 15
    rss = server.rss()
    while rss > bound and time.monotonic() < end:
        time.sleep(0.25)
        rss = server.rss()
    mib = 2**20
    print(f"load: 50 answers, {len(busy)} busy refusals; server RSS baseline {baseline / mib:.1f} MiB, peak "
          f"{peak[0] / mib:.1f} MiB, after {rss / mib:.1f} MiB")
    assert rss <= bound, (f"server RSS {rss / mib:.0f} MiB after the load, baseline {baseline / mib:.0f} MiB, "
                          f"peak {peak[0] / mib:.0f} MiB")


def test_nothing_is_written_to_disk_by_default(server: KioskServer) -> None:
    """Uploads (even ones big enough to spill out of memory) leave no file in TMPDIR or the working folder."""
    noise = png_bytes(np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8))
    assert 1.2 * 2**20 < len(noise) < 2 * 2**20  # over Starlette's 1 MB in-memory spool
    with client(server.url) as c:
        assert c.post("/api/generate", files=photo_files(), data={"scene": "city", "seed": "1"}).status_code == 200
        assert c.post("/api/generate", files=photo_files(a=noise), data={"scene": "city"}).status_code == 422
    # onnxruntime (1.32) drops a 51-byte ".ses" session marker of its telemetry library into TMPDIR when it
    # starts; that file holds no request data. Nothing else may be there, and no upload may stay open.
    assert [p.name for p in server.tmpdir.iterdir() if p.name != ".ses"] == []
    assert list(server.cwd.iterdir()) == []
    leftovers = [f.path for f in psutil.Process(server.pid).open_files() if str(server.tmpdir) in f.path]
    assert leftovers == []


def test_the_line_counts_cancelled_and_finished_jobs_out() -> None:
    from dhumandiff.serve.queue import Busy, GenerationQueue

    line = GenerationQueue(limit=1)
    gate, started = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert gate.wait(30)
        return "first"

    first = line.submit(slow)
    assert started.wait(30)
    waiting = line.submit(lambda: "second")
    with pytest.raises(Busy) as refused:
        line.submit(lambda: "third")
    assert refused.value.ahead == 2 and str(refused.value) == "busy, 2 ahead of you; try again in a moment"
    assert waiting.cancel()  # a guest who gives up frees their place
    replacement = line.submit(lambda: "replacement")
    gate.set()
    assert (first.result(30), replacement.result(30)) == ("first", "replacement")
    snap = line.snapshot()
    assert (snap["running"], snap["waiting"], snap["completed"], snap["refused"]) == (False, 0, 2, 1)
    line.shutdown()


def test_serve_refuses_a_bad_bundle_and_a_busy_port_with_one_line(bundle: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from dhumandiff.cli.main import main

    assert main(["serve", str(tmp_path / "no-bundle")]) == 10
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(bundle), "--port", str(taken.getsockname()[1])]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot listen on 127.0.0.1" in err
    assert main(["serve", str(bundle), "--queue", "-1"]) == 1
    assert "--queue must be 0 to 1000" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["serve", str(bundle), "--keep-dir", str(blocker / "kept")]) == 1  # refused at start-up
    err = capsys.readouterr().err
    assert "--keep-dir" in err and "cannot be created" in err and "Traceback" not in err


def test_face_endpoint_shows_the_face_or_says_why_not(server: KioskServer) -> None:
    """``POST /api/face``: the crop the generator will use, before generating; refusals in a guest's words (no CLI
    flags)."""
    from skimage import data as skdata

    two = png_bytes(np.concatenate([load_rgb(FACE_A.read_bytes()), load_rgb(FACE_B.read_bytes())], axis=1))
    with client(server.url) as c:
        r = c.post("/api/face", files={"photo": ("a.png", FACE_A.read_bytes(), "image/png")}, data={"person": "a"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["person"] == "a" and body["detector"] == "world" and body["warnings"] == []
        crop = decode_data_url(body["face"])
        assert crop.shape[:2] == (body["height"], body["width"]) and crop.std() > 10
        d = assert_one_line_error(c.post("/api/face", files={"photo": ("two.png", two, "image/png")},
                                         data={"person": "b"}), 422, 5, "2 faces", "only this person")
        assert "--face-index" not in d["error"]
        assert_one_line_error(c.post("/api/face", files={"photo": ("me.png", png_bytes(skdata.astronaut()),
                                                                   "image/png")}), 422, 4, "looks like a real photo")
        assert_one_line_error(c.post("/api/face", files={"photo": ("x.png", b"not a photo", "image/png")}), 400, 3,
                              "not an image")
        r = c.post("/api/generate", files=photo_files(a=two), data={"scene": "beach"})
        d = assert_one_line_error(r, 422, 5, "only this person")
        assert "--face-index" not in d["error"]

"""The kiosk refuses strangers: foreign ``Host`` names (DNS rebinding), cross-site POSTs, API calls without the
access token, clients that trickle their request or leave before their portrait, start-up options that would
make every request fail; and it stops within seconds, answering everyone who waits.

Real servers on 127.0.0.1 only (``dhumandiff serve`` as a child process, or the kiosk's own uvicorn server in a
thread), real HTTP clients (httpx, raw sockets where a client must misbehave), the real tiny-lcm ONNX bundle.
Every request is bounded in count and time.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from kiosk_fixtures import FACE_A, FACE_B, REPO, Gated, KioskServer, ThreadServer  # noqa: E402
from kiosk_fixtures import assert_one_line_error, client, decode_data_url, kiosk_bundle, photo_files  # noqa: E402

from dhumandiff.contract.images import load_rgb  # noqa: E402
from dhumandiff.errors import SettingsError  # noqa: E402
from dhumandiff.serve import presets  # noqa: E402
from dhumandiff.serve.app import KioskSettings, create_app  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
OTHER_NAME = "kiosk.example"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kiosk_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def generator(bundle: Path) -> Any:
    from dhumandiff.runtimes import load_bundle

    return load_bundle(bundle, num_threads=1)


@pytest.fixture(scope="module")
def server(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``dhumandiff serve --token TOKEN --allowed-host kiosk.example`` (default time limits)."""
    with KioskServer(bundle, tmp_path_factory.mktemp("kiosk-strangers"), "--allowed-host", OTHER_NAME,
                     token=TOKEN) as srv:
        yield srv


def portrait(generator: Any, scene: str, seed: int) -> np.ndarray:
    prompt = next(s.prompt for s in presets.SCENES if s.id == scene)
    return np.asarray(generator(load_rgb(FACE_A), load_rgb(FACE_B), prompt, seed=seed,
                                layout=presets.layout_boxes("side-by-side")[1]).image)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        time.sleep(0.02)


def raw_generate(port: int, seed: int, host: str = "127.0.0.1") -> socket.socket:
    """Send a whole, valid generate request on a raw socket and return it unread (the test decides when the
    client leaves)."""
    req = httpx.Request("POST", f"http://{host}:{port}/api/generate", files=photo_files(),
                        data={"scene": "wedding", "seed": str(seed)})
    body = req.read()
    head = (f"POST /api/generate HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {req.headers['content-type']}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head + body)
    return sock


def closed_after(sock: socket.socket, feed: bytes, interval: float, limit: float) -> tuple[float | None, bytes]:
    """Send ``feed`` one byte every ``interval`` s (then nothing) until the server closes the connection:
    (seconds until it did, None if it had not after ``limit`` s; every byte it answered)."""
    t0, got, i = time.monotonic(), b"", 0
    while time.monotonic() - t0 < limit:
        if i < len(feed):
            try:
                sock.sendall(feed[i : i + 1])
            except OSError:
                return time.monotonic() - t0, got
            i += 1
        if select.select([sock], [], [], interval)[0]:
            try:
                data = sock.recv(65536)
            except OSError:
                return time.monotonic() - t0, got
            if not data:
                return time.monotonic() - t0, got
            got += data
    return None, got


# ----------------------------------------------------------------------------------- who may ask at all


def test_a_host_header_that_is_not_the_kiosks_is_refused(server: KioskServer) -> None:
    """DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 sends ``Host: evil.example``."""
    port = server.port
    with client(server.url, timeout=10, token=TOKEN) as c:
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", "localhost.evil",
                     f"[::2]:{port}", "10.1.2.3", "", "a b", "x" * 5000 + ".example"):
            for path in ("/", "/api/health"):
                body = assert_one_line_error(c.get(path, headers={"Host": host}), 400, 1, "not one of this kiosk")
                assert body["type"] == "HostNotAllowed" and len(body["error"]) < 400
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost.:{port}", f"[::1]:{port}", "localhost",
                     f"{socket.gethostname()}:{port}", OTHER_NAME, f"{OTHER_NAME.upper()}:{port}"):
            assert c.get("/api/health", headers={"Host": host}).status_code == 200, host
    # HTTP/1.0 without any Host header
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /api/health HTTP/1.0\r\nX-Kiosk-Token: " + TOKEN.encode() + b"\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b"HostNotAllowed" in answer


CROSS_SITE = {
    "another site": {"Origin": "http://evil.example"},
    "another port of this host": {"Origin": "http://127.0.0.1:1"},
    "another scheme and port": {"Origin": "https://127.0.0.1"},
    "an opaque origin": {"Origin": "null"},
    "a browser's cross-site mark": {"Sec-Fetch-Site": "cross-site"},
    "a browser's same-site mark": {"Sec-Fetch-Site": "same-site"},
    "a referring page elsewhere": {"Referer": "http://evil.example/page.html"},
    "same-origin mark, foreign Origin": {"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"},
}
SAME_ORIGIN = {
    "the kiosk page": {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
    "a referrer on the kiosk": {"Referer": "http://127.0.0.1:{port}/"},
    "not a browser": {},
}


def test_cross_site_posts_are_refused_before_anything_runs(generator: Any) -> None:
    """A page elsewhere that posts a form (or a fetch) to the kiosk: 403, one JSON line, no job."""
    gated = Gated(generator)
    gated.release.set()
    app = create_app(gated, KioskSettings())
    with ThreadServer(app) as srv, client(srv.url, timeout=60) as c:
        for case, headers in CROSS_SITE.items():
            headers = {k: v.format(port=srv.port) for k, v in headers.items()}
            r = c.post("/api/generate", files=photo_files(), data={"scene": "beach", "seed": "1"}, headers=headers)
            body = assert_one_line_error(r, 403, 1, "cross-site request refused")
            assert body["type"] == "CrossSiteRequest", case
        assert gated.seeds == [] and c.get("/api/health").json()["completed"] == 0
        for case, headers in SAME_ORIGIN.items():
            headers = {k: v.format(port=srv.port) for k, v in headers.items()}
            r = c.post("/api/generate", files=photo_files(), data={"scene": "beach", "seed": "1"}, headers=headers)
            assert r.status_code == 200, (case, r.text)
        np.testing.assert_array_equal(decode_data_url(r.json()["image"]), portrait(generator, "beach", 1))


def test_beyond_loopback_every_api_call_needs_the_access_token(server: KioskServer, generator: Any) -> None:
    log = server.log.read_text()
    assert f"access token: open http://127.0.0.1:{server.port}/?token={TOKEN} " in log
    assert f'"X-Kiosk-Token: {TOKEN}"' in log
    with client(server.url, timeout=60) as c:
        for headers in ({}, {"X-Kiosk-Token": "wrong-token-0123456789"}, {"X-Kiosk-Token": TOKEN[:-1]},
                        {"Authorization": "Basic " + TOKEN}, {"X-Kiosk-Token": "t\u00e9st".encode("latin-1")}):
            for path in ("/api/health", "/api/presets"):
                r = c.get(path, headers=headers)
                assert_one_line_error(r, 401, 1, "needs its access token", "X-Kiosk-Token")
                assert r.headers["www-authenticate"] == "Bearer"
        r = c.post("/api/generate", files=photo_files(), data={"scene": "city", "seed": "2"})
        assert_one_line_error(r, 401, 1, "needs its access token")
        assert c.get("/api/health", headers={"X-Kiosk-Token": TOKEN}).status_code == 200
        assert c.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        # the page itself holds nothing secret; opened with the token, it leaves it as a same-site cookie
        page = c.get("/")
        assert page.status_code == 200 and "set-cookie" not in page.headers
        page = c.get(f"/?token={TOKEN}")
        cookie = page.headers["set-cookie"]
        assert page.status_code == 200 and f"dhumandiff_kiosk_token={TOKEN}" in cookie
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        assert "set-cookie" not in c.get("/?token=wrong-token-0123456789").headers
        assert c.get("/api/health").status_code == 200  # the client now holds the cookie
        r = c.post("/api/generate", files=photo_files(), data={"scene": "city", "seed": "2"})
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(decode_data_url(r.json()["image"]), portrait(generator, "city", 2))


def test_the_token_is_offered_beyond_loopback_and_explained_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    from dhumandiff.cli.commands_serve import resolve_token
    from dhumandiff.cli.main import main

    made = {resolve_token("0.0.0.0", None) for _ in range(3)}
    assert len(made) == 3 and all(KioskSettings(token=t).token == t for t in made)  # fresh, and well-formed
    assert resolve_token("192.168.1.20", None) is not None and resolve_token("::", None) is not None
    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert resolve_token(loopback, None) is None
    assert resolve_token("0.0.0.0", TOKEN) == TOKEN
    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--token", "--allowed-host", "X-Kiosk-Token: TOKEN", "?token=TOKEN", "401", "403"):
        assert phrase in text, phrase


# -------------------------------------------------------------------- clients that hold the kiosk up


def test_a_guest_who_leaves_costs_nothing_more(generator: Any, tmp_path: Path) -> None:
    """A waiting job whose client left is skipped; a running one stops at its next step and keeps nothing; the
    guest who stayed is served next."""
    gated = Gated(generator)
    keep = tmp_path / "kept"
    app = create_app(gated, KioskSettings(queue=2, keep_dir=keep))
    with ThreadServer(app) as srv, client(srv.url, timeout=60) as c:
        health = lambda: c.get("/api/health").json()  # noqa: E731
        first = raw_generate(srv.port, seed=1)
        assert gated.entered.wait(30), "the first request never reached the generator"
        second = raw_generate(srv.port, seed=2)
        wait_for(lambda: health()["waiting"] == 1, "the second request waits")
        second.close()
        wait_for(lambda: health()["waiting"] == 0, "the waiting job is dropped")
        first.close()
        wait_for(lambda: health().get("dropped") == 2, "the running job is dropped")
        stayed: dict[str, Any] = {}
        t = threading.Thread(target=lambda: stayed.update(r=client(srv.url, timeout=60).post(
            "/api/generate", files=photo_files(), data={"scene": "wedding", "seed": "3"})))
        t.start()
        wait_for(lambda: health()["waiting"] == 1, "the third request waits")
        gated.release.set()
        t.join(60)
        snap = health()
    assert stayed["r"].status_code == 200, stayed["r"].text
    np.testing.assert_array_equal(decode_data_url(stayed["r"].json()["image"]), portrait(generator, "wedding", 3))
    assert gated.seeds == [1, 3]            # the job whose guest left while it waited never ran
    assert gated.steps_done == 1 + 4        # the one whose guest left while it ran stopped after its first step
    assert (snap["completed"], snap["dropped"], snap["running"], snap["waiting"]) == (1, 2, False, 0)
    assert len(list(keep.iterdir())) == 1   # and nothing of it was kept


def test_slow_and_silent_connections_are_closed_within_seconds(server: KioskServer) -> None:
    """Headers at 2 bytes/s, or a connection that sends nothing, used to hold a connection for ever."""
    request = f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Kiosk-Token: {TOKEN}\r\n\r\n".encode()
    results: dict[str, tuple[float | None, bytes]] = {}

    def probe(name: str, feed: bytes) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            results[name] = closed_after(s, feed, 0.5, limit=15)

    threads = [threading.Thread(target=probe, args=("trickle", request)),
               threading.Thread(target=probe, args=("silent", b""))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for name, (seconds, answered) in results.items():
        assert seconds is not None and 4 <= seconds <= 8, (name, seconds)  # the 5 s header deadline
        assert answered == b"", (name, answered)
    assert len(request) * 0.5 > 20  # the trickle would have needed more than 20 s
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:  # a prompt client is served
        s.sendall(request)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_a_body_that_trickles_is_cut_off(generator: Any) -> None:
    app = create_app(generator, KioskSettings())
    with ThreadServer(app, header_timeout=1.0, body_timeout=2.0) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Type: multipart/"
                      "form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n".encode())
            seconds, answered = closed_after(s, b"x" * 1000, 0.25, limit=10)
        assert seconds is not None and 1.5 <= seconds <= 4, seconds
        with client(srv.url, timeout=30) as c:  # it carries on
            assert c.post("/api/generate", files=photo_files(), data={"scene": "city", "seed": "4"}).status_code \
                == 200


SLOW_KIOSK = """
import socket, sys, time
for name in ("torch", "diffusers", "transformers"):
    sys.modules[name] = None
from dhumandiff.runtimes import load_bundle
from dhumandiff.serve.app import KioskSettings, create_app
from dhumandiff.serve.server import KioskUvicorn


class Slow:
    '''The real bundle with every denoising step 1 s longer: a 50-step portrait takes about a minute, as an
    sd15-size bundle's does on a small CPU.'''

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, progress=None, **kwargs):
        def step(i, n):
            time.sleep(1.0)
            print(f"step {i}/{n}", flush=True)
            if progress is not None:
                progress(i, n)
        return self.inner(*args, progress=step, **kwargs)


app = create_app(Slow(load_bundle(sys.argv[1], num_threads=1)), KioskSettings(queue=2, steps=50))
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(f"kiosk on http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
KioskUvicorn(app).run(sockets=[sock])
"""


def test_sigterm_answers_everyone_503_and_stops_within_seconds(bundle: Path, tmp_path: Path) -> None:
    """It used to wait for the running portrait (51 s measured) and leave the waiting guests hanging."""
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_KIOSK, str(bundle)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for(lambda: "kiosk on" in log.read_text() or proc.poll() is not None, "the kiosk starts", 60)
        m = re.search(r"kiosk on (http://127\.0\.0\.1:\d+)/", log.read_text())
        assert m, log.read_text()
        url = m.group(1)
        answers: dict[int, tuple[Any, float]] = {}

        def guest(seed: int) -> None:
            with client(url, timeout=90) as c:
                try:
                    r = c.post("/api/generate", files=photo_files(), data={"scene": "beach", "seed": str(seed)})
                except httpx.TransportError as exc:  # the old shutdown dropped the waiting guests' connections
                    r = exc
                answers[seed] = (r, time.monotonic())

        guests = [threading.Thread(target=guest, args=(1,))]
        guests[0].start()
        wait_for(lambda: "step 1/50" in log.read_text(), "the first portrait is under way")
        guests += [threading.Thread(target=guest, args=(seed,)) for seed in (2, 3)]
        for t in guests[1:]:
            t.start()
        with client(url, timeout=10) as c:
            wait_for(lambda: c.get("/api/health").json()["waiting"] == 2, "two guests wait")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in guests:
            t.join(70)
        rc = proc.wait(70)
        stopped = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    print(f"SIGTERM with one portrait running and two waiting: every guest answered within "
          f"{max(at for _, at in answers.values()) - t0:.2f} s, process gone after {stopped:.2f} s")
    for seed in (1, 2, 3):
        r, at = answers[seed]
        assert isinstance(r, httpx.Response), (seed, r)
        body = assert_one_line_error(r, 503, 1, "shutting down")
        assert body["type"] == "ShuttingDown" and int(r.headers["retry-after"]) >= 1
        assert at - t0 < 3, (seed, at - t0)
    assert stopped < 8 and rc in (0, -signal.SIGTERM), (stopped, rc, text)
    assert "Traceback" not in text and "step 5/50" not in text, text


def test_a_job_stuck_in_one_long_call_does_not_hold_the_shutdown(generator: Any) -> None:
    """A generation that cannot stop between steps (one long native call) is left behind: every guest still
    gets the 503 at once and the server is gone within seconds."""
    gated = Gated(generator)  # never released while the server stops
    app = create_app(gated, KioskSettings(queue=1))
    srv = ThreadServer(app).__enter__()
    answers: dict[int, Any] = {}
    try:
        def guest(seed: int) -> None:
            with client(srv.url, timeout=60) as c:
                answers[seed] = c.post("/api/generate", files=photo_files(), data={"scene": "city", "seed": str(seed)})

        guests = [threading.Thread(target=guest, args=(seed,)) for seed in (1, 2)]
        guests[0].start()
        assert gated.entered.wait(30)
        guests[1].start()
        with client(srv.url, timeout=10) as c:
            wait_for(lambda: c.get("/api/health").json()["waiting"] == 1, "the second guest waits")
        t0 = time.monotonic()
        srv.server.should_exit = True  # what SIGTERM does
        for t in guests:
            t.join(30)
        answered = time.monotonic() - t0
        srv.thread.join(30)
        stopped = time.monotonic() - t0
    finally:
        gated.release.set()
        srv.__exit__()
    for seed in (1, 2):
        assert_one_line_error(answers[seed], 503, 1, "shutting down")
    assert answered < 2 and stopped < 6 and not srv.thread.is_alive(), (answered, stopped)


# ------------------------------------------------------------------------ what a refusal may quote back


def test_refusals_quote_at_most_200_characters_of_any_input(server: KioskServer) -> None:
    huge = "z" * 100_000
    with client(server.url, timeout=60, token=TOKEN) as c:
        cases = [
            (c.post("/api/generate", files=photo_files(), data={"scene": huge}), 422, 6),
            (c.post("/api/generate", files=photo_files(), data={"scene": "beach", "layout": huge}), 422, 7),
            (c.post("/api/generate", files=photo_files(), data={"scene": "beach", "seed": "9" * 5000}), 422, 1),
            (c.post("/api/generate", files={"face_a": ("n" * 4000 + ".png", b"not a photo", "image/png"),
                                            "face_b": photo_files()["face_b"]}, data={"scene": "beach"}), 400, 3),
            (c.post("/api/generate", files=photo_files(), data={"scene": "beach"},
                    headers={"Origin": "http://" + "o" * 5000 + ".example"}), 403, 1),
            (c.get("/api/health", headers={"Host": "h" * 5000 + ".example"}), 400, 1),
        ]
    for r, status, code in cases:
        body = assert_one_line_error(r, status, code)
        assert len(body["error"]) <= 400 and len(r.content) < 800, (status, len(body["error"]))
        assert not re.search(r"([znoh9])\1{200}", body["error"]), body["error"]


# ----------------------------------------------------------------- start-up options that break every request


START_REFUSALS = [
    # (id, options, fragment of the one line)
    ("steps past the scheduler", ["--steps", "100000"], "does not fit this bundle's scheduler"),
    ("steps past LCM's 50", ["--steps", "51"], "does not fit this bundle's scheduler"),
    ("upload limit inf", ["--max-upload-mb", "inf"], "--max-upload-mb must be a number from 0.1 to 100"),
    ("upload limit nan", ["--max-upload-mb", "nan"], "--max-upload-mb must be"),
    ("upload limit 1e9", ["--max-upload-mb", "1e9"], "--max-upload-mb must be"),
    ("upload limit 0", ["--max-upload-mb", "0"], "--max-upload-mb must be"),
    ("pixel limit 10^15", ["--max-pixels", "1000000000000000"], "--max-pixels must be 4096 to 40000000"),
    ("pixel limit 0", ["--max-pixels", "0"], "--max-pixels must be"),
    ("queue -1", ["--queue", "-1"], "--queue must be 0 to 1000"),
    ("short token", ["--token", "secret"], "--token must be 16 to 256"),
    ("allowed host with a scheme", ["--allowed-host", "http://kiosk.example/"], "is not a host name"),
    ("guests 65", ["--guests", "65"], "--guests must be 0 to 64"),
    ("guest idle nan", ["--guest-idle-s", "nan"], "--guest-idle-s must be 1 to 86400 seconds"),
]


@pytest.mark.parametrize("case", START_REFUSALS, ids=[c[0] for c in START_REFUSALS])
def test_start_up_options_that_break_every_request_are_refused(bundle: Path, tmp_path: Path, case: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from dhumandiff.cli.main import main

    _, options, fragment = case
    keep = tmp_path / "kept"
    assert main(["serve", str(bundle), "--port", "0", "--keep-dir", str(keep), *options]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in captured.err, captured.err
    assert "kiosk on" not in captured.out and not keep.exists()  # refused before anything was made


def test_the_same_limits_hold_for_the_python_api(generator: Any) -> None:
    for kwargs in ({"max_upload_mb": float("inf")}, {"max_upload_mb": float("nan")}, {"max_pixels": 10**15},
                   {"queue": -1}, {"token": "short"}, {"allowed_hosts": ("a/b",)}):
        with pytest.raises(SettingsError):
            KioskSettings(**kwargs)
    with pytest.raises(SettingsError, match="does not fit this bundle's scheduler"):
        create_app(generator, KioskSettings(steps=100_000))
    assert create_app(generator, KioskSettings(steps=50)).state.settings.steps == 50  # LCM's most

"""Shared set-up of the kiosk tests: one tiny-lcm ONNX bundle per session, and real servers on loopback.

``KioskServer`` runs ``dhumandiff serve`` as its own process, with torch made unimportable (so it proves the
kiosk is torch-free, and its memory can be measured on its own);
``ThreadServer`` runs uvicorn in a thread of the test process, for an app built around a wrapped generator.
"""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FACE_A = REPO / "examples" / "face_a.png"
FACE_B = REPO / "examples" / "face_b.png"

_BUNDLE: dict[str, Path] = {}

#: ``dhumandiff`` with torch, diffusers and transformers made unimportable: the kiosk must serve without them.
TORCH_FREE_CLI = (
    "import sys\n"
    "for name in ('torch', 'diffusers', 'transformers'):\n"
    "    sys.modules[name] = None\n"
    "from dhumandiff.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def kiosk_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded 4-step student exported to ONNX, once per test session (about 10 s)."""
    if "path" not in _BUNDLE:
        pytest.importorskip("torch")
        from dhumandiff.export.bundle import export_bundle
        from dhumandiff.model.generate import load_model

        out = tmp_path_factory.mktemp("kiosk") / "tiny-lcm-onnx"
        export_bundle(load_model("tiny-lcm"), out, "onnx", "fp32", source_model="tiny-lcm")
        _BUNDLE["path"] = out
    return _BUNDLE["path"]


def photo_files(a: bytes | None = None, b: bytes | None = None) -> dict[str, tuple[str, bytes, str]]:
    """The multipart ``files`` for one request (the example faces unless given)."""
    return {"face_a": ("face_a.png", FACE_A.read_bytes() if a is None else a, "image/png"),
            "face_b": ("face_b.png", FACE_B.read_bytes() if b is None else b, "image/png")}


def decode_data_url(url: str) -> np.ndarray:
    from PIL import Image

    head, data = url.split(",", 1)
    assert head == "data:image/png;base64", head
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def client(url: str, timeout: float = 120.0, token: str | None = None) -> Any:
    """An httpx client for the kiosk at ``url`` (sending its access ``token`` when it has one)."""
    import httpx

    headers = {"X-Kiosk-Token": token} if token else None
    return httpx.Client(base_url=url, timeout=timeout, trust_env=False, headers=headers)


def assert_one_line_error(r: Any, status: int, code: int, *fragments: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"error", "code", "type"}, body
    assert body["code"] == code, body
    assert "\n" not in body["error"] and "Traceback" not in body["error"] and body["error"].strip()
    for f in fragments:
        assert f in body["error"], body
    return body


class Gated:
    """A real generator whose calls wait for ``release``: lets a test fill the line without racing it. ``seeds``
    lists the seed of every call that reached it; ``steps_done`` counts the denoising steps it ran."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seeds: list[int] = []
        self.steps_done = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.seeds.append(kwargs.get("seed"))
        self.entered.set()
        assert self.release.wait(60), "the test never released the generator"
        progress = kwargs.pop("progress", None)

        def step(i: int, n: int) -> None:
            self.steps_done += 1
            if progress is not None:
                progress(i, n)

        return self.inner(*args, progress=step, **kwargs)


def wait_healthy(url: str, deadline_s: float = 60.0, proc: subprocess.Popen | None = None,
                 log: Path | None = None, token: str | None = None) -> None:
    import httpx

    end = time.monotonic() + deadline_s
    with client(url, timeout=5, token=token) as c:
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the kiosk exited with {proc.returncode}:\n{log.read_text() if log else ''}")
            try:
                if c.get("/api/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"the kiosk at {url} did not answer /api/health in {deadline_s} s")


class KioskServer:
    """``dhumandiff serve BUNDLE --port 0`` as a child process without torch, with its own empty TMPDIR and
    working folder (``bundle`` None: no BUNDLE argument, the embedded default)."""

    def __init__(self, bundle: Path | None, workdir: Path, *args: str, token: str | None = None) -> None:
        self.bundle, self.workdir, self.args, self.token = bundle, workdir, args, token
        self.tmpdir = workdir / "tmp"
        self.cwd = workdir / "cwd"
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "KioskServer":
        self.tmpdir.mkdir(parents=True)
        self.cwd.mkdir(parents=True)
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "TMPDIR": str(self.tmpdir), "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        cmd = [sys.executable, "-c", TORCH_FREE_CLI, "serve", *([str(self.bundle)] if self.bundle else []),
               "--port", "0", "--threads", "1",
               *(("--token", self.token) if self.token else ()), *self.args]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env)
        end = time.monotonic() + 120
        while not self.url:
            text = self.log.read_text(errors="replace")
            m = re.search(r"kiosk on (http://127\.0\.0\.1:\d+)/", text)
            if m:
                self.url = m.group(1)
            elif self.proc.poll() is not None or time.monotonic() > end:
                self.__exit__()
                raise AssertionError(f"dhumandiff serve did not start:\n{text}")
            else:
                time.sleep(0.1)
        wait_healthy(self.url, proc=self.proc, log=self.log, token=self.token)
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ThreadServer:
    """The kiosk's own uvicorn server (``dhumandiff serve``'s) for ``app`` on a free loopback port, in a thread of
    this process; ``timeouts`` shortens its read deadlines (``header_timeout``, ``body_timeout``)."""

    def __init__(self, app: Any, **timeouts: float) -> None:
        from dhumandiff.serve.server import KioskUvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = KioskUvicorn(app, log_level="warning", **timeouts)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        wait_healthy(self.url)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()

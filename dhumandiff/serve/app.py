"""The kiosk's HTTP app (FastAPI): an upload page and a small JSON API over one bundle.

``GET /`` the page (self-contained: no CDN, enforced by its Content-Security-Policy), ``GET /api/health``,
``GET /api/presets``, ``POST /api/generate`` (multipart: ``face_a``, ``face_b``, ``prompt`` or ``scene``,
``layout``, ``seed``) -> JSON with the PNG as a data URL, its seed and timings (``?format=png``: the PNG itself).

Torch-free on purpose: the bundle runs through :mod:`dhumandiff.runtimes`, so a kiosk box needs only the
runtime extra and ``[serve]``. Generation runs on one worker thread behind a bounded line
(:mod:`dhumandiff.serve.queue`); photos are decoded there too, so at most one decoded pair is in memory. Uploads
live in memory (or Starlette's self-deleting spool files) for the length of the request; nothing is written to
disk unless ``keep_dir`` is set. Every refusal is a 4xx/5xx JSON ``{"error": one line, "code", "type"}`` whose
``error`` is the same line the CLI would print.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import math
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    DHumanDiffError,
    FaceNotFoundError,
    InputImageError,
    LayoutError,
    MultipleFacesError,
    NumericalError,
    PromptError,
)
from ..runtimes.generator import SettingsError
from ..utils.atomic import atomic_dir
from ..contract.images import load_rgb
from . import presets
from .queue import Busy, GenerationQueue

log = logging.getLogger("dhumandiff.serve")

MAX_PROMPT_CHARS = 1000
_MULTIPART_SLACK = 64 * 1024  # form fields and multipart framing on top of the two photos
_CSP = ("default-src 'none'; img-src 'self' data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class KioskSettings:
    """Limits and options of one kiosk (``dhumandiff serve`` flags)."""

    queue: int = 4                      # requests that may wait behind the running one
    max_upload_mb: float = 10.0         # per photo
    max_pixels: int = 16_000_000        # per photo, checked from the header before decoding
    keep_dir: Path | None = None        # keep photos + portrait + request.json per answer (off by default)
    steps: int | None = None            # sampling steps (None: the bundle's default)
    title: str = "dhumandiff kiosk"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass
class _Job:
    face_a: bytes
    face_b: bytes
    names: tuple[str, str]
    prompt: str
    scene: str | None
    layout: str
    boxes: list[list[float]]
    seed: int
    request_id: str
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _Answer:
    png: bytes
    size: tuple[int, int]
    timings: dict[str, float]
    settings: dict[str, Any]


class UploadTooLarge(InputImageError):
    """A photo over the kiosk's upload limit (HTTP 413; exit code 3 like any unusable photo)."""


_STATUS: dict[type, int] = {UploadTooLarge: 413, InputImageError: 400, FaceNotFoundError: 422,
                             MultipleFacesError: 422, PromptError: 422, LayoutError: 422, SettingsError: 422,
                             NumericalError: 500}


def _status(exc: DHumanDiffError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 400


def _error(status: int, message: str, code: int, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    line = message.splitlines()[0] if message else kind
    return JSONResponse({"error": line, "code": code, "type": kind}, status_code=status, headers=headers)


def _suffix(filename: str | None) -> str:
    suffix = Path(filename or "").suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".img"


def _load_page(title: str) -> str:
    text = resources.files("dhumandiff.serve").joinpath("page.html").read_text(encoding="utf-8")
    return text.replace("{{TITLE}}", title.replace("&", "&amp;").replace("<", "&lt;"))


def create_app(
    bundle: str | os.PathLike | Any,
    settings: KioskSettings | None = None,
    *,
    device: str = "cpu",
    runtime: str | None = None,
    num_threads: int | None = None,
    warm: bool = True,
) -> FastAPI:
    """The kiosk app over ``bundle`` (a bundle folder, or an already loaded generator from ``load_bundle``).

    A folder is loaded (and its sha256 checked) here, so a bad bundle fails before the server listens; with
    ``warm`` every graph is loaded too, so the first guest does not pay for it.
    """
    cfg = settings or KioskSettings()
    if cfg.max_upload_mb <= 0 or cfg.max_pixels <= 0:
        raise ValueError("max_upload_mb and max_pixels must be positive")
    if isinstance(bundle, (str, os.PathLike)):
        from ..runtimes import load_bundle

        gen = load_bundle(bundle, device=device, runtime=runtime, num_threads=num_threads)
    else:
        gen = bundle
    manifest = gen.manifest
    if warm:
        _load_graphs(gen)
    line = GenerationQueue(cfg.queue)
    body_limit = 2 * cfg.max_upload_bytes + _MULTIPART_SLACK
    page = _load_page(cfg.title)

    def run(job: _Job) -> _Answer:
        """On the worker thread: decode both photos, generate, encode the PNG (and keep it if configured)."""
        started = time.perf_counter()
        t0 = time.perf_counter()
        face_a = load_rgb(job.face_a, f"photo a ({job.names[0]})", max_pixels=cfg.max_pixels)
        face_b = load_rgb(job.face_b, f"photo b ({job.names[1]})", max_pixels=cfg.max_pixels)
        decode = time.perf_counter() - t0
        res = gen(face_a, face_b, job.prompt, seed=job.seed, layout=job.boxes, steps=cfg.steps)
        del face_a, face_b
        buf = io.BytesIO()
        res.image.save(buf, format="PNG")
        timings = {"queue_wait": started - job.submitted, "read_photos": decode,
                   **{k: float(v) for k, v in res.timings.items()}}
        answer = _Answer(buf.getvalue(), res.image.size, timings, dict(res.settings))
        if cfg.keep_dir is not None:
            try:  # archiving is best-effort: a full or read-only disk must not cost the guest the portrait
                _keep(job, answer)
            except OSError as exc:
                log.warning("could not keep request %s in %s (%s); the guest still gets the portrait",
                            job.request_id[:8], cfg.keep_dir, exc.strerror or exc)
        return answer

    def _keep(job: _Job, answer: _Answer) -> None:
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{job.request_id[:8]}"
        with atomic_dir(Path(cfg.keep_dir) / name) as tmp:  # type: ignore[arg-type]
            (tmp / f"face_a{_suffix(job.names[0])}").write_bytes(job.face_a)
            (tmp / f"face_b{_suffix(job.names[1])}").write_bytes(job.face_b)
            (tmp / "portrait.png").write_bytes(answer.png)
            (tmp / "request.json").write_text(json.dumps(
                {"request_id": job.request_id, "prompt": job.prompt, "scene": job.scene, "layout": job.layout,
                 "seed": job.seed, "timings": answer.timings, "settings": answer.settings}, indent=2, default=str))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        line.shutdown()

    app = FastAPI(title=cfg.title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue = line
    app.state.settings = cfg
    app.state.generator = gen

    # ----------------------------------------------------------------------------------- refusals (JSON)

    @app.exception_handler(DHumanDiffError)
    async def _user_error(_: Request, exc: DHumanDiffError) -> JSONResponse:
        return _error(_status(exc), str(exc), exc.exit_code, type(exc).__name__)

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"error": str(exc), "code": 1, "type": "Busy", "ahead": exc.ahead,
                             "retry_after": exc.retry_after}, status_code=503,
                            headers={"Retry-After": str(exc.retry_after)})

    def _too_large() -> JSONResponse:
        return _error(413, f"the upload is too large: each photo may be at most {cfg.max_upload_mb:g} MB; use "
                      "smaller photos", InputImageError.exit_code, "InputImageError")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # FastAPI's max_body_size counting a body sent without Content-Length
            return _too_large()
        return _error(exc.status_code, str(exc.detail), 1, "HTTPException", headers=getattr(exc, "headers", None))

    @app.middleware("http")
    async def _announced_size(request: Request, call_next: Any) -> Response:
        """Refuse an announced oversize body before reading it, as JSON (FastAPI's own answer is plain text)."""
        length = request.headers.get("content-length", "")
        if request.url.path == "/api/generate" and length.isdigit() and int(length) > body_limit:
            return _too_large()
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def _bad_form(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return _error(422, f"bad form field {where}: {first.get('msg', 'invalid')}", 1, "RequestValidationError")

    # ----------------------------------------------------------------------------------------- routes

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store"})

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": manifest.model_name, "runtime": manifest.runtime,
                "image_size": list(manifest.image_size), "steps": cfg.steps or manifest.defaults.steps,
                **line.snapshot()}

    @app.get("/api/presets")
    async def get_presets() -> dict[str, Any]:
        return {**presets.as_json(), "limits": {"max_upload_mb": cfg.max_upload_mb, "max_pixels": cfg.max_pixels,
                                                "queue": cfg.queue}}

    @app.post("/api/generate", max_body_size=body_limit)
    async def generate(
        face_a: UploadFile | None = File(None, description="Photo of person a (one face)."),
        face_b: UploadFile | None = File(None, description="Photo of person b (one face)."),
        prompt: str = Form("", description="Scene naming both people; empty: the scene preset's prompt."),
        scene: str = Form("", description="Preset scene id (GET /api/presets)."),
        layout: str = Form("", description="Layout id (GET /api/presets); empty: side by side."),
        seed: str = Form("", description="Non-negative integer; empty: a random one (echoed back)."),
        format: str = Query("json", pattern="^(json|png)$", description="json (data URL + timings) or png."),
    ) -> Response:
        t_request = time.perf_counter()
        photos = []
        for label, upload in (("a", face_a), ("b", face_b)):
            if upload is None:
                raise InputImageError(f"photo {label} is missing: upload a photo of person {label} as face_{label}")
            data = await upload.read()
            name = Path(upload.filename or f"face_{label}").name
            if not data:
                raise InputImageError(f"photo {label} ({name}) is empty (0 bytes): upload the photo again")
            if len(data) > cfg.max_upload_bytes:
                raise UploadTooLarge(f"photo {label} ({name}) is {len(data) / 2**20:.1f} MB, over the "
                                      f"{cfg.max_upload_mb:g} MB limit: use a smaller photo")
            photos.append((data, name))
        if len(prompt) > MAX_PROMPT_CHARS:
            raise PromptError(f"the prompt is {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS}")
        text, scene_id = presets.scene_prompt(scene, prompt)
        layout_id, boxes = presets.layout_boxes(layout)
        seed_value = _parse_seed(seed)
        rid = uuid.uuid4().hex
        job = _Job(photos[0][0], photos[1][0], (photos[0][1], photos[1][1]), text, scene_id, layout_id, boxes,
                   seed_value, rid)
        del photos
        try:
            answer = await asyncio.wrap_future(line.submit(run, job))
        except (DHumanDiffError, Busy):
            raise
        except Exception as exc:  # a bug, not the guest's mistake: details to the log, one line to the guest
            log.error("request %s failed", rid, exc_info=exc)
            return _error(500, f"internal error ({type(exc).__name__}); the kiosk log has the details", 1,
                          "InternalError")
        answer.timings["request_total"] = time.perf_counter() - t_request
        meta = {"request_id": rid, "seed": seed_value, "prompt": text, "scene": scene_id, "layout": layout_id}
        if format == "png":
            return Response(answer.png, media_type="image/png", headers={
                "Cache-Control": "no-store", "X-Request-Id": rid, "X-Seed": str(seed_value),
                "X-Generation-Seconds": f"{answer.timings.get('total', math.nan):.4f}",
                "X-Queue-Wait-Seconds": f"{answer.timings['queue_wait']:.4f}"})
        return JSONResponse({
            **meta, "image": "data:image/png;base64," + base64.b64encode(answer.png).decode("ascii"),
            "width": answer.size[0], "height": answer.size[1],
            "timings": {k: round(v, 4) for k, v in answer.timings.items()},
            "steps": answer.settings.get("steps"), "runtime": answer.settings.get("runtime"),
        }, headers={"Cache-Control": "no-store"})

    return app


def _load_graphs(gen: Any) -> None:
    """Load every graph of the bundle now (runtimes load them lazily on first use)."""
    handle = getattr(gen.runner, "handle", None)
    if handle is not None:
        for name in gen.manifest.components:
            handle(name)


def _parse_seed(seed: str) -> int:
    s = (seed or "").strip()
    if not s:
        return secrets.randbelow(2**31)
    try:
        value = int(s)
    except ValueError:
        value = -1
    if value < 0 or value >= 2**63:
        raise SettingsError(f"seed must be a whole number from 0 to 2^63-1 (got {seed!r}); leave it empty for a "
                              "random one")
    return value

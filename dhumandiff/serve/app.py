"""The kiosk's HTTP app (FastAPI): an upload page and a small JSON API over one bundle.

``GET /`` the page (self-contained: no CDN, enforced by its Content-Security-Policy), ``GET /api/health``,
``GET /api/presets``, ``POST /api/generate`` (multipart: ``face_a``, ``face_b``, ``prompt`` or ``scene``,
``layout``, ``seed``, ``guest``) -> JSON with the PNG as a data URL, its seed and timings (``?format=png``: the PNG
itself), ``POST /api/forget`` (``guest``).

Another scene for the same couple (:mod:`dhumandiff.serve.guests`): ``guest=new`` with the photos makes the answer
carry a guest id and the kiosk hold the two decoded photos in memory; ``guest=ID`` without photos makes another
portrait of them, which skips decoding, face detection and the face encoders (the bundle's conditioning cache), and
``guest=ID`` with photos replaces them. ``POST /api/forget`` (the page's "New guest", or the page closing), idle
time (``guest_idle_s``) and a full book (``guests``) forget a guest, photos and conditioning together.

Torch-free on purpose: the bundle runs through :mod:`dhumandiff.runtimes`, so a kiosk box needs only the
runtime extra and ``[serve]``. Generation runs on one worker thread behind a bounded line
(:mod:`dhumandiff.serve.queue`); photos are decoded there too, so at most one decoded pair is in memory besides
the held guests' (at most ``guests`` pairs). Uploads live in memory (or Starlette's self-deleting spool files) for
the length of the request; nothing is written to disk unless ``keep_dir`` is set. Every refusal is a 4xx/5xx JSON
``{"error": one line, "code", "type"}`` whose ``error`` is the same line the CLI would print, quoting at most 200
characters of anything the guest sent.

Strangers are refused before any route runs (:class:`_Gate`): a ``Host`` that is not one of the kiosk's own
names (400: a web page the kiosk's browser opens cannot reach it through DNS rebinding), a POST that a browser
marks as coming from another site (403: ``Sec-Fetch-Site``, ``Origin``, ``Referer``), and, when the kiosk has
an access token (``token``; ``dhumandiff serve`` makes one whenever it listens beyond loopback), an API call
without it (401). A guest whose connection closes before the portrait is ready costs nothing more: a waiting job
is skipped, a running one stops at its next step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import socket
import time
import urllib.parse
import uuid
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import cookie_parser

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
from ..contract import schedulers
from ..contract.images import MAX_PIXELS, load_image, load_rgb
from ..runtimes.conditioning_cache import ConditioningCache, photo_digest
from . import presets
from .guests import Guest, GuestBook
from .presets import shown
from .queue import Busy, GenerationQueue, ShuttingDown, Stopped

log = logging.getLogger("dhumandiff.serve")

MAX_PROMPT_CHARS = 1000
MAX_UPLOAD_MB = 100.0   # a 40 MP photo (the loader's ceiling) as a PNG is about this size
MIN_UPLOAD_MB = 0.1
MIN_PIXELS = 64 * 64
MAX_LINE_CHARS = 600    # any refusal line, whatever it quotes
TOKEN_HEADER = "X-Kiosk-Token"
UPLOAD_PATHS = ("/api/generate", "/api/face")  # the routes that take photos (and their body limit)
TOKEN_COOKIE = "dhumandiff_kiosk_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{16,256}")
_HOST_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_MULTIPART_SLACK = 64 * 1024  # form fields and multipart framing on top of the two photos
_GUEST_RE = "^(|new|[0-9a-f]{32})$"  # the guest form field: none, a new guest, or a guest id
_SWEEP_S = 15.0               # how often idle guests are looked for (also on every generate/forget/health)
_CSP = ("default-src 'none'; img-src 'self' data: blob:; media-src mediastream: blob:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class KioskSettings:
    """Limits and options of one kiosk (``dhumandiff serve`` flags)."""

    queue: int = 4                      # requests that may wait behind the running one
    max_upload_mb: float = 10.0         # per photo
    max_pixels: int = 16_000_000        # per photo, checked from the header before decoding
    keep_dir: Path | None = None        # keep photos + portrait + request.json per answer (off by default)
    steps: int | None = None            # sampling steps (None: the bundle's default)
    title: str = "dhumandiff kiosk"
    allowed_hosts: tuple[str, ...] = ()  # Host names besides loopback's and this machine's (--host, --allowed-host)
    token: str | None = None            # access token every /api/ call must carry (None: none needed)
    guests: int = 4                     # guests whose photos are held for "Another scene" (0: none)
    guest_idle_s: float = 600.0         # a guest without a portrait for this long is forgotten

    def __post_init__(self) -> None:
        """Refuse a setting that would make every request fail, with one line naming its flag (exit code 1)."""
        mb, px, q = self.max_upload_mb, self.max_pixels, self.queue
        for ok, what in (
            (isinstance(q, int) and 0 <= q <= 1000, f"--queue must be 0 to 1000 (got {q})"),
            (isinstance(mb, (int, float)) and math.isfinite(mb) and MIN_UPLOAD_MB <= mb <= MAX_UPLOAD_MB,
             f"--max-upload-mb must be a number from {MIN_UPLOAD_MB:g} to {MAX_UPLOAD_MB:g} (got {mb})"),
            (isinstance(px, int) and MIN_PIXELS <= px <= MAX_PIXELS,
             f"--max-pixels must be {MIN_PIXELS} to {MAX_PIXELS} (64x64 to 40 MP; got {shown(px, 40, quote=False)})"),
            (self.steps is None or (isinstance(self.steps, int) and self.steps >= 1),
             f"--steps must be 1 or more (got {self.steps})"),
            (self.token is None or bool(_TOKEN_RE.fullmatch(self.token)),
             "--token must be 16 to 256 letters, digits or . _ ~ - (leave it out to get a generated one)"),
            (isinstance(self.guests, int) and not isinstance(self.guests, bool) and 0 <= self.guests <= 64,
             f"--guests must be 0 to 64 (got {self.guests})"),
            (isinstance(self.guest_idle_s, (int, float)) and math.isfinite(self.guest_idle_s)
             and 1 <= self.guest_idle_s <= 86400, f"--guest-idle-s must be 1 to 86400 seconds (got {self.guest_idle_s})"),
        ):
            if not ok:
                raise SettingsError(what)
        for name in self.allowed_hosts:
            if _host_name(name) is None:
                raise SettingsError(f"--host/--allowed-host {shown(name, 80)} is not a host name or IP address "
                                    "(give the name guests type, without scheme or path)")

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
    guest: str | None = None            # the guest to hold the photos for (None: a one-off request)
    held: Guest | None = None           # another scene: the guest's held photos (``face_a``/``face_b``: uploads)


@dataclass
class _Answer:
    png: bytes
    size: tuple[int, int]
    timings: dict[str, float]
    settings: dict[str, Any]
    #: one-line notes for the guest (a real photo given to the synthetic-world default, a prompt cut at 77 tokens)
    warnings: list[str] = field(default_factory=list)
    guest: str | None = None            # the guest id whose photos the kiosk now holds (None: holds nothing)


class UploadTooLarge(InputImageError):
    """A photo over the kiosk's upload limit (HTTP 413; exit code 3 like any unusable photo)."""


class GuestGone(InputImageError):
    """Another scene for a guest the kiosk has forgotten (HTTP 410): the photos must be given again."""


_STATUS: dict[type, int] = {UploadTooLarge: 413, GuestGone: 410, InputImageError: 400, FaceNotFoundError: 422,
                             MultipleFacesError: 422, PromptError: 422, LayoutError: 422, SettingsError: 422,
                             NumericalError: 500}


def _status(exc: DHumanDiffError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 400


_FACE_INDEX_ADVICE = re.compile(r"; pass --face-index(-[ab])? N to pick (one|another).*$")


def guest_words(message: str) -> str:
    """A refusal or note as a guest can act on it: the CLI's "pass --face-index-a N" advice (a flag the kiosk page
    does not have) becomes "use a photo with only this person in it"."""
    return _FACE_INDEX_ADVICE.sub("; use a photo with only this person in it", message)


@contextlib.contextmanager
def guest_call() -> Iterator[list[str]]:
    """Run a generator or detector call for a guest: a several-faces refusal comes out in a guest's words, and the
    list yielded receives the call's warnings as one-line notes (first lines, bounded, in a guest's words, once
    each) when the block ends."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield notes
        except MultipleFacesError as exc:
            raise MultipleFacesError(guest_words(str(exc))) from None
    notes.extend(dict.fromkeys(_bounded(guest_words((str(w.message).splitlines() or [""])[0])) for w in caught
                               if issubclass(w.category, UserWarning)))


def _bounded(line: str) -> str:
    """``line`` cut to :data:`MAX_LINE_CHARS` characters."""
    return line[: MAX_LINE_CHARS - 3] + "..." if len(line) > MAX_LINE_CHARS else line


def _error(status: int, message: str, code: int, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    line = _bounded(message.splitlines()[0] if message else kind)
    return JSONResponse({"error": line, "code": code, "type": kind}, status_code=status, headers=headers)


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``"Name:8000"`` / ``"[::1]:8000"`` / ``"::1"`` -> ``("name", 8000)`` (lower case, IPs normalised), or None."""
    v = value.strip().lower()
    port = ""
    if v.startswith("["):
        inner, bracket, port = v[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        v, port = inner, port[1:]
    elif v.count(":") == 1:
        v, _, port = v.partition(":")
    if port and not (port.isdigit() and len(port) <= 5):
        return None
    v = v.rstrip(".")
    try:
        name = str(ipaddress.ip_address(v))
    except ValueError:
        if len(v) > 253 or not _HOST_RE.fullmatch(v):
            return None
        name = v
    return name, int(port) if port else None


def _host_name(value: str) -> str | None:
    split = _split_host(value)
    return None if split is None else split[0]


def _same_origin(url: str, host: str) -> bool:
    """Whether ``url`` (an ``Origin`` or ``Referer``) has the scheme-less origin of the request's ``Host``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    default = {"http": 80, "https": 443}.get(parts.scheme)
    theirs, ours = _split_host(parts.netloc.rpartition("@")[2]), _split_host(host)
    if default is None or theirs is None or ours is None:
        return False
    return theirs[0] == ours[0] and (theirs[1] or default) == (ours[1] or default)


def _cross_site(headers: Headers) -> str | None:
    """What marks a request as sent from another site by a browser (None: same-origin, or not a browser)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {shown(site, 40)}"
    field = "origin" if "origin" in headers else "referer" if "referer" in headers else None
    if field is not None and not _same_origin(headers[field], headers.get("host", "")):
        return f"{field.title()}: {shown(headers[field], 100)}"
    return None


class _Gate:
    """Refuse strangers before any route runs: a foreign ``Host`` (400), a cross-site POST (403), an API call
    without the access token (401), an announced oversize body (413). Pure ASGI, so the route still sees the
    client's disconnect on ``receive``."""

    def __init__(self, app: Any, hosts: frozenset[str], token: str | None, body_limit: int,
                 too_large: Callable[[], JSONResponse]) -> None:
        self.app, self.hosts, self.token, self.body_limit, self.too_large = app, hosts, token, body_limit, too_large

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def has_token(self, headers: Headers) -> bool:
        given = headers.get(TOKEN_HEADER.lower(), "")
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        if not given and scheme.lower() == "bearer":
            given = bearer.strip()
        if not given:
            given = cookie_parser(headers.get("cookie", "")).get(TOKEN_COOKIE, "")
        return token_matches(self.token, given)

    def refusal(self, scope: dict[str, Any]) -> JSONResponse | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        name = _host_name(host)
        server = (scope.get("server") or ("",))[0] or ""
        if name is None or (name not in self.hosts and name != _host_name(server)):
            return _error(400, f"host {shown(host, 100)} is not one of this kiosk's names; open it by one of them, "
                          "or start it with --allowed-host NAME", 1, "HostNotAllowed")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            why = _cross_site(headers)
            if why is not None:
                return _error(403, f"cross-site request refused ({why}): the kiosk only takes requests from its "
                              "own page", 1, "CrossSiteRequest")
        path = scope["path"]
        if self.token is not None and path.startswith("/api/") and not self.has_token(headers):
            return _error(401, f"this kiosk needs its access token: open the link with ?token= printed when it "
                          f"started, or send the header {TOKEN_HEADER}", 1, "TokenRequired",
                          headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length", "")
        if path in UPLOAD_PATHS and length.isdigit() and int(length) > self.body_limit:
            return self.too_large()  # refused from its announcement, before it is read
        return None


def token_matches(token: str | None, given: str) -> bool:
    """Constant-time comparison of an offered token (any text) with the kiosk's."""
    return token is not None and secrets.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


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
    ``warm`` every graph is loaded and run once (``BundleGenerator.warm_up``), so the first guest waits no longer
    than the next (BENCHMARKS.md "Cold start and warm-up"). A folder's generator gets a
    conditioning cache for the guests' faces; a given generator keeps the one it has (or none: another scene then
    encodes the faces again).
    """
    cfg = settings or KioskSettings()
    if isinstance(bundle, (str, os.PathLike)):
        from ..runtimes import load_bundle

        gen = load_bundle(bundle, device=device, runtime=runtime, num_threads=num_threads,
                          conditioning_cache=ConditioningCache() if cfg.guests else None)
    else:
        gen = bundle
    cache = getattr(gen, "conditioning_cache", None)
    book = GuestBook(cfg.guests, cfg.guest_idle_s, cache.forget if cache is not None else None)
    manifest = gen.manifest
    _check_steps(manifest, cfg.steps)
    if warm:  # runtimes load graphs lazily and allocate, pick kernels and pack weights on a graph's first call
        gen.warm_up()
    line = GenerationQueue(cfg.queue)
    body_limit = 2 * cfg.max_upload_bytes + _MULTIPART_SLACK
    page = _load_page(cfg.title)

    def run(job: _Job) -> _Answer:
        """On the worker thread: decode both photos (or take the guest's held ones), generate, encode the PNG (and
        keep it if configured); then hold the guest's photos, or drop the conditioning of photos nobody holds."""
        started = time.perf_counter()
        t0 = time.perf_counter()
        if job.held is not None:
            face_a, face_b = job.held.photos
            digests = job.held.digests
        else:
            face_a = load_rgb(job.face_a, f"photo a ({job.names[0]})", max_pixels=cfg.max_pixels)
            face_b = load_rgb(job.face_b, f"photo b ({job.names[1]})", max_pixels=cfg.max_pixels)
            digests = (_digest(face_a), _digest(face_b)) if cache is not None else ("", "")
        decode = time.perf_counter() - t0
        held_now = False
        try:
            with guest_call() as notes:
                res = gen(face_a, face_b, job.prompt, seed=job.seed, layout=job.boxes, steps=cfg.steps,
                          progress=lambda *_: line.check_stop())  # a guest who left, or shutdown: stop at next step
            if job.guest is not None and job.held is None:
                for arr in (face_a, face_b):
                    arr.flags.writeable = False
                uploads = (job.face_a, job.face_b) if cfg.keep_dir is not None else (b"", b"")
                held_now = book.hold(job.guest, Guest((face_a, face_b), job.names, digests, uploads))
            elif job.guest is not None:
                held_now = book.touch(job.guest)
        finally:
            if not held_now:  # a one-off request, a failed one, or a guest forgotten meanwhile: keep no face
                book.release(d for d in digests if d)
        del face_a, face_b
        line.check_stop()  # nobody waits for it: neither encoded nor kept
        buf = io.BytesIO()
        res.image.save(buf, format="PNG")
        timings = {"queue_wait": started - job.submitted, "read_photos": decode,
                   **{k: float(v) for k, v in res.timings.items()}}
        answer = _Answer(buf.getvalue(), res.image.size, timings, dict(res.settings), notes,
                         job.guest if held_now else None)
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

    async def sweep_guests() -> None:
        while True:  # idle guests are forgotten even when nobody uses the kiosk
            await asyncio.sleep(min(_SWEEP_S, cfg.guest_idle_s / 4))
            book.sweep()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.ensure_future(sweep_guests())
        try:
            yield
        finally:
            sweeper.cancel()
            book.clear()
        if not line.shutdown(timeout=3.0):  # waiting and running guests were answered 503 by now
            log.warning("stopped while a generation was still running; it is abandoned")

    app = FastAPI(title=cfg.title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue = line
    app.state.settings = cfg
    app.state.generator = gen
    app.state.guests = book

    # ----------------------------------------------------------------------------------- refusals (JSON)

    @app.exception_handler(DHumanDiffError)
    async def _user_error(_: Request, exc: DHumanDiffError) -> JSONResponse:
        return _error(_status(exc), str(exc), exc.exit_code, type(exc).__name__)

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"error": str(exc), "code": 1, "type": "Busy", "ahead": exc.ahead,
                             "retry_after": exc.retry_after}, status_code=503,
                            headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ShuttingDown)
    async def _stopping(_: Request, exc: ShuttingDown) -> JSONResponse:
        return _error(503, str(exc), 1, "ShuttingDown", headers={"Retry-After": str(exc.retry_after)})

    def _too_large() -> JSONResponse:
        return _error(413, f"the upload is too large: each photo may be at most {cfg.max_upload_mb:g} MB; use "
                      "smaller photos", InputImageError.exit_code, "InputImageError")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # FastAPI's max_body_size counting a body sent without Content-Length
            return _too_large()
        return _error(exc.status_code, str(exc.detail), 1, "HTTPException", headers=getattr(exc, "headers", None))

    hosts = frozenset(n for n in (*LOOPBACK_NAMES, _host_name(socket.gethostname()),
                                  *map(_host_name, cfg.allowed_hosts)) if n)
    app.add_middleware(_Gate, hosts=hosts, token=cfg.token, body_limit=body_limit, too_large=_too_large)

    @app.exception_handler(RequestValidationError)
    async def _bad_form(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return _error(422, f"bad form field {where}: {first.get('msg', 'invalid')}", 1, "RequestValidationError")

    # ----------------------------------------------------------------------------------------- routes

    @app.get("/", response_class=HTMLResponse)
    async def index(token: str = Query("", max_length=256)) -> HTMLResponse:
        response = HTMLResponse(page, headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store",
                                               "Referrer-Policy": "no-referrer"})
        if token_matches(cfg.token, token):  # the access link: this browser keeps the token as a cookie too
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        book.sweep()
        return {"status": "ok", "model": manifest.model_name, "runtime": manifest.runtime,
                "image_size": list(manifest.image_size), "steps": cfg.steps or manifest.defaults.steps,
                **line.snapshot(), "guests": len(book),
                "conditioning_cache": cache.stats() if cache is not None else None}

    @app.get("/api/presets")
    async def get_presets() -> dict[str, Any]:
        return {**presets.as_json(), "limits": {"max_upload_mb": cfg.max_upload_mb, "max_pixels": cfg.max_pixels,
                                                "queue": cfg.queue}}

    async def read_photo(label: str, upload: UploadFile | None) -> tuple[bytes, str]:
        """One uploaded photo's bytes and its (bounded) file name, refused when missing, empty or too large."""
        if upload is None:
            raise InputImageError(f"photo {label} is missing: upload a photo of person {label} as face_{label}")
        data = await upload.read()
        name = shown(Path(upload.filename or f"face_{label}").name, 100, quote=False)
        if not data:
            raise InputImageError(f"photo {label} ({name}) is empty (0 bytes): upload the photo again")
        if len(data) > cfg.max_upload_bytes:
            raise UploadTooLarge(f"photo {label} ({name}) is {len(data) / 2**20:.1f} MB, over the "
                                 f"{cfg.max_upload_mb:g} MB limit: use a smaller photo")
        return data, name

    def detect(data: bytes, label: str, name: str) -> dict[str, Any]:
        """The face the bundle's detector takes from one photo, as the generator will crop it (PNG data URL)."""
        with guest_call() as notes:
            photo = load_rgb(data, f"photo {label} ({name})", max_pixels=cfg.max_pixels)
            crop = gen.cropper(Image.fromarray(photo), None, f"photo {label} ({name})", f"--face-index-{label}")
        buf = io.BytesIO()
        crop.convert("RGB").save(buf, format="PNG")
        return {"person": label, "face": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
                "width": crop.size[0], "height": crop.size[1], "detector": manifest.identity.detector,
                "warnings": notes}

    @app.post("/api/face", max_body_size=body_limit)
    async def face(
        photo: UploadFile | None = File(None, description="One person's photo (camera frame or file)."),
        person: str = Form("a", pattern="^[ab]$", description="Which person the photo is of: a or b."),
    ) -> JSONResponse:
        """The face the kiosk will use from this photo, before generating: the guest sees it, or why the photo
        will not do (the same one-line refusal generating would give)."""
        data, name = await read_photo(person, photo)
        found = await run_in_threadpool(detect, data, person, name)
        return JSONResponse(found, headers={"Cache-Control": "no-store"})

    @app.post("/api/generate", max_body_size=body_limit)
    async def generate(
        request: Request,
        face_a: UploadFile | None = File(None, description="Photo of person a (one face)."),
        face_b: UploadFile | None = File(None, description="Photo of person b (one face)."),
        prompt: str = Form("", description="Scene naming both people; empty: the scene preset's prompt."),
        scene: str = Form("", description="Preset scene id (GET /api/presets)."),
        layout: str = Form("", description="Layout id (GET /api/presets); empty: side by side."),
        seed: str = Form("", description="Non-negative integer; empty: a random one (echoed back)."),
        guest: str = Form("", pattern=_GUEST_RE, description="new: hold these photos for another scene (the answer "
                          "names the guest); a guest id without photos: another scene of that guest's photos."),
        format: str = Query("json", pattern="^(json|png)$", description="json (data URL + timings) or png."),
    ) -> Response:
        t_request = time.perf_counter()
        held = None
        if guest not in ("", "new") and face_a is None and face_b is None:
            held = book.get(guest)
            if held is None:
                raise GuestGone("the kiosk no longer has your photos (it lets them go after "
                                f"{cfg.guest_idle_s / 60:g} minutes without a portrait, or when a new guest starts): "
                                "take or choose your photos again")
            photos = [(held.uploads[0], held.names[0]), (held.uploads[1], held.names[1])]
        else:
            photos = [await read_photo(label, upload) for label, upload in (("a", face_a), ("b", face_b))]
        if len(prompt) > MAX_PROMPT_CHARS:
            raise PromptError(f"the prompt is {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS}")
        text, scene_id = presets.scene_prompt(scene, prompt)
        layout_id, boxes = presets.layout_boxes(layout)
        seed_value = _parse_seed(seed)
        rid = uuid.uuid4().hex
        guest_id = None if guest == "" else uuid.uuid4().hex if guest == "new" else guest
        job = _Job(photos[0][0], photos[1][0], (photos[0][1], photos[1][1]), text, scene_id, layout_id, boxes,
                   seed_value, rid, guest=guest_id, held=held)
        del photos, held
        ticket = line.submit(run, job)
        waiter = asyncio.wrap_future(ticket)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((waiter, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not waiter.done():  # the guest left: skip the job, or stop it at its next step; keep nothing
            line.abandon(ticket)
            waiter.cancel()
            log.info("request %s: the client left before its portrait was ready; the job is dropped", rid[:8])
            return _error(499, "the client closed the connection", 1, "ClientLeft")
        try:
            answer = waiter.result()
        except Stopped:
            raise ShuttingDown() from None
        except (DHumanDiffError, Busy, ShuttingDown):
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
                "X-Queue-Wait-Seconds": f"{answer.timings['queue_wait']:.4f}",
                **({"X-Guest": answer.guest} if answer.guest else {})})
        return JSONResponse({
            **meta, "image": "data:image/png;base64," + base64.b64encode(answer.png).decode("ascii"),
            "width": answer.size[0], "height": answer.size[1],
            "timings": {k: round(v, 4) for k, v in answer.timings.items()},
            "steps": answer.settings.get("steps"), "runtime": answer.settings.get("runtime"),
            "warnings": answer.warnings, "guest": answer.guest,
            "conditioning_cache": answer.settings.get("conditioning_cache", "off"),
        }, headers={"Cache-Control": "no-store"})

    @app.post("/api/forget", max_body_size=_MULTIPART_SLACK)
    async def forget(guest: str = Form("", pattern=_GUEST_RE, description="The guest id to forget.")) -> JSONResponse:
        """Forget a guest now (the page's "New guest", or the page closing): their photos and the conditioning of
        their faces. Forgetting an unknown or already forgotten guest is not an error."""
        forgotten = guest not in ("", "new") and book.forget(guest)
        book.sweep()
        return JSONResponse({"forgotten": forgotten, "guests": len(book)}, headers={"Cache-Control": "no-store"})

    return app


def _digest(photo: Any) -> str:
    """The conditioning cache's key of a decoded photo: the pixels the generator's own loader makes of it."""
    return photo_digest(load_image(photo))


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (its body has been read: the next message is the end)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _check_steps(manifest: Any, steps: int | None) -> None:
    """``--steps`` that the bundle's scheduler refuses would fail every request: refuse it at start-up."""
    if steps is None:
        return
    try:
        schedulers.from_config(manifest.scheduler, sampler=manifest.defaults.sampler).set_timesteps(steps)
    except ValueError as exc:
        raise SettingsError(f"--steps {steps} does not fit this bundle's scheduler ({shown(exc, 150, quote=False)}); "
                            f"its default is {manifest.defaults.steps}") from None




def _parse_seed(seed: str) -> int:
    s = (seed or "").strip()
    if not s:
        return secrets.randbelow(2**31)
    try:
        value = int(s)
    except ValueError:
        value = -1
    if value < 0 or value >= 2**63:
        raise SettingsError(f"seed must be a whole number from 0 to 2^63-1 (got {shown(seed, 40)}); leave it "
                            "empty for a random one")
    return value

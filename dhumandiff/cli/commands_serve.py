"""``dhumandiff serve BUNDLE``: the kiosk service (upload page + HTTP API) on uvicorn, torch-free.

Binds 127.0.0.1 by default: a kiosk is meant to be reached from the screen it runs on (or through a reverse
proxy that adds TLS and access control). ``--port 0`` picks a free port; the first line on stdout is the URL.
Listening beyond loopback, the kiosk needs an access token (``--token``, or one generated and printed at start).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from pathlib import Path

import typer

from .console import console, err_console
from .options import RUNTIME_HELP


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    bundle: Path = typer.Argument(None, help="Bundle folder to serve (from `dhumandiff export`; default: the "
                                             "embedded tiny bundle, a demo of its synthetic world)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", help="TCP port; 0 picks a free one (printed on the first line)."),
    queue: int = typer.Option(4, "--queue", help="Requests that may wait behind the running one; more get 503."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", help="Largest accepted photo, in MB."),
    max_pixels: int = typer.Option(16_000_000, "--max-pixels", help="Largest accepted photo, in pixels."),
    keep_dir: Path = typer.Option(None, "--keep-dir", help="Keep each request's photos, portrait and settings "
                                                             "here (default: nothing is kept)."),
    steps: int = typer.Option(None, "--steps", help="Sampling steps (default: the bundle's)."),
    runtime: str = typer.Option(None, "--runtime", help=RUNTIME_HELP),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, gpu, npu (runtime dependent)."),
    threads: int = typer.Option(None, "--threads", help="Runtime intra-op threads (default: the runtime's)."),
    title: str = typer.Option("dhumandiff kiosk", "--title", help="Page title."),
    token: str = typer.Option(None, "--token", envvar="DHUMANDIFF_KIOSK_TOKEN", show_envvar=True,
                              help="Access token (16+ letters, digits, . _ ~ -) every API call must carry; "
                                   "generated and printed when --host is not loopback and none is given."),
    guests: int = typer.Option(4, "--guests", help="Couples whose photos are held in memory for \"Another "
                               "scene\" (0: none; each is forgotten on New guest, page close or --guest-idle-s)."),
    guest_idle_s: float = typer.Option(600.0, "--guest-idle-s", help="Forget a guest after this many seconds "
                                       "without a portrait."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", help="Another name guests reach the kiosk by "
                                           "(repeatable); requests for any other Host are refused."),
) -> None:
    """Run the kiosk: an upload page and an HTTP API over BUNDLE, one generation at a time.

    It answers only requests addressed to its own names (localhost, 127.0.0.1, [::1], --host, this machine's
    hostname, --allowed-host) and only uploads from its own page (a cross-site POST gets 403). Listening beyond
    loopback (--host 0.0.0.0), it needs an access token: open the printed link http://HOST:PORT/?token=TOKEN on
    the guests' screen (the page keeps the token for the session); API clients send the header
    "X-Kiosk-Token: TOKEN" (or "Authorization: Bearer TOKEN"); without it the API answers 401.
    """
    from ..errors import DHumanDiffError, RuntimeUnavailableError

    try:
        from ..serve.app import KioskSettings, create_app
        from ..serve.server import KioskUvicorn
    except ImportError as exc:
        raise RuntimeUnavailableError(f"the kiosk needs the serve extra ({exc.name} is missing): "
                                      "pip install 'dhumandiff[serve]'") from None
    if not 0 <= port <= 65535:
        raise DHumanDiffError(f"--port must be 0..65535 (got {port})")
    if bundle is None:
        from ..runtimes.embedded import embedded_bundle

        bundle = embedded_bundle()
        if bundle is None:
            raise DHumanDiffError("this install ships no embedded bundle: give a BUNDLE folder from "
                                  "`dhumandiff export`")
    token = resolve_token(host, token)
    settings = KioskSettings(queue=queue, max_upload_mb=max_upload_mb, max_pixels=max_pixels, keep_dir=keep_dir,
                             steps=steps, title=title, allowed_hosts=(host, *allowed_host), token=token,
                             guests=guests, guest_idle_s=guest_idle_s)
    app = create_app(bundle, settings, device=device, runtime=runtime, num_threads=threads)
    if keep_dir is not None:  # refused at start-up, not discovered guest by guest
        _check_keep_dir(keep_dir)

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DHumanDiffError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host") \
            from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    m = app.state.generator.manifest
    console.print(f"kiosk on http://{shown}:{bound}/  ({m.model_name}, {m.runtime}; queue {queue}; Ctrl+C stops)",
                  highlight=False, soft_wrap=True)
    if token is not None:
        name = socket.gethostname() if host in ("0.0.0.0", "::") else shown
        console.print(f"access token: open http://{name}:{bound}/?token={token} on the guests' screen (the page "
                      f"keeps it); API clients send the header \"X-Kiosk-Token: {token}\"", highlight=False,
                      soft_wrap=True)
    console.file.flush()
    if not _is_loopback(host):
        err_console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine and has the "
                          "access token can use the kiosk, over plain HTTP; put it behind a proxy with TLS",
                          highlight=False)
    KioskUvicorn(app).run(sockets=[sock])


def _check_keep_dir(keep_dir: Path) -> None:
    from ..errors import DHumanDiffError

    try:
        keep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DHumanDiffError(f"--keep-dir {keep_dir} cannot be created ({exc.strerror or exc}); choose a "
                              "writable folder") from None
    if not os.access(keep_dir, os.W_OK | os.X_OK):
        raise DHumanDiffError(f"--keep-dir {keep_dir} is not writable; choose a writable folder")


def resolve_token(host: str, token: str | None) -> str | None:
    """The kiosk's access token: ``--token`` if given, else a fresh one when ``host`` is not loopback."""
    if token is not None or _is_loopback(host):
        return token
    return secrets.token_urlsafe(18)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

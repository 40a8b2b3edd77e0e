"""``dhumandiff serve BUNDLE``: the kiosk service (upload page + HTTP API) on uvicorn, torch-free.

Binds 127.0.0.1 by default: a kiosk is meant to be reached from the screen it runs on (or through a reverse
proxy that adds TLS and access control). ``--port 0`` picks a free port; the first line on stdout is the URL.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import typer

from .console import console, err_console
from .options import RUNTIME_HELP


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    bundle: Path = typer.Argument(..., help="Bundle folder to serve (from `dhumandiff export`)."),
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
) -> None:
    """Run the kiosk: an upload page and an HTTP API over BUNDLE, one generation at a time."""
    from ..errors import DHumanDiffError, RuntimeUnavailableError

    try:
        import uvicorn

        from ..serve.app import KioskSettings, create_app
    except ImportError as exc:
        raise RuntimeUnavailableError(f"the kiosk needs the serve extra ({exc.name} is missing): "
                                      "pip install 'dhumandiff[serve]'") from None
    for ok, what in ((queue >= 0, f"--queue must be 0 or more (got {queue})"),
                     (0 <= port <= 65535, f"--port must be 0..65535 (got {port})"),
                     (max_upload_mb > 0, f"--max-upload-mb must be positive (got {max_upload_mb})"),
                     (max_pixels > 0, f"--max-pixels must be positive (got {max_pixels})"),
                     (steps is None or steps >= 1, f"--steps must be 1 or more (got {steps})")):
        if not ok:
            raise DHumanDiffError(what)
    if keep_dir is not None:  # refused at start-up, not discovered guest by guest
        try:
            keep_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DHumanDiffError(f"--keep-dir {keep_dir} cannot be created ({exc.strerror or exc}); choose a "
                                  "writable folder") from None
        if not os.access(keep_dir, os.W_OK | os.X_OK):
            raise DHumanDiffError(f"--keep-dir {keep_dir} is not writable; choose a writable folder")

    settings = KioskSettings(queue=queue, max_upload_mb=max_upload_mb, max_pixels=max_pixels, keep_dir=keep_dir,
                             steps=steps, title=title)
    app = create_app(bundle, settings, device=device, runtime=runtime, num_threads=threads)

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
    console.file.flush()
    if not _is_loopback(host):
        err_console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine can use "
                          "the kiosk; put it behind a proxy with TLS and access control", highlight=False)
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""The ``dhumandiff`` command line: typer + rich, one sub-command per pipeline stage.

User mistakes surface as one line on stderr and the error's documented exit code (README 'Exit codes'), never
a traceback. Every error line is escaped by :func:`printable` (a file name holding a newline or an ANSI escape is
shown as ``\\n`` / ``\\x1b``, never cut or sent raw to the terminal). Heavy imports (torch, exporters) happen
inside the commands so ``dhumandiff --help`` and the torch-free commands (``generate --bundle``, ``doctor``) start
fast and work without torch installed.
"""

from __future__ import annotations

import os
import sys
import unicodedata
import warnings

import typer
from rich.markup import escape  # messages hold "[x0, y0, x1, y1]": literal text, not rich markup

from ..errors import DHumanDiffError
from .console import err_console
from . import commands_bench
from . import commands_calibrate
from . import commands_data, commands_export, commands_model, commands_runtime, commands_serve

app = typer.Typer(name="dhumandiff", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="DHumanDiff dual-person portraits: generate, train, distill, export, run on the edge.")
commands_model.register(app)
commands_runtime.register(app)
commands_export.register(app)
commands_calibrate.register(app)
commands_bench.register(app)
commands_serve.register(app)
app.add_typer(commands_data.data_app, name="data")


#: Longest error or warning line printed, in characters (a message quoting a huge input stays readable).
MAX_LINE_CHARS = 2000
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JOINERS = ("\u200c", "\u200d")  # zero-width (non-)joiners: part of ordinary text in several scripts and emoji


def printable(text: str) -> str:
    """``text`` as one safe terminal line: control and format characters (newlines, ESC, bidi overrides), line
    separators and undecodable file-name bytes are escaped repr-style (``\\n``, ``\\x1b``, ``\\u202e``, ``\\xff``);
    ordinary unicode (accents, CJK, emoji) is kept. Cut to :data:`MAX_LINE_CHARS`."""
    if len(text) > MAX_LINE_CHARS:
        text = f"{text[:MAX_LINE_CHARS]}... ({len(text) - MAX_LINE_CHARS} more characters)"
    if text.isprintable():
        return text
    return "".join(_escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if ch in _JOINERS or not (category in ("Cc", "Cf", "Cs", "Zl", "Zp")):
        return ch
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a file-name byte that is not UTF-8, as Python's surrogateescape carries it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def _error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app and maps DHumanDiffError to one line + exit code.

    Python warnings (a prompt cut at 77 tokens, ...) are shown as one ``warning:`` line each, not with the
    file/line/source-line dump Python prints by default, which reads like a crash.
    """
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return _main(argv)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    first = (str(message).splitlines() or [""])[0]  # libraries' warnings run on for lines: their first says it
    err_console.print(f"[yellow]warning:[/] {escape(printable(first))}", highlight=False, soft_wrap=True)


def _main(argv: list[str] | None) -> int:
    warnings.filterwarnings("ignore", message=".*Multiple distributions found.*")
    # diffusers logs that one (and other notes) on import; a user's explicit DIFFUSERS_VERBOSITY still wins
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        rv = app(args=argv, standalone_mode=False)  # a command's `raise typer.Exit(n)` comes back as n
    except DHumanDiffError as exc:
        _error_line(str(exc))
        return exc.exit_code
    except FileExistsError as exc:
        _error_line(str(exc))
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency this command needs is not installed
        extra = missing_extra(exc.name or "")
        if extra is None:
            raise
        _error_line(f"this command needs {exc.name}, which is not installed: pip install \"dhumandiff[{extra}]\"")
        return 1
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 1
    except Exception as exc:  # usage errors: click's ClickException, or typer's vendored copy of it (typer>=0.29)
        if _is_usage_error(exc):
            exc.show()
            return exc.exit_code
        raise
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


#: Top-level modules of the optional dependencies -> the pyproject extra that installs them.
OPTIONAL_MODULES: dict[str, str] = {
    "torch": "torch", "diffusers": "torch", "transformers": "torch", "huggingface_hub": "torch",
    "onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "coremltools": "coreml",
    "onnxscript": "export", "optimum": "export", "nncf": "export", "accelerate": "train", "peft": "train",
    "tensorboard": "train", "insightface": "faces", "dlib": "faces", "face_recognition_models": "faces",
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
}


def missing_extra(module: str) -> str | None:
    """The extra that installs ``module`` (a dotted name's top level), or None if it is not an optional one."""
    return OPTIONAL_MODULES.get(module.split(".")[0])


def _is_usage_error(exc: Exception) -> bool:
    """Whether ``exc`` is a command-line usage error (bad/missing option) that knows how to print itself."""
    classes = []
    try:
        import click

        classes.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer always brings click or its own copy
        pass
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        classes.append(TyperClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(classes)) and hasattr(exc, "show")


if __name__ == "__main__":
    sys.exit(main())

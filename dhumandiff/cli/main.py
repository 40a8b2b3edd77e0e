"""The ``dhumandiff`` command line: typer + rich, one sub-command per pipeline stage.

User mistakes surface as one line on stderr and the error's documented exit code (README 'Exit codes'), never
a traceback. Heavy imports (torch, exporters) happen inside the commands so ``dhumandiff --help`` and the
torch-free commands (``generate --bundle``, ``doctor``) start fast and work without torch installed.
"""

from __future__ import annotations

import sys
import warnings

import typer

from ..errors import DHumanDiffError
from .console import err_console
from . import commands_data, commands_export, commands_model, commands_runtime

app = typer.Typer(name="dhumandiff", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="DHumanDiff dual-person portraits: generate, train, distill, export, run on the edge.")
commands_model.register(app)
commands_runtime.register(app)
commands_export.register(app)
app.add_typer(commands_data.data_app, name="data")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app and maps DHumanDiffError to one line + exit code."""
    warnings.filterwarnings("ignore", message=".*Multiple distributions found.*")
    try:
        app(args=argv, standalone_mode=False)
    except DHumanDiffError as exc:
        err_console.print(f"[bold red]error:[/] {str(exc).splitlines()[0]}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except FileExistsError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 1
    except Exception as exc:  # click usage errors come as ClickException
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``dhumandiff data synth|check``: make and validate PairHuman-format folders."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import console, err_console

data_app = typer.Typer(no_args_is_help=True, help="PairHuman-format data: synthesise the tiny world, check folders.")


@data_app.command("synth")
def synth(out: Path = typer.Option(..., "--out", help="Folder to create (PairHuman layout)."),
          count: int = typer.Option(200, "--count", min=1, help="Number of scene images."),
          seed: int = typer.Option(0, "--seed", help="Same seed -> byte-identical folder."),
          size: int = typer.Option(64, "--size", help="Image side in pixels (64 or 128)."),
          identities: int = typer.Option(None, "--identities", help="Number of identities (default: count/8, >= 40)."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder.")) -> None:
    """Generate a deterministic PairHuman-format folder of the synthetic two-person world."""
    from ..data.synth import synthesize

    path = synthesize(out, count=count, seed=seed, image_size=size, n_identities=identities, overwrite=overwrite)
    console.print(f"wrote {count} images to {path}")


@data_app.command("check")
def check(folder: Path = typer.Argument(..., help="A PairHuman-format folder.")) -> None:
    """Validate every annotation and image of a folder; exit 1 if any record is bad."""
    from rich.markup import escape

    from ..data.check import check_folder

    report = check_folder(folder)
    for file, message in report.problems:
        err_console.print(f"[red]bad[/] {escape(f'{file}: {message}')}", highlight=False, soft_wrap=True)
    console.print(f"{report.ok_count} records ok, {len(report.problems)} problems")
    if report.problems:
        raise typer.Exit(1)

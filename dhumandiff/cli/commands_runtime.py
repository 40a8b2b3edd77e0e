"""Torch-free commands: ``generate`` (embedded default bundle, reference model or bundle), ``doctor``, ``verify``.

Without ``--model`` or ``--bundle``, ``generate`` runs the embedded default as its shipped ONNX bundle
(``runtimes/embedded.py``) when onnxruntime is installed and the request is one a bundle serves: a new
user needs no torch. The PyTorch reference runs for ``--model``, for what only it does (``--mode cascade``,
``--cascade-mask``, ``--vae-precision fp16``), and when no runtime for the bundle is installed but torch is.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .console import console, progress_bar
from .options import RUNTIME_HELP, SAMPLER_HELP, TOKEN_MERGING_DEPTH_HELP, TOKEN_MERGING_HELP


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("doctor")(doctor)
    app.command("verify")(verify)


def generate(
    face_a: Path = typer.Option(..., "--face-a", help="Photo of person a (one face)."),
    face_b: Path = typer.Option(..., "--face-b", help="Photo of person b (one face)."),
    prompt: str = typer.Option(..., "--prompt", help="Scene description naming both people, e.g. 'a man and a woman on the beach'."),
    out: Path = typer.Option(Path("portrait.png"), "--out", help="Output image (PNG/JPEG), written atomically."),
    model: str = typer.Option(None, "--model", help="PyTorch reference: embedded model name (tiny, tiny-fast, ...) or model folder (default: the embedded tiny as a torch-free bundle)."),
    bundle: Path = typer.Option(None, "--bundle", help="Run an exported bundle instead of the PyTorch model."),
    runtime: str = typer.Option(None, "--runtime", help=RUNTIME_HELP),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, mps, gpu, npu (runtime dependent)."),
    steps: int = typer.Option(None, "--steps", help="Sampling steps (default: the model's)."),
    seed: int = typer.Option(0, "--seed", help="Same seed -> the same image."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    ip_scale: float = typer.Option(None, "--ip-scale", help="Identity strength."),
    mode: str = typer.Option("single", "--mode", help="single (one pass) or cascade (the paper's two stages)."),
    layout: str = typer.Option("auto", "--layout", help="'auto' or JSON [[x0,y0,x1,y1],[x0,y0,x1,y1]] (0..1) or a JSON file."),
    face_index_a: int = typer.Option(None, "--face-index-a", "--face-index", help="Pick a face when photo a shows several (0 = largest)."),
    face_index_b: int = typer.Option(None, "--face-index-b", help="Pick a face when photo b shows several (0 = largest)."),
    person_words: str = typer.Option(None, "--person-words", help="The two words naming the people, e.g. 'bride,groom'."),
    sampler: str = typer.Option(None, "--sampler", help=SAMPLER_HELP),
    vae_precision: str = typer.Option(None, "--vae-precision", help="fp32 (fixes an fp16 VAE overflow) or fp16 (PyTorch model only)."),
    low_memory: bool = typer.Option(False, "--low-memory", help="Bundles: hold one graph in memory at a time (peak = the largest graph; slower)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file (never an input photo)."),
    negative_prompt: str = typer.Option(None, "--negative-prompt", help="What CFG steers away from (default: the model's recipe: '' for dhumandiff models, the official negative prompt for converted ones)."),
    region_masks: bool = typer.Option(None, "--region-masks/--no-region-masks", help="Gate each identity to its layout box (default: the recipe's; official-faithful models have none)."),
    face_models: Path = typer.Option(None, "--face-models", envvar="DHUMANDIFF_FACE_MODELS", show_envvar=True, help="insightface pack folder (buffalo_l: det_10g.onnx, w600k_r50.onnx) for a converted official model (--model); nothing is downloaded."),
    token_merging: float = typer.Option(None, "--token-merging", help=TOKEN_MERGING_HELP + " PyTorch model only: "
                                        "a bundle has it from `export --token-merging`."),
    token_merging_depth: int = typer.Option(1, "--token-merging-depth", help=TOKEN_MERGING_DEPTH_HELP),
    cascade_mask: str = typer.Option(None, "--cascade-mask", help="Cascade stage-1 mask: official, two-person (the official recipe with person 2's map) or attention-mass (default: the recipe's)."),
) -> None:
    """Generate a portrait of the two people in the photos, in the scene the prompt describes."""
    from ..errors import PromptError, SettingsError
    from ..utils.images import check_output_path, save_image_atomic
    from ..utils.numerics import check_vae_precision

    words = tuple(w.strip() for w in person_words.split(",")) if person_words else None
    if words is not None and len(words) != 2:
        raise PromptError("--person-words needs exactly two comma-separated words, e.g. 'man,woman'")
    check_output_path(out, overwrite=overwrite, inputs=(face_a, face_b))
    vae_precision = check_vae_precision(vae_precision)
    t0 = time.time()
    if model is None and bundle is None:
        embedded = _embedded_default(runtime, mode, cascade_mask, vae_precision, face_models, token_merging)
        if embedded is not None:
            bundle, runtime = embedded
    if low_memory and bundle is None:
        raise SettingsError("--low-memory applies to exported bundles: add --bundle DIR")
    if bundle is not None:
        from ..runtimes import load_bundle

        if model is not None:
            raise SettingsError("give --model (PyTorch reference) or --bundle (exported), not both")
        if token_merging:
            raise SettingsError("a bundle merges tokens as it was exported (`dhumandiff export ... --token-merging "
                                "R`); --token-merging applies to the PyTorch model (--model)")
        if mode != "single" or cascade_mask is not None:
            raise SettingsError(f"bundles run --mode single only (got --mode {mode!r}"
                                f"{' --cascade-mask' if cascade_mask else ''}); use the PyTorch model (--model) "
                                "for the cascade")
        gen = load_bundle(bundle, device=device, runtime=runtime, low_memory=low_memory)
        with progress_bar("generating") as update:
            res = gen(face_a, face_b, prompt, steps=steps, guidance_scale=guidance, ip_scale=ip_scale, seed=seed,
                      layout=layout, sampler=sampler, person_words=words, face_index_a=face_index_a,
                      face_index_b=face_index_b, vae_precision=vae_precision, negative_prompt=negative_prompt,
                      region_masks=region_masks, progress=lambda i, n: update(i, n))
        save_image_atomic(res.image, out)
    else:
        from ..model.generate import generate_portrait, load_model

        if mode not in ("single", "cascade"):
            raise SettingsError(f"--mode must be 'single' or 'cascade' (got {mode!r})")
        m = load_model(model)
        if token_merging:
            m.set_token_merging(token_merging, token_merging_depth)
        with progress_bar("generating") as update:
            res = generate_portrait(m, face_a, face_b, prompt, steps=steps, seed=seed, guidance=guidance,
                                    ip_scale=ip_scale, mode=mode, layout=layout, face_index_a=face_index_a,
                                    face_index_b=face_index_b, person_words=words, sampler=sampler,
                                    vae_precision=vae_precision, negative_prompt=negative_prompt,
                                    region_masks=region_masks, cascade_mask=cascade_mask,
                                    face_models=face_models, progress=lambda i, n: update(i, n))
        save_image_atomic(res.image, out)
    console.print(f"wrote {out} in {time.time() - t0:.1f} s")


def _embedded_default(runtime: str | None, mode: str, cascade_mask: str | None, vae_precision: str | None,
                      face_models: Path | None, token_merging: float | None = None) -> tuple[Path, str] | None:
    """The embedded default bundle and the runtime to run it, when this request needs neither the reference
    model nor torch; None sends it to the PyTorch reference (which says which extra to install if torch is missing).
    """
    import importlib.util

    from ..errors import RuntimeUnavailableError, SettingsError
    from ..runtimes.embedded import embedded_bundle, embedded_runtime

    if mode not in ("single", "cascade"):
        raise SettingsError(f"--mode must be 'single' or 'cascade' (got {mode!r})")
    reference_only = {"--mode cascade": mode == "cascade", "--cascade-mask": cascade_mask is not None,
                      "--vae-precision fp16": vae_precision == "fp16", "--face-models": face_models is not None,
                      "--token-merging": bool(token_merging)}
    if any(reference_only.values()):
        if importlib.util.find_spec("torch") is None:
            what = next(flag for flag, given in reference_only.items() if given)
            raise RuntimeUnavailableError(f"{what} runs on the PyTorch reference: pip install \"dhumandiff[torch]\" "
                                          "(the embedded bundle runs --mode single)")
        return None
    path, chosen = embedded_bundle(), embedded_runtime(runtime)
    if path is not None and chosen is not None:
        return path, chosen
    if importlib.util.find_spec("torch") is None:
        raise RuntimeUnavailableError("the embedded default runs on onnxruntime: pip install \"dhumandiff[onnx]\" "
                                      "(or \"dhumandiff[torch]\" for the PyTorch reference)")
    return None


def doctor() -> None:
    """Which runtimes, devices and execution providers work on this machine."""
    from rich.table import Table

    from ..runtimes import available_runtimes
    from ..utils.cpu import cpu_features

    table = Table(title="dhumandiff runtimes")
    for col in ("runtime", "installed", "devices", "providers / notes"):
        table.add_column(col)
    for info in available_runtimes():
        table.add_row(info.name, "yes" if info.installed else "no", ", ".join(info.devices) or "-",
                      ", ".join(info.providers) or "-")
    console.print(table)
    cpu = cpu_features()
    console.print(f"CPU: {cpu.line()}", highlight=False, markup=False)
    int8 = ("VNNI dot products (u8 x s8 exact and fast)" if cpu.vnni else
            "no VNNI: ONNX int8 bundles made here store u8 weights (exact); int8 may run slower than fp32")
    bf16 = "native" if cpu.bf16 else "not native (bf16 is emulated in torch; OpenVINO runs bf16 bundles in f32)"
    console.print(f"  int8: {int8}; bf16: {bf16}", highlight=False, markup=False)

def verify(
    bundle: Path = typer.Argument(..., help="Bundle folder (or its bundle.json) to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check a copied bundle offline: every file present and matching its sha256 in bundle.json (exit 10 if not)."""
    import json

    from ..runtimes.verify import verify_bundle

    report = verify_bundle(bundle)
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
    else:
        console.print(report.line(), highlight=False, soft_wrap=True)

"""Commands that need the PyTorch model: ``train``, ``convert official``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .console import console, progress_bar

convert_app = typer.Typer(no_args_is_help=True, help="Convert checkpoints into this project's model folders.")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("distill")(distill)
    app.command("eval")(evaluate)
    app.add_typer(convert_app, name="convert")


def train(
    data: Path = typer.Option(..., "--data", help="PairHuman-format folder (see `dhumandiff data synth`)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints/, metrics.csv, model/."),
    backbone: str = typer.Option("tiny", "--backbone", help="tiny, sd15, xl (or *-test)."),
    init: str = typer.Option(None, "--init", help="Model folder to start from (needed for sd15/xl)."),
    steps: int = typer.Option(3000, "--steps", help="Diffusion training steps."),
    batch_size: int = typer.Option(32, "--batch-size"),
    lr: float = typer.Option(5e-4, "--lr"),
    trainable: str = typer.Option(None, "--trainable", help="all (tiny default) or adapters (sd15/xl default)."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every"),
    max_minutes: float = typer.Option(None, "--max-minutes", help="Stop (and checkpoint) after this long."),
    encoder_steps: int = typer.Option(600, "--encoder-steps", help="tiny: identity/CLIP stand-in training steps."),
    vae_steps: int = typer.Option(1500, "--vae-steps", help="tiny: VAE training steps."),
    identity_loss: float = typer.Option(0.0, "--identity-loss", help="Weight of the identity loss."),
    region_loss: float = typer.Option(0.0, "--region-loss", help="Weight of the attention region loss."),
    mask_dropout: float = typer.Option(0.0, "--mask-dropout", help="Share of samples trained without region "
                                                                    "masks (what the cascade mode needs)."),
    warmup_steps: int = typer.Option(100, "--warmup-steps"),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, bf16, fp16 (GPU)."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train DHumanDiff on PairHuman-format data (runs under `accelerate launch` unchanged)."""
    from ..training.config import TrainConfig
    from ..training.recipe import RecipeOptions, train_model

    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr,
                      trainable=trainable or ("all" if backbone == "tiny" else "adapters"),
                      checkpoint_every=checkpoint_every, max_minutes=max_minutes, seed=seed,
                      identity_loss_weight=identity_loss, region_loss_weight=region_loss,
                      mask_dropout=mask_dropout, warmup_steps=warmup_steps,
                      mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing)
    opts = RecipeOptions(backbone=backbone, init=init, encoder_steps=encoder_steps, vae_steps=vae_steps, seed=seed)
    with progress_bar("training") as update:
        def on_progress(stage: str, step: int, total: int, metrics: dict) -> None:
            info = f"{stage} " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            update(step, total, info)

        report = train_model(data, out, cfg, opts, resume=resume, progress=on_progress)
    console.print_json(json.dumps(report, default=str))


@convert_app.command("official")
def convert_official_cmd(
    sdxl: Path = typer.Option(..., "--sdxl", help="SDXL base 1.0 in diffusers layout."),
    weights: Path = typer.Option(None, "--weights", help="Folder with ip_adapter_ca.pt, face_projection.pt, face_projection2.pt, mapping.pt."),
    out: Path = typer.Option(..., "--out", help="Model folder to write (safetensors); with --batch, the folder receiving one model folder per release."),
    image_encoder: Path = typer.Option(None, "--image-encoder", help="IP-Adapter CLIP ViT-H folder (default: WEIGHTS/image_encoder)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    batch: Path = typer.Option(None, "--batch", help="Folder of release folders (each like --weights): convert each to OUT/<name> with a summary table; a re-run skips unchanged ones (sha256)."),
) -> None:
    """Convert the official DHumanDiff release into a dhumandiff model folder (strict key matching)."""
    from ..model.convert import convert_official

    if (weights is None) == (batch is None):
        from ..errors import DHumanDiffError

        raise DHumanDiffError("give --weights FOLDER (one release) or --batch FOLDER (one release per subfolder)")
    if batch is not None:
        return _convert_batch(sdxl, batch, out, image_encoder, overwrite)
    with progress_bar("converting", total=1) as update:
        path = convert_official(sdxl, weights, out, image_encoder_dir=image_encoder, overwrite=overwrite)
        update(1)
    console.print(f"wrote {path}")


def _convert_batch(sdxl: Path, batch: Path, out: Path, image_encoder: Path | None, overwrite: bool) -> None:
    """Every official release folder in ``batch`` -> ``out/<name>`` (see ``dhumandiff/export/batch.py``)."""
    from ..export.batch import find_sources, has_any, source_digest
    from ..model.convert import convert_official
    from ..model.official import OFFICIAL_FILES
    from .batch_view import batch_items, run_cli_batch

    items = batch_items(find_sources(batch, has_any(*OFFICIAL_FILES.values()), "official release"), out)
    # the shared inputs are hashed once; they are part of every output's identity
    options = {"sdxl_sha256": source_digest([sdxl]) if sdxl.is_dir() else None,
               "image_encoder_sha256": source_digest([image_encoder]) if image_encoder else None}

    def job(item, progress):
        progress(0, 1, "converting")
        path = convert_official(sdxl, item.source, item.out, image_encoder_dir=image_encoder, overwrite=True)
        progress(1, 1, "done")
        return path

    run_cli_batch(items, job, kind="folder", options=options, overwrite=overwrite,
                  title=f"convert official: {batch} -> {out}")


def distill(
    teacher: str = typer.Option("tiny", "--teacher", help="Model to distil (embedded name or folder)."),
    data: Path = typer.Option(..., "--data", help="PairHuman-format folder."),
    out: Path = typer.Option(..., "--out", help="Student model folder to write."),
    method: str = typer.Option("lcm", "--method", help="lcm (1/2/4-step student), lcm-lora (the same as a LoRA "
                                                       "fused into the UNet), cascade-fold (single-pass UNet "
                                                       "that reproduces the cascade mode) or tiny-vae (a "
                                                       "TAESD-style decoder that replaces the full VAE decoder), "
                                                       "prune-base / prune-small / prune-tiny (BK-SDM: a UNet "
                                                       "with blocks removed, distilled from the teacher; keeps "
                                                       "a few-step teacher's sampler)."),
    steps: int = typer.Option(1000, "--steps", help="Distillation steps."),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(None, "--lr", help="Default: 1e-4 (lcm), 1e-3 (lcm-lora, tiny-vae), 5e-5 "
                                                "(cascade-fold), 2e-4 (prune-*)."),
    guidance: float = typer.Option(3.0, "--guidance", help="CFG scale folded into the student (lcm) or used by "
                                                          "the teacher's stage 1 (cascade-fold)."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank for lcm-lora."),
    identity_loss: float = typer.Option(0.0, "--identity-loss", help="lcm: weight of the identity loss on the "
                                                                     "student's one-step output; tiny-vae: on "
                                                                     "the tiny decoder's faces."),
    init_student: str = typer.Option(None, "--init-student", help="lcm / tiny-vae / prune-*: continue from this "
                                                                  "earlier student (embedded name or folder) "
                                                                  "instead of the teacher's UNet / a fresh tiny VAE "
                                                                  "/ the teacher's cut UNet."),
    feature_loss: float = typer.Option(1.0, "--feature-loss", help="prune-*: weight of the per-block feature "
                                                                   "distillation loss (BK-SDM's feature KD)."),
    mask_records: int = typer.Option(256, "--mask-records", help="cascade-fold: records whose cascade masks "
                                                                 "are computed by the teacher."),
    max_minutes: float = typer.Option(None, "--max-minutes"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Distil a model: few-step consistency student (optionally LoRA), a folded cascade, a tiny VAE decoder or a
    pruned (smaller) UNet."""
    from ..distill.block_prune import PruneConfig
    from ..distill.cascade_fold import CascadeFoldConfig
    from ..distill.consistency import ConsistencyConfig
    from ..distill.recipe import distill_model
    from ..distill.tiny_vae import TinyVaeConfig
    from ..model.pruning import PRUNE_LEVELS
    from ..model.registry import resolve_model

    if method == "tiny-vae":
        cfg = TinyVaeConfig(steps=steps, batch_size=batch_size, lr=lr or 1e-3, max_minutes=max_minutes, seed=seed,
                            init_from=init_student, identity_weight=identity_loss)
    elif method == "cascade-fold":
        cfg = CascadeFoldConfig(steps=steps, batch_size=batch_size, lr=lr or 5e-5, guidance_scale=guidance,
                                mask_records=mask_records, max_minutes=max_minutes, seed=seed)
    elif method in ("lcm", "lcm-lora"):
        cfg = ConsistencyConfig(steps=steps, batch_size=batch_size, guidance_scale=guidance,
                                lr=lr or (1e-3 if method == "lcm-lora" else 1e-4), max_minutes=max_minutes,
                                seed=seed, lora_rank=lora_rank if method == "lcm-lora" else 0,
                                identity_loss_weight=identity_loss, init_student=init_student)
    elif method.startswith("prune-") and method[len("prune-"):] in PRUNE_LEVELS:
        cfg = PruneConfig(level=method[len("prune-"):], steps=steps, batch_size=batch_size, lr=lr or 2e-4,
                          feature_loss_weight=feature_loss, identity_loss_weight=identity_loss,
                          max_minutes=max_minutes, seed=seed, init_student=init_student)
    else:
        raise typer.BadParameter("--method must be lcm, lcm-lora, cascade-fold, tiny-vae or prune-base / "
                                 "prune-small / prune-tiny")
    with progress_bar("distilling") as update:
        report = distill_model(resolve_model(teacher), data, out, cfg,
                               progress=lambda i, n, m: update(i, n, f"loss={m['loss']:.4f}"))
    console.print_json(json.dumps(report, default=str))


def evaluate(
    data: Path = typer.Option(..., "--data", help="PairHuman-format folder; its held-out split is used."),
    out: Path = typer.Option(Path("eval"), "--out", help="Report folder (report.json, table.md, sheets)."),
    models: list[str] = typer.Option(["tiny"], "--model", help="Model(s) to evaluate (repeatable)."),
    steps: int = typer.Option(30, "--steps", help="Steps for full models."),
    modes: str = typer.Option("single,cascade", "--modes", help="Modes for full models."),
    student_steps: str = typer.Option("1,2,4", "--student-steps", help="Step counts for distilled (LCM) models."),
    student_samplers: str = typer.Option(None, "--student-samplers",
                                         help="Samplers for distilled models, e.g. lcm,tcd (default: the model's)."),
    limit: int = typer.Option(24, "--limit", help="Held-out images per setting."),
    evaluator: str = typer.Option("world-b", "--evaluator", help="world-b (second world encoder), dlib, insightface."),
    evaluator_path: Path = typer.Option(None, "--evaluator-path", help="Encoder folder (world-b) or insightface models folder."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Identity similarity, swap rate, prompt adherence, FID-style distance and cost, per model and mode."""
    from ..checks.evaluate import EvalSetting, evaluate as run_eval
    from ..model.faces import get_face_analyzer
    from ..model.generate import load_model
    from ..model.registry import ASSETS

    if evaluator == "world-b":
        path = evaluator_path or (ASSETS.parent / "evaluators" / "world-b")
        judge = get_face_analyzer("world", encoder=path)
    elif evaluator == "insightface":
        judge = get_face_analyzer("insightface", root=evaluator_path)
    else:
        judge = get_face_analyzer(evaluator)
    settings = []
    for name in models:
        model = load_model(name)
        own = model.config.defaults.get("sampler")
        if own in ("lcm", "tcd"):  # a distilled student: CFG-free, single pass per step
            samplers = [x for x in (student_samplers or own).split(",") if x]
            for smp in samplers:
                if smp not in ("lcm", "tcd"):
                    raise typer.BadParameter(f"--student-samplers takes lcm and/or tcd, got {smp!r}")
                for n in (int(x) for x in student_steps.split(",") if x):
                    tag = "" if len(samplers) == 1 and smp == own else f"-{smp}"
                    settings.append(EvalSetting(f"{Path(name).name}-{n}step{tag}", model, "single", n, sampler=smp))
        else:
            folded = bool(model.config.defaults.get("folded_from"))  # a folded cascade runs single mode only
            for mode in (m for m in modes.split(",") if m and not (folded and m != "single")):
                settings.append(EvalSetting(f"{Path(name).name}-{mode}-{steps}", model, mode, steps))
    with progress_bar("evaluating") as update:
        report = run_eval(settings, data, judge, out, limit=limit, seed=seed,
                          progress=lambda label, i, n: update(i, n, label))
    console.print(report.markdown())

"""Record the real inputs every exported graph sees while the reference sampler generates portraits.

Static int8 quantisation needs activations that look like deployment: UNet inputs at *every* timestep of the
sampler the bundle runs (early steps are noise, late steps are images; a range fitted on one misses the other)
and text / identity conditionings of real prompts and faces. So calibration runs the PyTorch reference
(:class:`~dhumandiff.model.sampler.ReferenceSampler`, mode ``single``, the bundle's own sampler, steps and
guidance) on records of a PairHuman-format folder — each record's caption, person boxes and the two identities'
reference photos — and forward pre-hooks on the model's modules copy what each component receives.

The hooks sit on exactly the modules the export wrappers (``export/wrappers.py``) wrap, so a recorded input is
the graph input under its bundle-contract name: ``identity_encoder.face``, ``image_encoder.pixel_values``,
``face_projection.{image_embeds,id_embedding}``, ``text_encoder.{input_ids,face_tokens,subject_positions}``,
``unet.{sample,timestep,encoder_hidden_states,ip_tokens,region_mask,ip_scale[,text_embeds,time_ids]}``, and
``vae_decoder.latent_sample`` (the final latents / scaling factor).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import DHumanDiffError
from ..model.dhumandiff_model import DHumanDiff
from .store import STEPPED, CalibrationSet, tensors_digest, write_calibration

Progress = Callable[[int, int, str], None]

UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states", "ip_tokens", "region_mask", "ip_scale", "text_embeds",
               "time_ids")


@dataclass(frozen=True)
class CalibrationConfig:
    """What to record. ``steps``/``sampler``/``guidance`` default to the model's own defaults (the bundle's)."""

    count: int = 4
    seed: int = 0
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    split: str | None = None

    def resolved(self, model: DHumanDiff) -> "CalibrationConfig":
        d = model.config.defaults
        return CalibrationConfig(
            count=self.count, seed=self.seed, steps=int(self.steps or d.get("steps", 30)),
            sampler=str(self.sampler or d.get("sampler", "ddim")),
            guidance=float(d.get("guidance_scale", 5.0) if self.guidance is None else self.guidance),
            split=self.split)


class InputRecorder:
    """Forward pre-hooks that copy each component's inputs, grouped per record (``begin(record)``)."""

    def __init__(self, model: DHumanDiff) -> None:
        self.model = model
        self.calls: dict[str, list[dict[str, np.ndarray]]] = {}
        self.unet_steps: list[list[dict[str, np.ndarray]]] = []

    def begin(self) -> None:
        self.unet_steps.append([])

    def _add(self, component: str, inputs: dict[str, torch.Tensor]) -> None:
        self.calls.setdefault(component, []).append({k: v.detach().cpu().numpy().copy() for k, v in inputs.items()})

    def _rows(self, component: str, inputs: dict[str, torch.Tensor]) -> None:
        """Components the reference runs on both persons at once: one graph call (batch 1) per row."""
        for i in range(next(iter(inputs.values())).shape[0]):
            self._add(component, {k: v[i:i + 1] for k, v in inputs.items()})

    @contextlib.contextmanager
    def hooks(self) -> Iterator["InputRecorder"]:
        m = self.model
        handles = []

        def on(module: torch.nn.Module | None, fn: Callable, with_kwargs: bool = False) -> None:
            if module is not None:
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs))

        def unet(_mod, args, kwargs):
            values = dict(zip(UNET_INPUTS, args))
            values.update({k: v for k, v in kwargs.items() if k in UNET_INPUTS})
            entry = {k: v.detach().cpu().numpy().copy() for k, v in values.items() if isinstance(v, torch.Tensor)}
            self.unet_steps[-1].append(entry)

        def image(_mod, args, kwargs):
            self._rows("image_encoder", {"pixel_values": kwargs.get("pixel_values", args[0] if args else None)})

        on(m.identity_encoder, lambda _m, a: self._rows("identity_encoder", {"face": a[0]}))
        on(m.image_encoder, image, with_kwargs=True)
        on(m.face_proj, lambda _m, a: self._rows("face_projection", {"image_embeds": a[1], "id_embedding": a[0]}))
        on(m.subject_text, lambda _m, a: self._add("text_encoder", dict(zip(
            ("input_ids", "face_tokens", "subject_positions"), a))))
        on(m.plain_text_2, lambda _m, a: self._add("text_encoder_2", {"input_ids": a[0]}))
        on(m.identity_unet, unet, with_kwargs=True)
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def add_latents(self, latents: torch.Tensor) -> None:
        """The VAE decoder's input: the final latents divided by the scaling factor (as the runtimes do)."""
        self._add("vae_decoder", {"latent_sample": latents / self.model.vae.config.scaling_factor})

    # ---------------------------------------------------------------------------------------------- arrays

    def arrays(self) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """``(tensors, layout)``: stacked arrays and, per component, each input's graph shape and layout."""
        tensors: dict[str, np.ndarray] = {}
        layout: dict[str, dict[str, Any]] = {}
        for comp, calls in self.calls.items():
            names = list(calls[0])
            layout[comp] = {"samples": len(calls), "inputs": {}}
            for n in names:
                tensors[f"{comp}/{n}"] = np.stack([c[n] for c in calls])
                layout[comp]["inputs"][n] = {"shape": list(calls[0][n].shape), "dtype": str(calls[0][n].dtype),
                                             "per_step": False}
        steps = {len(r) for r in self.unet_steps}
        if self.unet_steps and len(steps) == 1:
            names = list(self.unet_steps[0][0])
            layout[STEPPED] = {"samples": sum(len(r) for r in self.unet_steps), "inputs": {}}
            for n in names:
                per_record = [np.stack([s[n] for s in rec]) for rec in self.unet_steps]
                static = all((p == p[:1]).all() for p in per_record)
                tensors[f"{STEPPED}/{n}"] = np.stack([p[0] for p in per_record] if static else per_record)
                layout[STEPPED]["inputs"][n] = {"shape": list(per_record[0].shape[1:]),
                                                "dtype": str(per_record[0].dtype), "per_step": not static}
        return tensors, layout


# ----------------------------------------------------------------------------------------------------- data


def data_digest(root: Path, items: list[tuple[Path, Path]], identities: list[str]) -> str:
    """sha256 of what calibration read: the chosen records' annotation and image files, the reference faces."""
    from ..data.layout import DatasetLayout

    layout = DatasetLayout.from_root(root)
    files: list[Path] = []
    for ann_path, image_path in items:
        files += [ann_path, image_path]
    for iid in sorted(set(identities)):
        files += list(layout.face_files(root, iid))
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).relative_to(root).as_posix().encode() + b"\0")
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def _uint8(t: torch.Tensor) -> np.ndarray:
    """A [3,H,W] tensor in [0,1] (the dataset's faces) -> HxWx3 uint8 (exact: it came from uint8)."""
    return np.round(t.permute(1, 2, 0).numpy() * 255.0).clip(0, 255).astype(np.uint8)


@torch.no_grad()
def record_calibration(model: DHumanDiff, data_dir: str | Path, out_dir: str | Path,
                       config: CalibrationConfig | None = None, *, model_name: str | None = None,
                       overwrite: bool = False, progress: Progress | None = None,
                       sensitivity: Callable[[CalibrationSet], dict] | None = None) -> Path:
    """Generate one portrait per chosen record with the reference sampler, recording every graph input.

    ``config.count`` records are drawn (seeded) from ``data_dir`` (``config.split`` restricts the split); record
    ``k`` is sampled with seed ``config.seed + k``. ``sensitivity(calib)``, when given, runs on the recorded set
    before anything is written, and its JSON is published in the same atomic folder.
    """
    from ..data.dataset import PairHumanDataset
    from ..model.face_inputs import prepare_face
    from ..model.generate import default_analyzer
    from ..model.sampler import ReferenceSampler
    from ..utils.prompt import person_positions

    cfg = (config or CalibrationConfig()).resolved(model)
    if Path(out_dir).exists() and not overwrite:  # before minutes of sampling, not after
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if cfg.count < 1:
        raise DHumanDiffError("calibration needs at least one record (--count 1 or more)")
    model.eval()
    root = Path(data_dir)
    if not root.is_dir():
        raise DHumanDiffError(f"{root} is not a folder; pass a PairHuman-format folder (`dhumandiff data synth "
                              f"--out DIR` makes one)")
    ds = PairHumanDataset(root, split=cfg.split, use_reference_faces=True, seed=cfg.seed)
    if len(ds) == 0:
        raise DHumanDiffError(f"{root} holds no records{f' in split {cfg.split!r}' if cfg.split else ''}; "
                              f"calibrate on a PairHuman-format folder (`dhumandiff data synth --out DIR`)")
    picks = sorted(int(i) for i in np.random.default_rng(cfg.seed).permutation(len(ds))[:cfg.count])
    analyzer = default_analyzer(model)
    sampler = ReferenceSampler(model)
    recorder = InputRecorder(model)
    fc = model.config
    used_ids: list[str] = []
    with recorder.hooks():
        for k, idx in enumerate(picks):
            if progress:
                progress(k, len(picks), f"record {idx}")
            item = ds[idx]
            recorder.begin()
            faces = tuple(prepare_face(analyzer, _uint8(item["reference_faces"][j]), fc.face_size, fc.clip_size,
                                       fc.clip_mean, fc.clip_std, name=f"reference face {item['identity_ids'][j]}")
                          for j in range(2))
            used_ids += list(item["identity_ids"])
            prompt = item["caption"]
            ids, pos = person_positions(model.tokenizer.backend_tokenizer, prompt)
            out = sampler.sample(faces, torch.from_numpy(ids)[None], torch.from_numpy(pos)[None],  # type: ignore[arg-type]
                                 item["boxes"].numpy(), steps=cfg.steps, seed=cfg.seed + k, guidance=cfg.guidance,
                                 mode="single", sampler=cfg.sampler, input_ids_2=model.tokenize_2([prompt]))
            recorder.add_latents(out.latents)
    if progress:
        progress(len(picks), len(picks), "writing")
    tensors, layout = recorder.arrays()
    sched_steps = len(recorder.unet_steps[0])
    stems = [ds.items[i][1].stem for i in picks]
    files = [(root / ds.layout.annotations / f"{stem}.json", ds.items[i][1]) for stem, i in zip(stems, picks)]
    meta = {
        "model": model_name or fc.name, "backbone": fc.name, "seed": cfg.seed, "steps": sched_steps,
        "sampler": cfg.sampler, "guidance_scale": cfg.guidance, "records": len(picks),
        "data": {"folder": root.name, "split": cfg.split, "records": stems,
                 "sha256": data_digest(root, files, used_ids)},
        "components": layout,
    }
    draft = CalibrationSet(Path(out_dir), {**meta, "tensors_sha256": tensors_digest(tensors)}, tensors)
    report = sensitivity(draft) if sensitivity is not None else None
    return write_calibration(out_dir, tensors, meta, overwrite=overwrite, sensitivity=report)

"""``dhumandiff eval``: how well generated portraits keep identities, follow prompts and look like the world.

For each held-out record of a PairHuman-format folder (identities never seen in training) the two identities'
reference photos, the caption and the annotated person boxes go in; per generated image we measure

* **identity similarity** of each generated person to its reference, with an encoder that is *not* the one the
  model was trained against (the tiny world's second encoder, another architecture and seed; or dlib /
  insightface for real photos), on face crops located by the detector inside each person's box, falling back
  to the box's head region;
* **swap**: whether person a looks more like reference b and vice versa;
* **attribute accuracy**: face colours (skin, hair, eyes, glasses, beard) read back from the pixels by
  :class:`WorldAttributeReader` — no network that could be gamed;
* **prompt adherence**: the setting (nearest centroid of background colours, fitted on real images) and each
  person's clothes colour read from the torso region;
* an **FID-style distance**: Fréchet distance between 4x4-pooled VAE latents of generated and real images;
* **cost**: UNet passes and wall time per image.

It writes a JSON report and a contact sheet (reference a | reference b | output | real image) a person can check.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..data import world as W
from ..data.dataset import PairHumanDataset
from ..errors import FaceNotFoundError, MultipleFacesError
from ..model.dhumandiff_model import DHumanDiff
from ..model.face_inputs import prepare_face
from ..contract.faces.base import Face, FaceAnalyzer, l2_normalize
from ..contract.recipe import Recipe
from ..contract.faces.world_detect import WorldAttributeReader, WorldFaceDetector
from ..model.faces.world import face_crop
from ..model.generate import default_analyzer
from ..model.sampler import ReferenceSampler
from ..utils.atomic import write_text_atomic
from ..contract.images import image01_to_pil, load_rgb
from ..utils.images import save_image_atomic
from ..utils.prompt import person_positions


@dataclass
class EvalSetting:
    """One row of the table: a model, a mode and a step count."""

    label: str
    model: DHumanDiff
    mode: str = "single"
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    #: conditioning recipe (None: the model's own); see ``contract/recipe.py``
    recipe: Recipe | None = None


@dataclass
class EvalReport:
    rows: list[dict] = field(default_factory=list)
    per_image: dict[str, list[dict]] = field(default_factory=dict)
    skipped_records: int = 0  # held-out records passed over: no reference photo with one detectable face

    def to_json(self) -> dict:
        return {"rows": self.rows, "per_image": self.per_image, "skipped_records": self.skipped_records}

    def markdown(self) -> str:
        cols = ["label", "mode", "steps", "identity_similarity", "swap_rate", "attribute_accuracy",
                "setting_accuracy", "clothes_accuracy", "fid_style", "unet_passes", "seconds_per_image"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in self.rows:
            lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
        if self.skipped_records:
            lines += ["", f"{self.skipped_records} held-out record(s) skipped: no reference photo of one of its "
                          f"identities shows a single usable face."]
        return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


# ------------------------------------------------------------------------------------------------ readers
def _regions(img: np.ndarray) -> np.ndarray:
    """Scene feature: mean colour of the four corners' 1/6 squares and the top/bottom strips (18 numbers)."""
    h, w = img.shape[:2]
    s = max(2, h // 6)
    parts = [img[:s, :s], img[:s, -s:], img[-s:, :s], img[-s:, -s:], img[:s], img[-s:]]
    return np.concatenate([p.reshape(-1, 3).mean(0) for p in parts]).astype(np.float32)


class SettingReader:
    """Nearest-centroid setting classifier on background colours, fitted on real images of the world."""

    def __init__(self, images: list[np.ndarray], settings: list[str]) -> None:
        feats = np.stack([_regions(i) for i in images])
        self.labels = sorted(set(settings))
        self.centroids = np.stack([feats[[s == lab for s in settings]].mean(0) for lab in self.labels])

    def read(self, img: np.ndarray) -> str:
        d = ((self.centroids - _regions(img)[None]) ** 2).sum(1)
        return self.labels[int(np.argmin(d))]


def clothes_colour(img: np.ndarray, box_px: np.ndarray, face_box: np.ndarray | None) -> str:
    """Median colour of the torso (below the face, inside the person box) -> nearest clothes palette name."""
    x0, y0, x1, y1 = [int(round(v)) for v in box_px]
    top = int(face_box[3]) if face_box is not None else y0 + (y1 - y0) // 3
    cx0, cx1 = x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4
    region = img[max(top + 1, 0):max(y1, top + 2), max(cx0, 0):max(cx1, cx0 + 1)].reshape(-1, 3)
    if region.size == 0:
        return "unknown"
    med = np.median(region, axis=0)
    names = list(W.CLOTHES_RGB)
    d = [np.sum((med - np.asarray(W.CLOTHES_RGB[n])) ** 2) for n in names]
    return names[int(np.argmin(d))]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` [N, D]."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ------------------------------------------------------------------------------------------------ evaluation
def _person_face(img: np.ndarray, box_px: np.ndarray, detector: WorldFaceDetector) -> np.ndarray:
    """The face box of the person in ``box_px``: a detected face whose centre lies in the box, else its head."""
    faces = detector.detect(img)
    x0, y0, x1, y1 = box_px
    inside = [f for f in faces if x0 <= (f.bbox[0] + f.bbox[2]) / 2 <= x1 and y0 <= (f.bbox[1] + f.bbox[3]) / 2 <= y1]
    if inside:
        return max(inside, key=lambda f: f.area).bbox
    w = x1 - x0
    side = 0.62 * w
    cx = (x0 + x1) / 2
    return np.array([cx - side / 2, y0, cx + side / 2, y0 + side], np.float32)


def evaluate(settings: list[EvalSetting], data_dir: str | Path, evaluator: FaceAnalyzer, out_dir: str | Path,
             limit: int = 32, seed: int = 0, progress: Callable[[str, int, int], None] | None = None) -> EvalReport:
    """Run every setting on the same held-out records and write ``report.json``, ``table.md`` and sheets."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = PairHumanDataset(data_dir, split="heldout", use_reference_faces=False)
    if len(ds) == 0:
        ds = PairHumanDataset(data_dir, use_reference_faces=False)
    root = Path(data_dir)
    # one face analyzer per model (a student's 1/2/4-step settings share theirs), built once for all settings
    model_analyzers = {id(st.model): default_analyzer(st.model) for st in settings}
    analyzers = [evaluator, *model_analyzers.values()]
    usable: dict[str, Path | None] = {}  # identity -> its usable reference photo (identities recur across records)
    items, references, skipped = [], [], 0
    for i in range(len(ds)):
        if len(items) == limit:
            break
        it = ds[i]
        for ident in it["identity_ids"]:
            if ident not in usable:
                usable[ident] = _usable_reference(root, ident, analyzers)
        refs = [usable[ident] for ident in it["identity_ids"]]
        if None in refs:  # no photo of this identity shows one usable face to every analyzer: not a fair record
            skipped += 1
            continue
        items.append(it)
        references.append(refs)
    n = len(items)
    if n == 0:
        raise ValueError(f"no held-out record of {data_dir} has a usable reference photo for both identities")
    real = [(np.asarray(it["pixel_values"].permute(1, 2, 0).numpy() * 127.5 + 127.5)).clip(0, 255).astype(np.uint8)
            for it in items]
    setting_names = [_setting_of(it) for it in items]
    reader = SettingReader(real, setting_names)
    attr_reader = WorldAttributeReader()
    detector = WorldFaceDetector()
    report = EvalReport(skipped_records=skipped)
    ref_vae = settings[0].model.vae
    real_feats = _latent_feats(ref_vae, real)
    for st in settings:
        model = st.model.eval()
        analyzer = model_analyzers[id(st.model)]
        sampler = ReferenceSampler(model)
        cfg = model.config
        recipe = st.recipe or cfg.conditioning
        steps = st.steps or cfg.defaults.get("steps", 30)
        guidance = cfg.defaults.get("guidance_scale", 3.0) if st.guidance is None else st.guidance
        rows, outputs, sheets = [], [], []
        t_total, passes = 0.0, 0
        for k, it in enumerate(items):
            refs = references[k]
            ref_imgs = [load_rgb(p) for p in refs]
            faces = tuple(prepare_face(analyzer, im, cfg.face_size, cfg.clip_size, cfg.clip_mean, cfg.clip_std,
                                       name=str(p), clip_input=recipe.clip_input) for im, p in zip(ref_imgs, refs))
            prompt = it["caption"]
            ids, pos = person_positions(model.tokenizer.backend_tokenizer, prompt)
            boxes = it["boxes"].numpy()
            t0 = time.perf_counter()
            out = sampler.sample(faces, torch.from_numpy(ids)[None], torch.from_numpy(pos)[None], boxes, steps=steps,
                                 seed=seed + k, guidance=guidance, mode=st.mode, sampler=st.sampler, recipe=recipe)
            t_total += time.perf_counter() - t0
            passes = out.unet_passes
            img = np.asarray(image01_to_pil(out.image.numpy()))
            outputs.append(img)
            rows.append(_score(img, it, ref_imgs, boxes, evaluator, detector, attr_reader, reader))
            sheets.append((ref_imgs, img, real[k]))
            if progress:
                progress(st.label, k + 1, n)
        fd = frechet_distance(_latent_feats(ref_vae, outputs), real_feats)
        row = {"label": st.label, "mode": st.mode, "steps": steps, "images": n,
               "identity_similarity": float(np.mean([r["identity_similarity"] for r in rows])),
               "swap_rate": float(np.mean([r["swapped"] for r in rows])),
               "attribute_accuracy": float(np.mean([r["attribute_accuracy"] for r in rows])),
               "setting_accuracy": float(np.mean([r["setting_ok"] for r in rows])),
               "clothes_accuracy": float(np.mean([r["clothes_accuracy"] for r in rows])),
               "fid_style": fd, "unet_passes": passes, "seconds_per_image": t_total / n}
        report.rows.append(row)
        report.per_image[st.label] = rows
        save_image_atomic(_contact_sheet(sheets[:8]), out_dir / f"sheet_{st.label}.png")
    write_text_atomic(out_dir / "report.json", json.dumps(report.to_json(), indent=2))
    write_text_atomic(out_dir / "table.md", report.markdown() + "\n")
    return report


def _setting_of(item: dict) -> str:
    cap = item["caption"]
    for s, words in (("beach", ("beach",)), ("garden", ("garden",)), ("city", ("city",)), ("chapel", ("chapel",))):
        if any(w in cap for w in words):
            return s
    return "unknown"


def _usable_reference(root: Path, identity: str, analyzers: list[FaceAnalyzer]) -> Path | None:
    """The identity's first reference photo which every analyzer (the judge's and each model's) accepts as a
    photo of one person; None when none does (the record is then skipped and counted, not scored on a guess)."""
    files = sorted((root / "faces" / identity).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no reference photo for identity {identity} under {root / 'faces'}")
    for path in files:
        img = load_rgb(path)
        try:
            for a in analyzers:
                a.analyze_single(img, name=str(path))
        except (FaceNotFoundError, MultipleFacesError):
            continue
        return path
    return None


def _score(img, item, ref_imgs, boxes, evaluator, detector, attr_reader, reader) -> dict:
    h, w = img.shape[:2]
    boxes_px = boxes * np.array([w, h, w, h], np.float32)
    ref_emb = [evaluator.analyze_single(r, name="reference").embedding for r in ref_imgs]
    gen_emb, attr_hits, clothes_hits = [], [], []
    for k in range(2):
        fb = _person_face(img, boxes_px[k], detector)
        crop = face_crop(img, fb)
        gen_emb.append(l2_normalize(evaluator.embed(img, Face(bbox=fb))))
        truth = item["attributes"][k]
        got = attr_reader.read(crop)
        keys = [a for a in ("skin_tone", "hair_color", "eye_color", "glasses", "beard") if a in got and a in truth]
        attr_hits.extend(float(got[a] == truth[a]) for a in keys)
        want = str(truth.get("details_of_clothes_and_shoes", "")).split(" ")[0]
        clothes_hits.append(float(clothes_colour(img, boxes_px[k], fb) == want))
    sim = [float(np.dot(gen_emb[k], ref_emb[k])) for k in range(2)]
    cross = [float(np.dot(gen_emb[0], ref_emb[1])), float(np.dot(gen_emb[1], ref_emb[0]))]
    return {"identity_similarity": float(np.mean(sim)), "similarity_a": sim[0], "similarity_b": sim[1],
            "swapped": float(sum(cross) > sum(sim)), "attribute_accuracy": float(np.mean(attr_hits)) if attr_hits else 0.0,
            "clothes_accuracy": float(np.mean(clothes_hits)),
            "setting_ok": float(reader.read(img) == _setting_of(item))}


@torch.no_grad()
def _latent_feats(vae, images: list[np.ndarray]) -> np.ndarray:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    z = vae.encode(x).latent_dist.mean
    return torch.nn.functional.adaptive_avg_pool2d(z, 4).flatten(1).numpy().astype(np.float64)


def _contact_sheet(rows: list[tuple[list[np.ndarray], np.ndarray, np.ndarray]], cell: int = 96) -> Image.Image:
    sheet = Image.new("RGB", (cell * 4, cell * max(1, len(rows))), (255, 255, 255))
    for r, (refs, out, real) in enumerate(rows):
        for c, im in enumerate([refs[0], refs[1], out, real]):
            sheet.paste(Image.fromarray(im).resize((cell, cell), Image.BICUBIC), (c * cell, r * cell))
    return sheet

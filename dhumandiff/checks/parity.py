"""``dhumandiff parity``: is an exported bundle the same model as its torch source, within its written budget?

Two measurements (docs/design.md 3):

* **per component**, on the export specs' fixed seeded inputs: the torch fp32 wrapper against the bundle's graph
  run through the shipped runtime adapter (``dhumandiff.runtimes``), by max abs error, cosine and PSNR, gated by
  the per-component budget the exporter wrote into ``bundle.json``;
* **end to end**: the torch :class:`~dhumandiff.model.sampler.ReferenceSampler` (mode ``single``) and the
  bundle's generator (``dhumandiff.runtimes.load_bundle``) on the same two faces, prompt, layout and seed (both
  draw the same NumPy noise). Judged by the decoded image's PSNR and by the cosine between the face embeddings
  of each generated person (the model's own face analyzer; each face located once, in the reference image, and
  the same crop embedded in both images).

A quantised bundle records its own budget (``quantization.budget`` in ``bundle.json``, written by
``export/quantize_modes.py``): image PSNR against the fp32 reference, and each generated person's similarity to
its reference photo — by an evaluator encoder the model was not trained against (the tiny world's ``world-b``,
as ``dhumandiff eval`` uses) — within ``identity_delta`` of the fp32 image's.

The end-to-end reference is built from exactly the runtime's inputs: the faces go through the runtime's own
preprocessing (``contract.images``: centre crop, bicubic resize, normalise) and the layout is snapped to the
latent grid, where the reference's and the runtime's mask rasterisation rules agree. So the measurement is of
the exported graphs and the NumPy sampler, not of two different crops or masks.

This module sits above both the model and the runtimes stages, so it may import both.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import BundleError, DHumanDiffError, ParityError
from ..export.bundle import torch_outputs
from ..export.specs import DEFAULT_TOLERANCES, END_TO_END_BUDGETS, get_spec
from ..contract.metrics import cosine, psnr_db
from ..export.validate import Comparison, Tolerance, compare_outputs, worst
from ..model.dhumandiff_model import DHumanDiff
from ..utils.atomic import write_text_atomic
from ..utils.numerics import json_safe
from ..utils.regions import default_boxes

DEFAULT_PROMPT = "a photo of a man and a woman"
#: Images (seeds seed, seed+1, ...) whose mean identity similarity a quantised bundle is judged on: one image's
#: similarity moves by a few hundredths with any small pixel change on a 64-pixel face, a mean of four is steadier.
IDENTITY_SEEDS = 4


# ------------------------------------------------------------------------------------------------- report


@dataclass
class ComponentResult:
    name: str
    max_abs: float
    cosine: float
    psnr_db: float
    tolerance: dict[str, Any]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class EndToEndResult:
    psnr_db: float
    identity_cosine: list[float]
    min_psnr_db: float
    identity_min_cosine: float
    steps: int
    seed: int
    guidance_scale: float
    prompt: str
    boxes: list[list[float]]
    failures: list[str]
    #: Quantised bundles only: each generated person's similarity to its reference photo (evaluator encoder),
    #: averaged over the images of ``identity_seeds``, in the bundle's images and in the fp32 reference images,
    #: the largest difference and the budget for it.
    identity_similarity: list[float] | None = None
    identity_similarity_reference: list[float] | None = None
    identity_delta: float | None = None
    identity_max_delta: float | None = None
    identity_seeds: list[int] | None = None

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ParityReport:
    """Everything ``dhumandiff parity`` measured, and whether the bundle stays inside its budget."""

    bundle: str
    runtime: str
    device: str
    precision: str
    backbone: str
    source_model: str | None
    components: list[ComponentResult] = field(default_factory=list)
    end_to_end: EndToEndResult | None = None
    #: The variant a quantised bundle records (mode, excluded layers, budget); None for float bundles.
    quantization: dict[str, Any] | None = None
    #: What ran the bundle's graphs (the runtime adapter's providers, or the weights-only stand-in).
    runner: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        out = [f"{c.name}: {f}" for c in self.components for f in c.failures]
        if self.end_to_end is not None:
            out += [f"end to end: {f}" for f in self.end_to_end.failures]
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["components"] = {c.name: {k: v for k, v in asdict(c).items() if k != "name"} | {"passed": c.passed}
                           for c in self.components}
        if self.end_to_end is not None:
            d["end_to_end"]["passed"] = self.end_to_end.passed
        d["passed"] = self.passed
        d["failures"] = self.failures
        return json_safe(d)

    def write(self, path: str | Path) -> Path:
        """Write the report as JSON, atomically (a reader never sees half a report)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return Path(path)


# ------------------------------------------------------------------------------------------------ budget


def _raw_manifest(bundle_root: Path) -> dict[str, Any]:
    return json.loads((bundle_root / "bundle.json").read_text(encoding="utf-8"))


def _raw_budget(bundle_root: Path) -> dict[str, Any]:
    """The budget as written (the runtime's manifest reader keeps only the fields the runtimes need)."""
    return dict(_raw_manifest(bundle_root).get("budget") or {})


def quantization_budget(bundle_root: Path) -> dict[str, Any] | None:
    """A quantised bundle's recorded variant (``quantization`` in ``bundle.json``), or None for a float one."""
    section = _raw_manifest(bundle_root).get("quantization")
    if section is None:
        return None
    if not isinstance(section, dict) or not isinstance(section.get("budget"), dict) \
            or "psnr_db" not in section["budget"] or "identity_delta" not in section["budget"]:
        raise BundleError("bundle.json: 'quantization.budget' must hold psnr_db and identity_delta; re-export the "
                          "bundle with `dhumandiff export ... --quantize`")
    return section


def default_evaluator(model: DHumanDiff, analyzer: Any) -> Any:
    """The identity judge for quantised bundles: for tiny-world models the world's second encoder (another
    architecture and seed than the one the model was trained against, as ``dhumandiff eval`` uses); otherwise
    the face analyzer itself."""
    from ..model.faces import get_face_analyzer
    from ..model.faces.world import WorldIdentityEncoder
    from ..model.registry import ASSETS

    if isinstance(model.identity_encoder, WorldIdentityEncoder):
        return get_face_analyzer("world", encoder=ASSETS.parent / "evaluators" / "world-b")
    return analyzer


FaceCrop = tuple[tuple[int, int, int, int], Any]


def face_crops(analyzer: Any, image: np.ndarray, boxes: np.ndarray) -> list[FaceCrop]:
    """Where each person's face is in ``image``: ``(person box in pixels, face inside it)``; the analyzer's
    largest detection inside the box, else the whole box."""
    from ..contract.faces.base import Face

    h, w = image.shape[:2]
    out = []
    for box in boxes:
        x0, y0, x1, y1 = (int(round(v)) for v in (box[0] * w, box[1] * h, box[2] * w, box[3] * h))
        rect = (max(x0, 0), max(y0, 0), max(x1, x0 + 1), max(y1, y0 + 1))
        region = np.ascontiguousarray(image[rect[1]:rect[3], rect[0]:rect[2]])
        faces = analyzer.detect(region)
        face = max(faces, key=lambda f: f.area) if faces else Face(bbox=[0, 0, region.shape[1], region.shape[0]])
        out.append((rect, Face(bbox=list(face.bbox))))
    return out


def crop_embedding(analyzer: Any, image: np.ndarray, crop: FaceCrop) -> np.ndarray:
    """The L2-normalised embedding of the face at ``crop`` (found in another image) in ``image``."""
    from ..contract.faces.base import l2_normalize

    (x0, y0, x1, y1), face = crop
    region = np.ascontiguousarray(image[y0:y1, x0:x1])
    return l2_normalize(np.asarray(analyzer.embed(region, face), np.float32)).reshape(-1)


def identity_similarity(evaluator: Any, images: Sequence[np.ndarray], references: Sequence[np.ndarray],
                        boxes: np.ndarray) -> list[list[float]]:
    """Per image, the cosine of each generated person's face to that person's reference photo.

    The face of each person is located once, in ``images[0]`` (the fp32 reference image), and that same crop is
    embedded in every image: the comparison measures how the face's pixels changed, not whether a detector on a
    64-pixel image happened to fire in both.
    """
    targets = [np.asarray(evaluator.analyze_single(np.ascontiguousarray(r), name="reference photo").embedding,
                          np.float32).reshape(-1) for r in references]
    crops = face_crops(evaluator, images[0], boxes)
    return [[float(np.dot(crop_embedding(evaluator, image, c), t)) for c, t in zip(crops, targets)]
            for image in images]


def component_tolerance(budget: dict[str, Any], name: str, precision: str) -> Tolerance:
    """The bundle's gate for one component.

    Bundles written by this exporter carry one entry per component (at the graph's own precision: an fp16
    bundle's fp32 VAE decoder is held to fp32). Otherwise: ``component_max_abs`` with the precision's default
    cosine and PSNR floors (fp16's for any reduced precision).
    """
    entry = (budget.get("components") or {}).get(name)
    if entry is not None:
        return Tolerance(entry.get("atol"), float(entry["min_cosine"]), float(entry["min_psnr_db"]))
    default = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp16"])
    return Tolerance(budget.get("component_max_abs", default.atol), default.min_cosine, default.min_psnr_db)


# ------------------------------------------------------------------------------------- reference model


def load_reference(manifest: Any, model: DHumanDiff | str | Path | None) -> tuple[DHumanDiff, str | None]:
    """The torch model to compare with: given, or the ``source_model`` recorded in ``bundle.json``."""
    from ..model.generate import load_model

    source = manifest.extra.get("source_model")
    if isinstance(model, DHumanDiff):
        ref = model
    else:
        name = str(model) if model is not None else source
        if name is None:
            raise BundleError("this bundle records no source_model; pass the model it was exported from "
                              "(--model NAME_OR_FOLDER)")
        ref = load_model(name)
        source = name
    merging = (manifest.extra.get("export") or {}).get("token_merging")
    if merging and not isinstance(model, DHumanDiff):  # the graphs merge tokens: so must the reference
        ref.set_token_merging(merging["ratio"], merging.get("max_downsample", 1))
    if ref.config.name != manifest.backbone:
        raise BundleError(f"the reference model is a {ref.config.name} model but the bundle was exported from a "
                          f"{manifest.backbone} model; pass the matching --model")
    return ref.eval(), source


# --------------------------------------------------------------------------------------- (a) components


@torch.no_grad()
def component_parity(manifest: Any, model: DHumanDiff, runner: Any, budget: dict[str, Any],
                     seed: int = 0) -> list[ComponentResult]:
    """Every component of the bundle against its torch fp32 wrapper, on the specs' seeded example inputs."""
    graph_precision = (manifest.extra.get("export") or {}).get("graph_precision", {})
    results = []
    batch = manifest.unet_batch
    for name in manifest.components:
        if name == "identity_encoder" and model.identity_encoder is None:
            continue  # an insightface pack's recogniser, copied verbatim (checked against the pack at export)
        spec = get_spec(name, model)
        example = spec.example(model, batch, seed)
        reference = torch_outputs(spec, spec.build(model).eval(), example)
        got = runner.run(name, {k: v.numpy() for k, v in example.items()})
        summary: Comparison = worst(compare_outputs(reference, got))
        tol = component_tolerance(budget, name, graph_precision.get(name, manifest.precision))
        results.append(ComponentResult(name, summary.max_abs, summary.cosine, summary.psnr_db, tol.to_dict(),
                                       summary.failures(tol)))
    return results


# ---------------------------------------------------------------------------------------- (b) end to end


def grid_boxes(latent_h: int, latent_w: int, boxes: np.ndarray | None = None) -> np.ndarray:
    """Layout boxes snapped to latent cell edges: there every rasterisation rule yields the same mask."""
    boxes = default_boxes() if boxes is None else np.asarray(boxes, np.float64)
    scale = np.array([latent_w, latent_h, latent_w, latent_h], np.float64)
    return (np.round(boxes * scale) / scale).astype(np.float32)


def world_faces(seed: int = 0) -> tuple[Any, Any, tuple[str, str]]:
    """Two tiny-world face photos (a man, a woman) and their person words, for models of the tiny world."""
    from ..data.world import make_identities, render_face

    a, b = make_identities(2, seed)[:2]
    words = tuple("man" if i.gender == "male" else "woman" for i in (a, b))
    return render_face(a, 112), render_face(b, 112), words  # type: ignore[return-value]


def _bundle_face_analyzer(generator: Any) -> Any:
    """The bundle's own face pipeline (its SCRFD detector, its recogniser graph on the bundle's runtime) as an
    analyzer: a converted official model has no recogniser of its own to judge faces with."""
    from PIL import Image

    from ..contract.faces.base import Face, FaceAnalyzer
    from ..contract.faces.insightface_pack import aligned_face, scrfd_faces
    from ..contract.images import preprocess_face

    ident = generator.manifest.identity

    class BundleFaces(FaceAnalyzer):
        name = "bundle face pack"

        @property
        def embedding_dim(self) -> int:
            return int(generator.manifest.components["identity_encoder"].outputs["embedding"].shape[-1])

        def detect(self, image: np.ndarray) -> list[Face]:
            return scrfd_faces(generator.cropper.scrfd, np.ascontiguousarray(image))

        def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
            crop = aligned_face(image, face, ident.face_size)
            x = preprocess_face(Image.fromarray(crop), ident.face_size, ident.arcface_mean, ident.arcface_std)
            return generator.runner.run("identity_encoder", {"face": x})["embedding"].reshape(-1)

    return BundleFaces()


def _face_input(model: DHumanDiff, image: Any, identity: Any, generator: Any = None):
    """One person's reference conditioning from the runtime's own preprocessing of the same photo (a bundle that
    ships an insightface pack: its recogniser graph, copied verbatim and checked at export, embeds the face)."""
    from ..model.face_inputs import FaceInput
    from ..contract.faces.crop import FaceCropper
    from ..contract.images import preprocess_clip, preprocess_clip_photo, preprocess_face, square_resize, to_rgb

    cfg = model.config
    photo = image
    image = (generator.cropper if generator is not None else FaceCropper(identity))(image)  # as the runtime crops
    face = preprocess_face(image, cfg.face_size, identity.arcface_mean, identity.arcface_std)
    if model.identity_encoder is None:
        emb = generator.runner.run("identity_encoder", {"face": face})["embedding"][0]
    else:
        with torch.no_grad():
            emb = get_spec("identity_encoder").build(model).eval()(torch.from_numpy(face))[0].numpy()
    if cfg.conditioning.clip_input == "photo":  # the official recipe: CLIP sees the whole photo
        clip = preprocess_clip_photo(photo, cfg.clip_size, cfg.clip_mean, cfg.clip_std)[0]
    else:
        clip = preprocess_clip(image, cfg.clip_size, cfg.clip_mean, cfg.clip_std)[0]
    crop = np.asarray(square_resize(to_rgb(image), cfg.face_size))
    return FaceInput(crop=crop, id_embedding=emb.astype(np.float32), clip_pixels=clip,
                     bbox=(0.0, 0.0, float(crop.shape[1]), float(crop.shape[0])))


def end_to_end_parity(bundle: Path, manifest: Any, model: DHumanDiff, budget: dict[str, Any], *,
                      device: str = "cpu", seed: int = 0, steps: int | None = None, faces: Sequence[Any] | None = None,
                      prompt: str | None = None, person_words: tuple[str, str] | None = None,
                      analyzer: Any = None, quantization: dict[str, Any] | None = None,
                      evaluator: Any = None, runner: Any = None) -> EndToEndResult:
    """Generate the same portrait with the torch reference and with the bundle, and compare them.

    A quantised bundle (``quantization``, its recorded variant) is held to its own budget: PSNR against the
    fp32 reference image (which fp32 bundles reproduce to float rounding), and each generated person's
    similarity to its reference photo, judged by ``evaluator`` (:func:`default_evaluator`), within
    ``identity_delta`` of the fp32 image's. ``runner`` replaces the runtime adapter (weights-only checks).
    """
    from ..model.generate import default_analyzer
    from ..model.sampler import ReferenceSampler
    from ..contract.images import load_image
    from ..utils.prompt import person_positions

    pack = manifest.identity.detector == "scrfd"
    if model.identity_encoder is None and not pack:
        raise BundleError("end-to-end parity needs the model's identity encoder (the bundle's identity_encoder "
                          "graph is its export)")
    if faces is None:
        face_a, face_b, words = world_faces(seed)
        person_words = person_words or words
    else:
        face_a, face_b = faces
    images = (load_image(face_a), load_image(face_b))
    prompt = prompt or DEFAULT_PROMPT
    steps = int(steps or manifest.defaults.steps)
    guidance = float(manifest.defaults.guidance_scale) if manifest.defaults.cfg else 1.0
    ip_scale = float(manifest.defaults.ip_scale)
    h, w = manifest.latent_size
    boxes = grid_boxes(h, w)

    ids, positions = person_positions(model.tokenizer.backend_tokenizer, prompt, person_words)
    sampler = ReferenceSampler(model)
    generator = _generator(bundle, manifest, device, runner)
    refs = tuple(_face_input(model, img, manifest.identity, generator) for img in images)

    def both(s: int) -> tuple[np.ndarray, np.ndarray]:
        """The torch reference image and the bundle's image for seed ``s`` (uint8 HxWx3 each)."""
        out = sampler.sample(refs, torch.from_numpy(ids)[None], torch.from_numpy(positions)[None], boxes,
                             steps=steps, seed=s, guidance=guidance, ip_scale=ip_scale, mode="single",
                             sampler=manifest.defaults.sampler)
        ref_image = np.round(out.image.numpy().transpose(1, 2, 0) * 255.0).astype(np.uint8)
        got = generator(images[0], images[1], prompt, steps=steps, guidance_scale=guidance, ip_scale=ip_scale,
                        seed=s, layout=json.dumps(boxes.tolist()), person_words=person_words)
        return ref_image, np.asarray(got.image.convert("RGB"), dtype=np.uint8)

    reference, produced = both(seed)
    if produced.shape != reference.shape:
        raise BundleError(f"the bundle generated a {produced.shape[1]}x{produced.shape[0]} image, the reference "
                          f"{reference.shape[1]}x{reference.shape[0]}; re-export the bundle")

    if analyzer is None and pack:
        analyzer = _bundle_face_analyzer(generator)
    if analyzer is None:
        try:
            analyzer = default_analyzer(model)
        except ImportError as exc:
            raise DHumanDiffError(f"cannot build this model's face analyzer ({exc}); pass another one "
                                  f"(CLI: --face-analyzer dlib, or insightface with --face-root)") from None
    # Each face is located once, in the reference image, and the same crop is compared in both: on 64-pixel
    # images a detector that fires in one image and not the other would otherwise decide the score.
    ident = [cosine(crop_embedding(analyzer, reference, c), crop_embedding(analyzer, produced, c))
             for c in face_crops(analyzer, reference, boxes)]
    psnr = psnr_db(reference.astype(np.float64), produced.astype(np.float64), peak=255.0)
    fallback = END_TO_END_BUDGETS.get(manifest.precision, END_TO_END_BUDGETS["fp16"])
    min_psnr = float(budget.get("end_to_end_psnr_db", fallback["end_to_end_psnr_db"]))
    min_ident = float(budget.get("identity_min_cosine", fallback["identity_min_cosine"]))
    if quantization is not None:
        min_psnr = float(quantization["budget"]["psnr_db"])
    failures = []
    if psnr < min_psnr:
        failures.append(f"image PSNR {psnr:.1f} dB < {min_psnr} dB")
    for who, c in zip(("person a", "person b"), ident):
        if not math.isfinite(c) or c < min_ident:
            failures.append(f"{who} face similarity {c:.4f} < {min_ident}")
    result = EndToEndResult(psnr, ident, min_psnr, min_ident, steps, seed, guidance, prompt, boxes.tolist(), failures)
    if quantization is not None:
        # identity is a property of the variant, not of one sample: the mean over IDENTITY_SEEDS images per person
        judge = evaluator if evaluator is not None else default_evaluator(model, analyzer)
        photos = [np.asarray(img.convert("RGB")) for img in images]
        pairs = [(reference, produced)] + [both(seed + k) for k in range(1, IDENTITY_SEEDS)]
        sims = [identity_similarity(judge, list(pair), photos, boxes) for pair in pairs]
        ref_sim = [float(np.mean([s[0][i] for s in sims])) for i in range(len(photos))]
        got_sim = [float(np.mean([s[1][i] for s in sims])) for i in range(len(photos))]
        result.identity_seeds = [seed + k for k in range(IDENTITY_SEEDS)]
        delta = max(abs(a - b) for a, b in zip(got_sim, ref_sim))
        max_delta = float(quantization["budget"]["identity_delta"])
        result.identity_similarity, result.identity_similarity_reference = got_sim, ref_sim
        result.identity_delta, result.identity_max_delta = delta, max_delta
        if not math.isfinite(delta) or delta > max_delta:
            failures.append(f"identity similarity differs from the fp32 image's by {delta:.4f} > {max_delta} "
                            f"(bundle {', '.join(f'{v:.4f}' for v in got_sim)}; fp32 "
                            f"{', '.join(f'{v:.4f}' for v in ref_sim)})")
    return result


def _generator(bundle: Path, manifest: Any, device: str, runner: Any = None) -> Any:
    """The bundle's own generator (NumPy sampler + runtime adapter), or the same sampler over ``runner``."""
    from ..runtimes import load_bundle

    if runner is None:
        return load_bundle(bundle, device=device, runtime=manifest.runtime)
    from ..runtimes.generator import BundleGenerator
    from ..runtimes.tokenizer import PromptTokenizer

    root = Path(manifest.root)
    tok = PromptTokenizer.from_spec(root / manifest.tokenizer.file, manifest.tokenizer)
    tok2 = (PromptTokenizer.from_spec(root / manifest.tokenizer_2.file, manifest.tokenizer_2)
            if manifest.tokenizer_2 else None)
    return BundleGenerator(manifest, runner, tok, tok2)


# --------------------------------------------------------------------------------------------- entry point


def run_parity(bundle_path: str | Path, model: DHumanDiff | str | Path | None = None, runtime: str | None = None,
               device: str = "cpu", seed: int = 0, steps: int | None = None, *, report: str | Path | None = None,
               end_to_end: bool = True, faces: Sequence[Any] | None = None, prompt: str | None = None,
               person_words: tuple[str, str] | None = None, analyzer: Any = None,
               strict: bool = True, evaluator: Any = None, weights_only: bool = False) -> ParityReport:
    """Measure a bundle against its torch reference; write ``report`` (JSON) if given.

    ``model``: a loaded model, a model name/folder, or ``None`` for the bundle's recorded ``source_model``.
    ``faces``: two photos (paths/images); default: two tiny-world faces. With ``strict`` (the default) a bundle
    outside its budget raises :class:`ParityError` after the report is written (the CLI's non-zero exit).
    A quantised bundle is held to the budget its ``quantization`` section records; ``evaluator`` judges its
    identity similarity (default: :func:`default_evaluator`). ``weights_only`` (Core ML bundles, where Core ML
    cannot run, i.e. off macOS): the graphs are run as the torch wrappers holding the bundle's exact
    (decompressed) weights, through the same NumPy sampler — the weights' fidelity, with float32 activations.
    """
    from ..runtimes.adapters import make_runner
    from ..contract.bundle import load_manifest

    bundle = Path(bundle_path)
    manifest = load_manifest(bundle, runtime=runtime)
    ref, source = load_reference(manifest, model)
    budget = _raw_budget(manifest.root)
    quantization = quantization_budget(manifest.root)
    result = ParityReport(str(bundle), manifest.runtime, device, manifest.precision, manifest.backbone, source,
                          quantization=None if quantization is None else
                          {k: quantization.get(k) for k in ("mode", "components", "excluded_layers", "budget")})
    if weights_only:
        if manifest.runtime != "coreml":
            raise DHumanDiffError(f"--weights-only checks Core ML bundles where Core ML cannot run; this bundle is "
                                  f"for {manifest.runtime}, which runs here: drop --weights-only")
        from ..export.quantize_coreml import DecompressedRunner

        runner = DecompressedRunner(ref, manifest.root, manifest.components)
    else:
        runner = make_runner(manifest.runtime, manifest.components, manifest.root, device=device,
                             precision=manifest.precision)
    result.runner = list(runner.providers)
    result.components = component_parity(manifest, ref, runner, budget, seed)
    if end_to_end:
        result.end_to_end = end_to_end_parity(bundle, manifest, ref, budget, device=device, seed=seed, steps=steps,
                                              faces=faces, prompt=prompt, person_words=person_words,
                                              analyzer=analyzer, quantization=quantization, evaluator=evaluator,
                                              runner=runner if weights_only else None)
    if report is not None:
        result.write(report)
    if strict and not result.passed:
        err = ParityError(f"{bundle} is outside its parity budget: {'; '.join(result.failures)}")
        err.report = result  # type: ignore[attr-defined]
        raise err
    return result

"""The bundle contract: ``bundle.json`` at the root of an exported bundle, written and read strictly.

The exporter writes it through :func:`write_manifest` (which refuses what the reader would refuse), the runtimes
read it through :func:`load_manifest`; the component I/O (:data:`COMPONENT_IO`), the digest rule
(:func:`component_digests`) and the format's name and version are defined here once for both sides. Reading is strict on
purpose: a bundle that loads is complete, untampered (every file's sha256 checked), self-contained (no path
leaves the folder) and for this runtime, so later failures are about the model, never about a half-copied
folder. Every refusal is one :class:`~dhumandiff.errors.BundleError` line that says what to do.

Conventions: ``image_size`` is ``[height, width]`` in pixels; every path in the manifest (component ``file``,
``extra_files``, ``sha256`` keys, ``tokenizer.file``) is relative to the bundle root with ``/`` separators; a
component ``file`` may be a folder (a Core ML ``.mlpackage``), whose files then each need a ``sha256`` entry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Mapping

from dhumandiff.contract import schedulers
from dhumandiff.contract.recipe import NEGATIVE_TEXT_OUTPUT, Recipe, project_recipe
from dhumandiff.contract.registry import RUNTIMES
from dhumandiff.errors import BundleError, SettingsError
from dhumandiff.utils.atomic import sha256_file, write_text_atomic

FORMAT = "dhumandiff-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "bundle.json"
DTYPES = ("float32", "float16", "int64", "int32")
#: Scheduler classes the NumPy sampler implements (the registry in :mod:`dhumandiff.contract.schedulers`).
SUPPORTED_SCHEDULERS = tuple(schedulers.SCHEDULERS)

#: The fixed I/O contract: component -> (input names, output names). ``text_encoder_2`` is the SDXL extra.
COMPONENT_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "identity_encoder": (("face",), ("embedding",)),
    "image_encoder": (("pixel_values",), ("image_embeds",)),
    "face_projection": (("image_embeds", "id_embedding"), ("ip_tokens", "face_token")),
    "text_encoder": (("input_ids", "face_tokens", "subject_positions"), ("prompt_embeds",)),
    "unet": (
        ("sample", "timestep", "encoder_hidden_states", "ip_tokens", "region_mask", "ip_scale"),
        ("noise_pred",),
    ),
    "vae_decoder": (("latent_sample",), ("sample",)),
}
OPTIONAL_COMPONENT_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text_encoder_2": (("input_ids",), ("prompt_embeds", "pooled_prompt_embeds")),
}
#: Extra UNet inputs that exist exactly when ``text_encoder_2`` does (SDXL micro-conditioning).
SDXL_UNET_INPUTS = ("text_embeds", "time_ids")
REQUIRED_COMPONENTS = tuple(COMPONENT_IO)


def component_io(name: str, sdxl: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(input names, output names)`` of component ``name`` in contract order (the SDXL UNet takes two more)."""
    ins, outs = COMPONENT_IO.get(name) or OPTIONAL_COMPONENT_IO[name]
    return (ins + SDXL_UNET_INPUTS if name == "unet" and sdxl else ins), outs

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REEXPORT = "re-export the bundle with `dhumandiff export`"

# Upper bounds of what a bundle.json may ask for, checked before anything is allocated from it: a tampered or
# hand-edited manifest must not make a runtime allocate hundreds of GB. A real bundle.json is ~10 kB, 6 deep.
MAX_MANIFEST_BYTES = 16 << 20
MAX_JSON_DEPTH = 64
MAX_IMAGE_SIDE = 8192  #: image_size [height, width], pixels
MAX_LATENT_VALUES = 1 << 24  #: latent.channels x latent height x latent width (a 64 MB float32 tensor)
MAX_LATENT_CHANNELS = 64
MAX_PREPROCESS_SIDE = 2048  #: identity.face_size and identity.clip_size, pixels
MAX_ID_TOKENS = 1024  #: identity.num_id_tokens
MAX_TOKENS = 4096  #: tokenizer max_length
MAX_TOKEN_ID = 2**31 - 1


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one graph input or output. A ``str`` dimension is a named dynamic axis."""

    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ComponentSpec:
    """One exported graph: its main file, side files (external weights), digests and interface."""

    name: str
    file: str
    extra_files: tuple[str, ...]
    sha256: Mapping[str, str]
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "extra_files": list(self.extra_files),
            "sha256": dict(self.sha256),
            "inputs": {k: v.to_dict() for k, v in self.inputs.items()},
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
        }


@dataclass(frozen=True)
class LatentSpec:
    channels: int
    downscale: int
    scaling_factor: float


@dataclass(frozen=True)
class TokenizerSpec:
    """A ``tokenizers`` JSON file plus the ids the sampler places itself (BOS/EOS/padding to ``max_length``)."""

    file: str
    max_length: int
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int
    sha256: str | None = None


@dataclass(frozen=True)
class IdentitySpec:
    num_id_tokens: int
    face_size: int
    clip_size: int
    clip_mean: tuple[float, float, float]
    clip_std: tuple[float, float, float]
    arcface_mean: float
    arcface_std: float
    # Face detector run before the identity graphs ("world": the tiny world's palette detector; "none": photos
    # are taken as aligned face crops) and the smallest face side it accepts.
    detector: str = "none"
    min_face_px: int = 12
    # "scrfd": an insightface pack's SCRFD detector shipped in the bundle (``detector_file``, hashed by
    # ``detector_sha256``), its faces aligned onto ArcFace's 112x112 template by their five landmarks.
    detector_file: str | None = None
    detector_sha256: str | None = None


DETECTORS = ("none", "world", "scrfd")


@dataclass(frozen=True)
class Defaults:
    steps: int
    guidance_scale: float
    ip_scale: float
    sampler: str
    cfg: bool


@dataclass(frozen=True)
class Budget:
    component_max_abs: float
    end_to_end_psnr_db: float


@dataclass(frozen=True)
class Manifest:
    """A validated ``bundle.json``. ``root`` is the bundle folder (not serialised)."""

    backbone: str
    runtime: str
    precision: str
    model_name: str
    image_size: tuple[int, int]
    latent: LatentSpec
    scheduler: Mapping[str, Any]
    tokenizer: TokenizerSpec
    identity: IdentitySpec
    defaults: Defaults
    components: Mapping[str, ComponentSpec]
    budget: Budget | None = None
    created_by: str | None = None
    tokenizer_2: TokenizerSpec | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False)
    #: The conditioning recipe (``recipe.py``); bundles written before it existed used the project's own.
    recipe: Recipe = field(default_factory=lambda: project_recipe(-1))

    @property
    def unet_batch(self) -> int:
        """2 when the bundle runs classifier-free guidance (uncond row first), 1 for a CFG-free student."""
        b = self.components["unet"].inputs["sample"].shape[0]
        return b if isinstance(b, int) else (2 if self.defaults.cfg else 1)

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the latent grid."""
        return (self.image_size[0] // self.latent.downscale, self.image_size[1] // self.latent.downscale)

    @property
    def is_sdxl(self) -> bool:
        return "text_encoder_2" in self.components

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": self.format,
            "format_version": self.format_version,
            "backbone": self.backbone,
            "runtime": self.runtime,
            "precision": self.precision,
            "model_name": self.model_name,
            "image_size": list(self.image_size),
            "latent": dataclasses.asdict(self.latent),
            "scheduler": dict(self.scheduler),
            "tokenizer": _tokenizer_dict(self.tokenizer),
            "identity": {
                **{k: v for k, v in dataclasses.asdict(self.identity).items()
                   if v is not None or k not in ("detector_file", "detector_sha256")},
                "clip_mean": list(self.identity.clip_mean),
                "clip_std": list(self.identity.clip_std),
            },
            "defaults": dataclasses.asdict(self.defaults),
            "components": {k: v.to_dict() for k, v in self.components.items()},
        }
        if self.tokenizer_2 is not None:
            d["tokenizer_2"] = _tokenizer_dict(self.tokenizer_2)
        if self.budget is not None:
            d["budget"] = dataclasses.asdict(self.budget)
        if self.created_by is not None:
            d["created_by"] = self.created_by
        d["recipe"] = self.recipe.to_dict()
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def path(self, rel: str) -> Path:
        """Absolute path of a manifest-relative file (the manifest must have been loaded from disk)."""
        if self.root is None:
            raise BundleError("this manifest was not loaded from a bundle folder; load it with load_manifest()")
        return self.root / rel


def _tokenizer_dict(t: TokenizerSpec) -> dict[str, Any]:
    d = dataclasses.asdict(t)
    if d.get("sha256") is None:
        d.pop("sha256", None)
    return d


# --------------------------------------------------------------------------------------------- field readers


def _fail(msg: str) -> BundleError:
    return BundleError(msg)


def _get(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise _fail(f"bundle.json: '{where}' must be an object; {_REEXPORT}")
    if key not in d:
        raise _fail(f"bundle.json: missing field '{_join(where, key)}'; {_REEXPORT}")
    return d[key]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _int(d: Mapping[str, Any], key: str, where: str = "", minimum: int | None = 1, maximum: int | None = None) -> int:
    v = _get(d, key, where)
    if (isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum)
            or (maximum is not None and v > maximum)):
        bound = f" >= {minimum}" if minimum is not None else ""
        bound += f"{' and' if bound else ''} <= {maximum}" if maximum is not None else ""
        raise _fail(f"bundle.json: '{_join(where, key)}' must be an integer{bound} (got {_short(v)}); {_REEXPORT}")
    return v


def _short(v: Any) -> str:
    """``repr`` of a manifest value, cut so that a refusal stays one short line."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _float(d: Mapping[str, Any], key: str, where: str = "", positive: bool = False) -> float:
    v = _get(d, key, where)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        kind = "a positive number" if positive else "a finite number"
        raise _fail(f"bundle.json: '{_join(where, key)}' must be {kind} (got {v!r}); {_REEXPORT}")
    return float(v)


def _str(d: Mapping[str, Any], key: str, where: str = "") -> str:
    v = _get(d, key, where)
    if not isinstance(v, str) or not v:
        raise _fail(f"bundle.json: '{_join(where, key)}' must be a non-empty string (got {v!r}); {_REEXPORT}")
    return v


def _bool(d: Mapping[str, Any], key: str, where: str = "") -> bool:
    v = _get(d, key, where)
    if not isinstance(v, bool):
        raise _fail(f"bundle.json: '{_join(where, key)}' must be true or false (got {v!r}); {_REEXPORT}")
    return v


def _obj(d: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    v = _get(d, key, where)
    if not isinstance(v, Mapping):
        raise _fail(f"bundle.json: '{_join(where, key)}' must be an object; {_REEXPORT}")
    return v


def _too_deep(obj: Any, limit: int) -> bool:
    """Whether objects / lists nest deeper than ``limit`` (walked without recursion)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, Mapping) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (Mapping, list)))
    return False


def _floats(d: Mapping[str, Any], key: str, where: str, n: int, positive: bool = False) -> tuple[float, ...]:
    v = _get(d, key, where)
    ok = isinstance(v, list) and len(v) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
        for x in v
    )
    if not ok:
        raise _fail(f"bundle.json: '{_join(where, key)}' must be a list of {n} numbers (got {v!r}); {_REEXPORT}")
    return tuple(float(x) for x in v)


def _tensor_spec(d: Any, where: str) -> TensorSpec:
    if not isinstance(d, Mapping):
        raise _fail(f"bundle.json: '{where}' must be an object with 'shape' and 'dtype'; {_REEXPORT}")
    shape = _get(d, "shape", where)
    ok = isinstance(shape, list) and all(
        (isinstance(s, int) and not isinstance(s, bool) and s > 0) or (isinstance(s, str) and s) for s in shape
    )
    if not ok:
        raise _fail(
            f"bundle.json: '{where}.shape' must be a list of positive integers or axis names (got {shape!r}); "
            f"{_REEXPORT}"
        )
    dtype = _str(d, "dtype", where)
    if dtype not in DTYPES:
        raise _fail(f"bundle.json: '{where}.dtype' {dtype!r} is not one of {', '.join(DTYPES)}; {_REEXPORT}")
    return TensorSpec(tuple(shape), dtype)


def _tokenizer(d: Mapping[str, Any], where: str) -> TokenizerSpec:
    sha = d.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _HEX64.match(sha)):
        raise _fail(f"bundle.json: '{where}.sha256' must be 64 lowercase hex digits; {_REEXPORT}")
    spec = TokenizerSpec(
        file=_str(d, "file", where),
        max_length=_int(d, "max_length", where, minimum=3, maximum=MAX_TOKENS),
        pad_token_id=_int(d, "pad_token_id", where, minimum=0, maximum=MAX_TOKEN_ID),
        bos_token_id=_int(d, "bos_token_id", where, minimum=0, maximum=MAX_TOKEN_ID),
        eos_token_id=_int(d, "eos_token_id", where, minimum=0, maximum=MAX_TOKEN_ID),
        sha256=sha,
    )
    return spec


def _component(name: str, d: Any) -> ComponentSpec:
    where = f"components.{name}"
    if not isinstance(d, Mapping):
        raise _fail(f"bundle.json: '{where}' must be an object; {_REEXPORT}")
    extra = d.get("extra_files", [])
    if not isinstance(extra, list) or not all(isinstance(x, str) and x for x in extra):
        raise _fail(f"bundle.json: '{where}.extra_files' must be a list of file names; {_REEXPORT}")
    sha = _obj(d, "sha256", where)
    for k, v in sha.items():
        if not isinstance(v, str) or not _HEX64.match(v):
            raise _fail(f"bundle.json: '{where}.sha256[{k!r}]' must be 64 lowercase hex digits; {_REEXPORT}")
    inputs = {k: _tensor_spec(v, f"{where}.inputs.{k}") for k, v in _obj(d, "inputs", where).items()}
    outputs = {k: _tensor_spec(v, f"{where}.outputs.{k}") for k, v in _obj(d, "outputs", where).items()}
    return ComponentSpec(name, _str(d, "file", where), tuple(extra), dict(sha), inputs, outputs)


# ------------------------------------------------------------------------------------------------ parsing


def manifest_from_dict(d: Mapping[str, Any], runtime: str | None = None) -> Manifest:
    """Validate a parsed ``bundle.json`` (no file checks). ``runtime`` is the runtime the caller will use."""
    if not isinstance(d, Mapping):
        raise _fail("bundle.json must hold a JSON object; this is not a dhumandiff bundle")
    if _too_deep(d, MAX_JSON_DEPTH):
        raise _fail(f"bundle.json nests deeper than {MAX_JSON_DEPTH} levels (a bundle's is 6): it is damaged or not "
                    f"a dhumandiff bundle; {_REEXPORT}")
    fmt = d.get("format")
    if fmt != FORMAT:
        raise _fail(
            f"not a dhumandiff bundle (bundle.json 'format' is {fmt!r}, expected {FORMAT!r}); "
            "pass the folder written by `dhumandiff export`"
        )
    version = d.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail(f"bundle.json: 'format_version' must be an integer (got {version!r}); {_REEXPORT}")
    if version != FORMAT_VERSION:
        from dhumandiff import __version__

        raise _fail(
            f"bundle format_version {version} is not supported by dhumandiff {__version__} "
            f"(reads version {FORMAT_VERSION}); re-export with this dhumandiff version"
        )
    bundle_runtime = _str(d, "runtime")
    if bundle_runtime not in RUNTIMES:
        raise _fail(f"bundle.json: runtime {bundle_runtime!r} is not one of {', '.join(RUNTIMES)}; {_REEXPORT}")
    if runtime is not None and runtime != bundle_runtime:
        raise _fail(
            f"this bundle is for {bundle_runtime}; use --runtime {bundle_runtime} or export for {runtime}"
        )

    image = _get(d, "image_size", "")
    if not (isinstance(image, list) and len(image) == 2 and all(
        isinstance(x, int) and not isinstance(x, bool) and 0 < x <= MAX_IMAGE_SIDE for x in image
    )):
        raise _fail(f"bundle.json: 'image_size' must be [height, width] in pixels, each side <= {MAX_IMAGE_SIDE} "
                    f"(got {_short(image)}); {_REEXPORT}")

    lat = _obj(d, "latent")
    latent = LatentSpec(
        channels=_int(lat, "channels", "latent", maximum=MAX_LATENT_CHANNELS),
        downscale=_int(lat, "downscale", "latent", maximum=MAX_IMAGE_SIDE),
        scaling_factor=_float(lat, "scaling_factor", "latent", positive=True),
    )
    if image[0] % latent.downscale or image[1] % latent.downscale:
        raise _fail(
            f"bundle.json: image_size {image} is not divisible by latent.downscale {latent.downscale}; {_REEXPORT}"
        )
    values = latent.channels * (image[0] // latent.downscale) * (image[1] // latent.downscale)
    if values > MAX_LATENT_VALUES:
        raise _fail(
            f"bundle.json: the latent grid (latent.channels {latent.channels} x image_size {image} / latent.downscale "
            f"{latent.downscale}) holds {values:,} values, over the {MAX_LATENT_VALUES:,} this dhumandiff runs; "
            f"{_REEXPORT}"
        )

    sched = dict(_obj(d, "scheduler"))
    cls = sched.get("_class_name")
    if cls not in SUPPORTED_SCHEDULERS:
        raise _fail(
            f"bundle.json: scheduler '_class_name' {cls!r} is not supported by the NumPy sampler "
            f"({', '.join(SUPPORTED_SCHEDULERS)}); {_REEXPORT}"
        )

    tok = _tokenizer(_obj(d, "tokenizer"), "tokenizer")
    tok2 = _tokenizer(_obj(d, "tokenizer_2"), "tokenizer_2") if "tokenizer_2" in d else None

    ident = _obj(d, "identity")
    identity = IdentitySpec(
        num_id_tokens=_int(ident, "num_id_tokens", "identity", maximum=MAX_ID_TOKENS),
        face_size=_int(ident, "face_size", "identity", maximum=MAX_PREPROCESS_SIDE),
        clip_size=_int(ident, "clip_size", "identity", maximum=MAX_PREPROCESS_SIDE),
        clip_mean=_floats(ident, "clip_mean", "identity", 3),  # type: ignore[arg-type]
        clip_std=_floats(ident, "clip_std", "identity", 3, positive=True),  # type: ignore[arg-type]
        arcface_mean=_float(ident, "arcface_mean", "identity"),
        arcface_std=_float(ident, "arcface_std", "identity", positive=True),
        detector=_str(ident, "detector", "identity") if "detector" in ident else "none",
        min_face_px=_int(ident, "min_face_px", "identity", minimum=1) if "min_face_px" in ident else 12,
        detector_file=_str(ident, "detector_file", "identity") if "detector_file" in ident else None,
        detector_sha256=_str(ident, "detector_sha256", "identity") if "detector_sha256" in ident else None,
    )
    if identity.detector not in DETECTORS:
        raise BundleError(f"identity.detector {identity.detector!r} is not one of {', '.join(DETECTORS)}: re-export the "
                          f"bundle with this dhumandiff version")
    if identity.detector == "scrfd" and (identity.detector_file is None or identity.detector_sha256 is None
                                         or not _HEX64.match(identity.detector_sha256)):
        raise _fail(f"bundle.json: identity.detector scrfd needs identity.detector_file and its sha256 "
                    f"(identity.detector_sha256); {_REEXPORT}")

    dft = _obj(d, "defaults")
    defaults = Defaults(
        steps=_int(dft, "steps", "defaults"),
        guidance_scale=_float(dft, "guidance_scale", "defaults"),
        ip_scale=_float(dft, "ip_scale", "defaults"),
        sampler=_str(dft, "sampler", "defaults"),
        cfg=_bool(dft, "cfg", "defaults"),
    )

    try:  # a scheduler config the NumPy sampler cannot build fails here, not in the middle of a generation
        schedulers.from_config(sched).set_timesteps(defaults.steps)
    except ValueError as e:
        raise _fail(f"bundle.json: scheduler / defaults.steps cannot be used ({e}); {_REEXPORT}") from None

    budget = None
    if "budget" in d:
        b = _obj(d, "budget")
        budget = Budget(
            component_max_abs=_float(b, "component_max_abs", "budget", positive=True),
            end_to_end_psnr_db=_float(b, "end_to_end_psnr_db", "budget", positive=True),
        )
    created_by = d.get("created_by")
    if created_by is not None and not isinstance(created_by, str):
        raise _fail(f"bundle.json: 'created_by' must be a string; {_REEXPORT}")

    comps_raw = _obj(d, "components")
    components = {name: _component(name, spec) for name, spec in comps_raw.items()}
    recipe = project_recipe(-1)
    if "recipe" in d:
        try:
            recipe = Recipe.from_dict(_obj(d, "recipe"))
        except SettingsError as exc:
            raise _fail(f"bundle.json: {exc}; {_REEXPORT}") from None

    known = {
        "format", "format_version", "backbone", "runtime", "precision", "model_name", "image_size", "latent",
        "scheduler", "tokenizer", "tokenizer_2", "identity", "defaults", "components", "budget", "created_by",
        "recipe",
    }
    m = Manifest(
        backbone=_str(d, "backbone"),
        runtime=bundle_runtime,
        precision=_str(d, "precision"),
        model_name=_str(d, "model_name"),
        image_size=(image[0], image[1]),
        latent=latent,
        scheduler=sched,
        tokenizer=tok,
        identity=identity,
        defaults=defaults,
        components=components,
        budget=budget,
        created_by=created_by,
        tokenizer_2=tok2,
        extra={k: v for k, v in d.items() if k not in known},
        recipe=recipe,
    )
    _check_contract(m)
    return m


def _check_contract(m: Manifest) -> None:
    """Component names, I/O names and the shapes that must agree with each other."""
    missing = [c for c in REQUIRED_COMPONENTS if c not in m.components]
    if missing:
        raise _fail(f"bundle is missing required component(s) {', '.join(missing)}; {_REEXPORT}")
    unknown = [c for c in m.components if c not in COMPONENT_IO and c not in OPTIONAL_COMPONENT_IO]
    if unknown:
        raise _fail(f"bundle.json: unknown component(s) {', '.join(unknown)}; {_REEXPORT}")
    for name, comp in m.components.items():
        ins, outs = component_io(name, m.is_sdxl)
        if set(comp.inputs) != set(ins):
            raise _fail(
                f"bundle.json: component {name} has inputs {sorted(comp.inputs)}, the contract needs "
                f"{sorted(ins)}; {_REEXPORT}"
            )
        if not set(outs) <= set(comp.outputs):
            raise _fail(
                f"bundle.json: component {name} has outputs {sorted(comp.outputs)}, the contract needs "
                f"{sorted(outs)}; {_REEXPORT}"
            )

    if m.recipe.two_text_layers and NEGATIVE_TEXT_OUTPUT not in m.components["text_encoder"].outputs:
        raise _fail(f"bundle.json: the {m.recipe.name} recipe encodes the negative prompt from another text-encoder "
                    f"layer, but text_encoder has no '{NEGATIVE_TEXT_OUTPUT}' output; {_REEXPORT}")
    unet = m.components["unet"]
    b = unet.inputs["sample"].shape[0]
    if isinstance(b, int):
        if b not in (1, 2):
            raise _fail(f"bundle.json: unet batch is {b}; it must be 2 (CFG) or 1 (CFG-free); {_REEXPORT}")
        if m.defaults.cfg != (b == 2):
            raise _fail(
                f"bundle.json: defaults.cfg is {str(m.defaults.cfg).lower()} but the unet runs batch {b} "
                f"(2 = CFG, 1 = CFG-free); {_REEXPORT}"
            )
    h, w = m.latent_size
    c = m.latent.channels
    bb: int | str = b
    n = m.identity.num_id_tokens
    expected = {
        ("unet", "sample"): (bb, c, h, w),
        ("unet", "region_mask"): (bb, 2, h, w),
        ("unet", "timestep"): (bb,),
        ("unet", "ip_scale"): (1,),
        ("vae_decoder", "latent_sample"): (1, c, h, w),
        ("identity_encoder", "face"): (1, 3, m.identity.face_size, m.identity.face_size),
        ("image_encoder", "pixel_values"): (1, 3, m.identity.clip_size, m.identity.clip_size),
        ("text_encoder", "input_ids"): (1, m.tokenizer.max_length),
        ("text_encoder", "subject_positions"): (1, 2),
    }
    for (comp, name), shape in expected.items():
        _expect_shape(m, comp, name, shape)
    ip = unet.inputs["ip_tokens"].shape
    if len(ip) != 3 or (isinstance(ip[1], int) and ip[1] != 2 * n):
        raise _fail(
            f"bundle.json: unet.ip_tokens shape {list(ip)} must be [B, {2 * n}, C] "
            f"(2 persons x identity.num_id_tokens {n}); {_REEXPORT}"
        )
    for comp, name, dtype in (
        ("text_encoder", "input_ids", "int64"),
        ("text_encoder", "subject_positions", "int64"),
    ):
        got = m.components[comp].inputs[name].dtype
        if got != dtype:
            raise _fail(f"bundle.json: {comp}.{name} must be {dtype} (got {got}); {_REEXPORT}")


def _expect_shape(m: Manifest, comp: str, name: str, shape: tuple[int | str, ...]) -> None:
    got = m.components[comp].inputs[name].shape
    ok = len(got) == len(shape) and all(
        not isinstance(g, int) or not isinstance(e, int) or g == e for g, e in zip(got, shape)
    )
    if not ok:
        raise _fail(
            f"bundle.json: {comp}.{name} shape {list(got)} does not match {list(shape)} implied by image_size, "
            f"latent, identity and tokenizer fields; {_REEXPORT}"
        )


# --------------------------------------------------------------------------------------------- file checks


def _safe_path(root: Path, rel: str, where: str) -> Path:
    """Resolve a manifest path, refusing absolute paths, ``..`` and symlinks that leave the bundle."""
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or rel.startswith(("/", "\\")):
        raise _fail(
            f"bundle.json: {where} {rel!r} is an absolute path; bundles must be self-contained "
            f"(paths relative to the bundle folder); {_REEXPORT}"
        )
    if ".." in posix.parts or ".." in win.parts:
        raise _fail(
            f"bundle.json: {where} {rel!r} escapes the bundle folder ('..'); bundles must be self-contained; "
            f"{_REEXPORT}"
        )
    path = root / rel
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise _fail(
            f"bundle.json: {where} {rel!r} points outside the bundle folder (symlink to {real}); copy the file "
            f"into the bundle or {_REEXPORT}"
        )
    return path


def _file_kind(path: Path) -> str:
    """What ``path`` is, links followed (a link inside the bundle is fine; :func:`_safe_path` refused the others):
    ``file``, ``folder``, ``missing`` or ``special`` (a FIFO, socket or device: never opened, a read can block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        raise _fail(f"cannot read bundle file {path} ({e}); check the permissions or copy the bundle again") from None
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else "special"


def _not_a_file(rel: str, where: str) -> BundleError:
    return _fail(f"bundle file {rel} ({where}) is not a regular file (a FIFO, socket or device); a bundle holds "
                 "only files and folders of files: copy the bundle again")


def _expand(root: Path, rel: str, where: str, folders: bool) -> list[str]:
    """Files (bundle-relative, POSIX) that make up one manifest entry; a folder expands to its files.

    ``folders``: whether this bundle's runtime reads folders (Core ML packages); elsewhere a folder is refused, and
    inside a folder every entry must be a file or a real sub-folder (a link to a folder would not be hashed).
    """
    path = _safe_path(root, rel, where)
    kind = _file_kind(path)
    if kind == "missing":
        raise _fail(f"bundle file {rel} is missing from {root} ({where}); copy the whole bundle folder again")
    if kind == "special":
        raise _not_a_file(rel, where)
    if kind == "file":
        return [PurePosixPath(rel).as_posix()]
    if not folders:
        raise _fail(f"bundle.json: {where} {rel!r} is a folder; only Core ML bundles have folder components "
                    f"(this runtime reads one graph file); {_REEXPORT}")
    files: list[str] = []
    for dirpath, dirs, names in os.walk(path, followlinks=False):
        for n in dirs + names:
            entry = Path(dirpath) / n
            rel_f = entry.relative_to(root).as_posix()
            _safe_path(root, rel_f, where)
            kind = _file_kind(entry)
            if kind == "file":
                files.append(rel_f)
            elif kind != "folder" or entry.is_symlink():
                raise _not_a_file(rel_f, where)
    if not files:
        raise _fail(f"bundle.json: {where} {rel!r} is an empty folder; copy the whole bundle folder again")
    return sorted(files)


def _varint(buf: Any, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _proto_fields(buf: Any, i: int, end: int) -> Any:
    """``(field number, start, end)`` of each length-delimited field of one protobuf message in ``buf[i:end]``
    (``start`` is the value itself for a varint field); other wire types and groups are skipped, as protobuf
    skips fields it does not know. Malformed bytes raise ValueError, where protobuf refuses the message too."""
    groups = 0
    while i < end:
        key, i = _varint(buf, i, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i, end)
            if not groups:
                yield number, value, None
        elif wire == 2:
            size, i = _varint(buf, i, end)
            if i + size > end:
                raise ValueError("truncated field")
            if not groups:
                yield number, i, i + size
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        elif wire == 3:
            groups += 1
        elif wire == 4 and groups:
            groups -= 1
        else:
            raise ValueError(f"wire type {wire}")
    if i > end or groups:
        raise ValueError("truncated message")


#: Where an ONNX model (onnx.proto) can hold a TensorProto: message -> {field number: message of that field}.
_ONNX_TENSOR_PATHS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def onnx_external_data(path: Path) -> list[str] | None:
    """The ``location`` of every tensor an ONNX graph file keeps outside itself (initializers, constants,
    subgraphs and functions), read from the protobuf wire format without the onnx package; None when the file is
    not a readable ONNX model (onnxruntime then refuses it as well)."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return None
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        found: list[str] = []
        stack = [("model", 0, len(buf))]
        while stack:
            kind, start, end = stack.pop()
            if kind == "tensor":
                external, locations = False, []
                for number, s, e in _proto_fields(buf, start, end):
                    if number == 14 and e is None:
                        external = s == 1  # data_location: EXTERNAL
                    elif number == 13 and e is not None:
                        entry = {n: bytes(buf[a:b]) for n, a, b in _proto_fields(buf, s, e) if b is not None}
                        if entry.get(1) == b"location" and 2 in entry:
                            locations.append(entry[2].decode("utf-8", "replace"))
                found += locations if external else []
                continue
            children = _ONNX_TENSOR_PATHS[kind]
            stack += [(children[n], s, e) for n, s, e in _proto_fields(buf, start, end)
                      if e is not None and n in children]
        return sorted(set(found))
    except ValueError:
        return None
    finally:
        buf.close()


def graph_side_files(root: Path, comp: ComponentSpec, runtime: str) -> list[tuple[str, str]]:
    """``(bundle-relative path, why)`` of the files a backend reads beside a component's graph on its own: an
    ONNX graph's external data (wherever its tensors point), an OpenVINO IR's ``.bin`` next to its ``.xml``."""
    main = PurePosixPath(comp.file)
    path = root / comp.file
    if main.suffix.lower() == ".xml" and runtime == "openvino":
        weights = main.with_suffix(".bin")
        found = _file_kind(root / weights) != "missing" or (root / weights).is_symlink()
        return [(weights.as_posix(), f"OpenVINO reads the weights of {comp.file}")] if found else []
    if main.suffix.lower() == ".onnx" or runtime == "onnx":
        locations = onnx_external_data(path) or []
        return [((main.parent / loc).as_posix(), f"{comp.file} keeps tensors in it (external data)")
                for loc in locations]
    return []


def verify_files(m: Manifest, root: Path, check_hashes: bool = True) -> None:
    """Every file a component loads exists inside the bundle as a regular file, is listed, and matches its sha256
    (streamed; multi-GB is fine). Listed means in the component's ``file`` / ``extra_files`` and ``sha256``: that
    includes what a graph reads by itself (ONNX external data, an OpenVINO IR's ``.bin``)."""
    for name, comp in m.components.items():
        covered: list[str] = []
        for i, rel in enumerate((comp.file, *comp.extra_files)):
            where = f"components.{name}.file" if i == 0 else f"components.{name}.extra_files"
            covered += _expand(root, rel, where, folders=m.runtime == "coreml")
        digests = {PurePosixPath(k).as_posix(): v for k, v in comp.sha256.items()}
        for key in digests:
            _safe_path(root, key, f"components.{name}.sha256 key")
        stray = sorted(set(digests) - set(covered))
        if stray:
            raise _fail(
                f"bundle.json: components.{name}.sha256 lists {stray[0]}, which is not one of the component's "
                f"files; {_REEXPORT}"
            )
        for rel in covered:
            if rel not in digests:
                raise _fail(f"bundle.json: components.{name}.sha256 has no digest for {rel}; {_REEXPORT}")
            if check_hashes and sha256_file(root / rel) != digests[rel]:
                raise _fail(
                    f"sha256 mismatch for {rel} (component {name}): the file is corrupt or was modified; "
                    "copy the bundle again or re-export it"
                )
        if _file_kind(root / comp.file) == "file":
            for rel, why in graph_side_files(root, comp, m.runtime):
                _safe_path(root, rel, f"components.{name} external data")
                if PurePosixPath(rel).as_posix() not in covered:
                    raise _fail(
                        f"bundle.json: components.{name} does not list {rel}, but {why}: every file a graph loads "
                        f"must be in its extra_files and sha256; {_REEXPORT}"
                    )
    ident = m.identity
    if ident.detector_file is not None:
        path = _safe_path(root, ident.detector_file, "identity.detector_file")
        kind = _file_kind(path)
        if kind == "missing":
            raise _fail(f"bundle file {ident.detector_file} is missing from {root} (identity.detector_file); copy the "
                        "whole bundle again")
        if kind != "file":
            raise _not_a_file(ident.detector_file, "identity.detector_file")
        if check_hashes and sha256_file(path) != ident.detector_sha256:
            raise _fail(f"sha256 mismatch for {ident.detector_file} (the face detector): the file is corrupt or was "
                        "modified; copy the bundle again or re-export it")
    for where, tok in (("tokenizer", m.tokenizer), ("tokenizer_2", m.tokenizer_2)):
        if tok is None:
            continue
        path = _safe_path(root, tok.file, f"{where}.file")
        kind = _file_kind(path)
        if kind == "missing":
            raise _fail(f"bundle file {tok.file} is missing from {root} ({where}.file); copy the whole bundle again")
        if kind != "file":
            raise _not_a_file(tok.file, f"{where}.file")
        if check_hashes and tok.sha256 is not None and sha256_file(path) != tok.sha256:
            raise _fail(
                f"sha256 mismatch for {tok.file} ({where}): the file is corrupt or was modified; "
                "copy the bundle again or re-export it"
            )


def _manifest_file(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if not p.exists():
        raise _fail(f"no bundle at {p}; pass the folder written by `dhumandiff export`")
    if p.is_dir():
        f = p / MANIFEST_NAME
        if not f.exists():
            raise _fail(
                f"{p} is not a dhumandiff bundle (no {MANIFEST_NAME}); pass the folder written by `dhumandiff export`"
            )
        return p, f
    if p.name != MANIFEST_NAME:
        raise _fail(f"{p} is not a dhumandiff bundle; pass the bundle folder (the one holding {MANIFEST_NAME})")
    return p.parent, p


def _read_manifest(mfile: Path) -> Any:
    """The parsed JSON of ``bundle.json``: only a regular file, at most 16 MB, numbers and nesting bounded."""
    kind = _file_kind(mfile)
    if kind != "file":
        raise _fail(f"{mfile} is not a regular file; pass the folder written by `dhumandiff export`")
    try:
        with open(mfile, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise _fail(f"{mfile} is over {MAX_MANIFEST_BYTES >> 20} MB (a bundle.json is a few kB): it is damaged or "
                        f"not a dhumandiff bundle; {_REEXPORT}")
        return json.loads(data.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise _fail(f"{mfile} is not valid JSON (line {e.lineno}: {e.msg}); {_REEXPORT}") from None
    except RecursionError:
        raise _fail(f"{mfile} nests too deep to read (a bundle.json nests about 6 levels): it is damaged or not a "
                    f"dhumandiff bundle; {_REEXPORT}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(f"cannot read {mfile} ({e}); check the file permissions or copy the bundle again") from None
    except ValueError as e:  # e.g. an integer over Python's 4300-digit conversion limit
        raise _fail(f"{mfile} holds a number too long to read ({str(e).partition(':')[0]}): it is damaged or not "
                    f"a dhumandiff bundle; {_REEXPORT}") from None


def load_manifest(path: str | os.PathLike, runtime: str | None = None, verify: bool = True) -> Manifest:
    """Read and validate a bundle (folder or its ``bundle.json``).

    ``runtime``: the runtime the caller will use; a bundle for another runtime is refused. ``verify``: hash
    every file (the default; only skip it for a bundle you just verified yourself).
    """
    root, mfile = _manifest_file(path)
    m = manifest_from_dict(_read_manifest(mfile), runtime=runtime)
    verify_files(m, root, check_hashes=verify)
    return dataclasses.replace(m, root=root)


def write_manifest(path: str | os.PathLike, manifest: Manifest | Mapping[str, Any]) -> Path:
    """Validate ``manifest`` and write it atomically to ``path`` (a bundle folder or a ``bundle.json``).

    ``manifest`` is a :class:`Manifest` or the plain dict an exporter builds (written as given, with every field
    the reader does not model kept); either way a manifest the reader would refuse is never written.
    """
    p = Path(path)
    target = p if p.suffix == ".json" else p / MANIFEST_NAME
    data = manifest.to_dict() if isinstance(manifest, Manifest) else dict(manifest)
    text = json.dumps(data, indent=2) + "\n"
    manifest_from_dict(json.loads(text))
    write_text_atomic(target, text)
    return target


def component_digests(root: str | os.PathLike, files: list[str]) -> dict[str, str]:
    """sha256 of each bundle-relative file, sorted by path: what a component's ``sha256`` holds.

    A folder (a Core ML ``.mlpackage``) contributes each file inside it, the rule :func:`verify_files` checks.
    """
    root = Path(root)
    out: dict[str, str] = {}
    for rel in files:
        p = root / rel
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                out[f.relative_to(root).as_posix()] = sha256_file(f)
        else:
            out[PurePosixPath(rel).as_posix()] = sha256_file(p)
    return dict(sorted(out.items()))

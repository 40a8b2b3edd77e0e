"""``DHumanDiffPipeline``: the reference model as a diffusers ``DiffusionPipeline``.

For people who live in diffusers: ``save_pretrained`` / ``from_pretrained`` with ``model_index.json`` and one
folder per component, ``pipe.to(...)``, ``pipe.scheduler = ...``, and a ``__call__`` with the usual arguments
returning an :class:`~diffusers.pipelines.pipeline_utils.ImagePipelineOutput`. The pipeline owns no maths
(one implementation of the sampler, not two): it wires the components into a :class:`DHumanDiff` and calls :func:`generate_portrait`, so an image
is the one ``dhumandiff generate`` makes with the same seed, bit for bit.

The saved folder is also a dhumandiff model folder (``dhumandiff.json``, ``ip_adapter/model.safetensors`` with
the official key names), so ``dhumandiff generate --model``, ``export`` and ``DHumanDiff.from_pretrained`` read
it too; and :meth:`DHumanDiffPipeline.from_pretrained` reads plain model folders and embedded names (``tiny``,
``tiny-4step``). Components: the diffusers / transformers ones (``unet``, ``vae``, ``text_encoder``,
``tokenizer``, ``image_encoder``, ``scheduler``, SDXL's ``text_encoder_2`` / ``tokenizer_2``), this project's
ModelMixins (``resampler``, ``face_proj``, ``subject_mlp``, the tiny world's ``identity_encoder``) and
:class:`IPAdapterWeights`, the dual cross-attention K/V projections, which live inside the UNet's attention
processors and are tied to them (one set of tensors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..utils.atomic import atomic_dir
from .attention import processor_list
from .configs import BackboneConfig
from .dhumandiff_model import CONFIG_NAME, DHumanDiff
from .generate import generate_portrait, load_model
from .registry import resolve_model
from .sampler import SCHEDULERS, make_scheduler

__all__ = ["DHumanDiffPipeline", "IPAdapterWeights"]

IP_WEIGHTS = "model.safetensors"
OUTPUT_TYPES = ("pil", "np", "pt")


def _esc(key: str) -> str:
    return key.replace(".", "-")  # parameter names cannot hold dots


class IPAdapterWeights(ModelMixin, ConfigMixin):
    """The dual decoupled cross-attention weights (``to_k_ip1`` ... per attention layer) as a pipeline component.

    Saved as ``config.json`` + ``model.safetensors`` under the official ``ip_adapter_ca.pt`` keys
    (``"{index}.to_k_ip1.weight"``), the layout a dhumandiff model folder keeps in ``ip_adapter/``.
    """

    @register_to_config
    def __init__(self, shapes: dict[str, list[int]]) -> None:
        super().__init__()
        self.weights = nn.ParameterDict({_esc(k): nn.Parameter(torch.zeros(*s)) for k, s in shapes.items()})

    @classmethod
    def from_processors(cls, processors: nn.Module) -> "IPAdapterWeights":
        """The weights of installed processors, tied to them (no copy)."""
        shapes = {k: list(v.shape) for k, v in processors.state_dict().items()}
        obj = cls(shapes=shapes)
        obj.tie(processors)
        return obj

    def tie(self, processors: nn.Module) -> None:
        """Make every weight *the* processor's parameter, so edits either way are seen by both."""
        for key in self.config.shapes:
            self.weights[_esc(key)] = processors.get_parameter(key)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: self.weights[_esc(k)].detach().contiguous() for k in self.config.shapes}

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        os.makedirs(save_directory, exist_ok=True)
        self.save_config(save_directory)
        save_file(self.official_state_dict(), str(Path(save_directory) / IP_WEIGHTS))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "IPAdapterWeights":
        path = Path(pretrained_model_name_or_path)
        obj = cls.from_config(cls.load_config(path))
        state = load_file(str(path / IP_WEIGHTS))
        want = {k: tuple(s) for k, s in obj.config.shapes.items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if want != got:
            raise CheckpointError(f"{path / IP_WEIGHTS} does not match its config.json (keys or shapes differ); "
                                  f"save the pipeline again")
        with torch.no_grad():
            for k, v in state.items():
                obj.weights[_esc(k)].copy_(v)
        dtype = kwargs.get("torch_dtype")
        return obj.to(dtype) if isinstance(dtype, torch.dtype) else obj


class DHumanDiffPipeline(DiffusionPipeline):
    """Two face photos + a prompt -> one photo of those two people (DHumanDiff, single or cascade mode)."""

    model_cpu_offload_seq = "image_encoder->text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["text_encoder_2", "tokenizer_2", "identity_encoder", "vae_tiny"]

    def __init__(self, unet, vae, text_encoder, tokenizer, image_encoder, resampler, face_proj, subject_mlp,
                 ip_adapter: IPAdapterWeights, scheduler, text_encoder_2=None, tokenizer_2=None,
                 identity_encoder=None, dhumandiff_config: dict | None = None, vae_tiny=None) -> None:
        super().__init__()
        if dhumandiff_config is None:
            raise CheckpointError("DHumanDiffPipeline needs dhumandiff_config (the model's dhumandiff.json); load it "
                                  "with DHumanDiffPipeline.from_pretrained(folder or 'tiny')")
        model = DHumanDiff(BackboneConfig.from_dict(dhumandiff_config), unet, vae, text_encoder, image_encoder,
                           resampler, face_proj, subject_mlp, tokenizer, text_encoder_2, tokenizer_2,
                           identity_encoder, vae_tiny)
        model.load_ip_state_dict(ip_adapter.official_state_dict())
        _own_aligned_storage(model)
        ip_adapter.tie(processor_list(unet))
        self._wire(model.float().eval(), ip_adapter, scheduler)

    def _wire(self, model: DHumanDiff, ip_adapter: IPAdapterWeights, scheduler) -> None:
        self.register_modules(
            unet=model.unet, vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
            image_encoder=model.image_encoder, resampler=model.resampler, face_proj=model.face_proj,
            subject_mlp=model.subject_mlp, ip_adapter=ip_adapter, scheduler=scheduler,
            text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2,
            identity_encoder=model.identity_encoder, vae_tiny=model.vae_tiny)
        self.register_to_config(dhumandiff_config=json.loads(json.dumps(model.config.to_dict(), default=str)))
        self.model = model

    # ------------------------------------------------------------------------------------- construction

    @classmethod
    def from_model(cls, model: DHumanDiff) -> "DHumanDiffPipeline":
        """Wrap a loaded :class:`DHumanDiff` (its modules are shared, not copied)."""
        pipe = cls.__new__(cls)
        DiffusionPipeline.__init__(pipe)
        pipe._wire(model.eval(), IPAdapterWeights.from_processors(processor_list(model.unet)),
                   make_scheduler(model))
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "DHumanDiffPipeline":
        """A saved pipeline folder (diffusers' loader), or a dhumandiff model folder / embedded model name."""
        path = Path(str(pretrained_model_name_or_path))
        if not (path / cls.config_name).is_file():
            try:
                resolve_model(str(pretrained_model_name_or_path))
            except CheckpointError:
                pass
            else:
                return cls.from_model(load_model(str(pretrained_model_name_or_path)))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        **kwargs: Any) -> None:
        """Write the pipeline folder atomically; it doubles as a dhumandiff model folder."""
        config = self._model_config()
        self.register_to_config(dhumandiff_config=config)
        procs = dict(self.unet.attn_processors)
        self.unet.set_attn_processor(AttnProcessor2_0())  # the UNet folder stays a plain diffusers UNet
        try:
            with atomic_dir(save_directory, overwrite=True) as tmp:
                super().save_pretrained(tmp, safe_serialization=safe_serialization, **kwargs)
                (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str))
        finally:
            self.unet.set_attn_processor(procs)

    # -------------------------------------------------------------------------------------- scheduler

    def _sampler(self) -> str:
        """The reference sampler name (ddim, euler, lcm) of ``self.scheduler``'s class."""
        for name, klass in SCHEDULERS.items():
            if type(self.scheduler) is klass:
                return name
        raise ValueError(f"DHumanDiffPipeline samples with {', '.join(k.__name__ for k in SCHEDULERS.values())}; "
                         f"got {type(self.scheduler).__name__}")

    def _model_config(self) -> dict[str, Any]:
        """The model's config with the pipeline's scheduler (class, config, default sampler) written in."""
        cfg = json.loads(json.dumps(self.model.config.to_dict(), default=str))
        sched = {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}
        cfg["scheduler"] = json.loads(json.dumps({"_class_name": type(self.scheduler).__name__, **sched},
                                                 default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
        cfg["defaults"] = {**cfg.get("defaults", {}), "sampler": self._sampler()}
        return cfg

    # ------------------------------------------------------------------------------------------ call

    @staticmethod
    def _seed(generator, seed: int | None, index: int) -> int:
        if seed is not None:
            return int(seed) + index
        if isinstance(generator, (list, tuple)):
            generator = generator[index]
        if isinstance(generator, torch.Generator):
            return int(generator.initial_seed())
        if generator is None:
            return index
        raise TypeError("generator must be a torch.Generator (its initial_seed() is the seed) or a list of them")

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], face_images: Sequence[Any] | None = None, *,
                 face_a: Any = None, face_b: Any = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, ip_scale: float | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None, seed: int | None = None,
                 height: int | None = None, width: int | None = None, output_type: str = "pil",
                 return_dict: bool = True, mode: str = "single", layout: Any = None,
                 person_words: tuple[str, str] | None = None, face_index_a: int | None = None,
                 face_index_b: int | None = None, face_analyzer: Any = None):
        """Generate one image per prompt of the person in ``face_images[0]`` and the one in ``face_images[1]``.

        Faces: two PIL images, paths or arrays (``face_images`` or ``face_a`` / ``face_b``). The initial noise
        is NumPy's (as in every dhumandiff runtime): its seed is ``seed`` (+ the prompt's index), else
        ``generator.initial_seed()`` (one generator per prompt, or one for all), else the prompt's index.
        ``guidance_scale``/``num_inference_steps`` default to the model's; ``height``/``width`` must be the
        model's native size. ``output_type``: "pil" (list of images), "np" ([N, H, W, 3] float32 in [0, 1]) or
        "pt" ([N, 3, H, W]); all three hold the same 8-bit image. ``mode``: "single" or "cascade".
        """
        if face_images is not None:
            if face_a is not None or face_b is not None or len(face_images) != 2:
                raise ValueError("give face_images=[face_a, face_b] (exactly two) or face_a= and face_b=")
            face_a, face_b = face_images
        if face_a is None or face_b is None:
            raise ValueError("DHumanDiff needs two face photos: face_images=[face_a, face_b]")
        size = int(self.model.config.image_size)
        for name, value in (("height", height), ("width", width)):
            if value is not None and int(value) != size:
                raise ValueError(f"{name} {value}: this model generates {size}x{size} images (pass None or {size})")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)} (got {output_type!r})")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        sampler = self._sampler()
        saved = self.model.config.scheduler
        self.model.config.scheduler = self._model_config()["scheduler"]  # the pipeline's scheduler, this call only
        images = []
        try:
            for i, text in enumerate(prompts):
                steps = num_inference_steps or self.model.config.defaults.get("steps", 30)
                with self.progress_bar(total=steps * (2 if mode == "cascade" else 1)) as bar:
                    res = generate_portrait(
                        self.model, face_a, face_b, text, analyzer=face_analyzer, steps=num_inference_steps,
                        seed=self._seed(generator, seed, i), guidance=guidance_scale, ip_scale=ip_scale, mode=mode,
                        layout=layout, face_index_a=face_index_a, face_index_b=face_index_b,
                        person_words=person_words, sampler=sampler,
                        progress=lambda done, total: _advance(bar, done, total))
                images.append(res.image)
        finally:
            self.model.config.scheduler = saved
        if output_type == "np":
            images = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
        elif output_type == "pt":
            images = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
                                      ).permute(0, 3, 1, 2)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def _own_aligned_storage(module: nn.Module) -> None:
    """Copy every tensor that is not 64-byte aligned into memory of its own.

    Weights loaded from a safetensors file can be views into the memory-mapped file at any offset; oneDNN then
    takes other kernels, and a generation drifts in the last float bits (measured: one pixel one level off),
    so a pipeline loaded from disk would not repeat the in-memory one. PyTorch's allocator aligns to 64 bytes.
    """
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.data_ptr() % 64:
                t.data = t.data.clone()


def _advance(bar, done: int, total: int) -> None:
    """Move a tqdm bar to ``done`` of ``total`` (the sampler reports absolute progress)."""
    bar.total = total
    bar.update(done - bar.n)

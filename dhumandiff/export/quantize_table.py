"""The registry of quantised variants: every ``--quantize`` mode of every runtime, as data.

Torch-free on purpose: the command line builds its ``--quantize`` help from :data:`MODES` without importing the
quantisers (``quantize_modes`` runs them and re-exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DHumanDiffError

#: What a mode quantises unless told otherwise: every graph but the VAE decoder, whose output is the image
#: itself (its error lands in the pixels unfiltered) and which is a small part of an SD-class model.
DEFAULT_COMPONENTS = ("identity_encoder", "image_encoder", "face_projection", "text_encoder", "text_encoder_2", "unet")


@dataclass(frozen=True)
class QuantMode:
    """One quantised variant of one runtime.

    ``precision``: the bundle's precision label; ``bits``: the narrowest weight width (picks the budget);
    ``activations``: activations are quantised too (needs a calibration set); ``activation_components``: where
    (None: every quantised component; the others get the runtime's int8 weight-only compression);
    ``exclusion_metric``: the column of the sensitivity report that decides which UNet layers stay float (None:
    no layer exclusion).
    """

    runtime: str
    name: str
    precision: str
    bits: int
    activations: bool
    needs_sensitivity: bool = False
    exclusion_metric: str | None = "int8_weights_psnr_db"
    components: tuple[str, ...] = DEFAULT_COMPONENTS
    activation_components: tuple[str, ...] | None = None
    help: str = ""

    def quantizes_activations(self, component: str) -> bool:
        return self.activations and (self.activation_components is None or component in self.activation_components)

    @property
    def needs_calibration(self) -> bool:
        return self.activations or self.needs_sensitivity


MODES: dict[tuple[str, str], QuantMode] = {(m.runtime, m.name): m for m in (
    QuantMode("onnx", "int8-static", "int8", 8, True, exclusion_metric="int8_psnr_db",
              help="QDQ int8, per-channel weights, activation ranges from the calibration set (quantize_static)"),
    QuantMode("onnx", "int8-dynamic", "int8", 8, False,
              help="int8 MatMul/Gemm weights, activations quantised at run time (quantize_dynamic)"),
    QuantMode("openvino", "int8-weights", "int8", 8, False,
              help="NNCF int8 weight compression (compress_weights INT8_ASYM, --symmetric: INT8_SYM)"),
    QuantMode("openvino", "int4-weights", "int4", 4, False,
              help="NNCF int4 weight compression (INT4_SYM/ASYM, --group-size; int8 where a group does not fit)"),
    # optimum-intel's recipe for diffusion pipelines: activations are quantised in the UNet only; the encoders
    # get int8 weights. Measured on the tiny default: NNCF's static activations in the conditioning encoders
    # cost ~8 dB end to end (21.8 dB with them, 29.8 dB with the UNet alone).
    QuantMode("openvino", "int8-hybrid", "int8", 8, True, exclusion_metric="int8_psnr_db",
              activation_components=("unet",),
              help="optimum-intel's hybrid: int8 MatMul weights, int8 Convolution weights+activations (nncf.quantize)"),
    QuantMode("openvino", "int8", "int8", 8, True, exclusion_metric="int8_psnr_db", activation_components=("unet",),
              help="NNCF full int8 (nncf.quantize, ModelType.TRANSFORMER) from the calibration set"),
    QuantMode("coreml", "palettize-8", "palettized8", 8, False, exclusion_metric="bits:8",
              help="8-bit k-means palettisation (OpPalettizerConfig)"),
    QuantMode("coreml", "palettize-6", "palettized6", 6, False, exclusion_metric="bits:6",
              help="6-bit k-means palettisation (Apple's default for Stable Diffusion)"),
    QuantMode("coreml", "palettize-4", "palettized4", 4, False, exclusion_metric="bits:4",
              help="4-bit k-means palettisation"),
    QuantMode("coreml", "linear-int8", "int8", 8, False,
              help="symmetric per-channel int8 weights (OpLinearQuantizerConfig)"),
    QuantMode("coreml", "mixed-bit", "mixed", 4, False, needs_sensitivity=True, exclusion_metric=None,
              components=("unet",),
              help="UNet bits per layer from the sensitivity analysis for a target average (--avg-bits)"),
)}


def modes_for(runtime: str) -> list[str]:
    return [name for (rt, name) in MODES if rt == runtime]


def get_mode(runtime: str, name: str) -> QuantMode:
    if (runtime, name) not in MODES:
        choices = ", ".join(modes_for(runtime)) or "none"
        raise DHumanDiffError(f"--quantize {name!r} is not a {runtime} variant; choose one of {choices}")
    return MODES[(runtime, name)]

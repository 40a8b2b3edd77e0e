"""What the distilled tiny VAE decoder costs in fidelity, on generated images (BENCHMARKS.md, `tiny-fast`).

Runs `dhumandiff eval`'s evaluation for the 4-step student with the full VAE decoder (`tiny-4step`) and with the
tiny one (`tiny-fast`) on the same held-out records and seeds, and, for every `tiny-fast` image, decodes the same
final latents with the full decoder too: the PSNR between the two decodings is the decoder's own error on real
sampler outputs (the distillation report's PSNR is on encoded photos).
Usage: python benchmarks/tiny_decoder_fidelity.py DATA_DIR OUT_DIR [LIMIT]   (~10 min for 96 records on 2 cores)
"""

from __future__ import annotations

import json
import math
import sys

import torch

import dhumandiff.model.sampler as sampler_module
from dhumandiff.checks.evaluate import EvalSetting, evaluate
from dhumandiff.model.faces import get_face_analyzer
from dhumandiff.model.generate import load_model
from dhumandiff.model.registry import ASSETS


def main(data: str, out: str, limit: int) -> None:
    judge = get_face_analyzer("world", encoder=ASSETS.parent / "evaluators" / "world-b")
    psnrs: list[float] = []
    decode = sampler_module.ReferenceSampler.decode

    def decode_both(self, latents, precision=None):  # type: ignore[no-untyped-def]
        image = decode(self, latents, precision)
        if self.model.vae_decoder_kind == "tiny":
            with torch.no_grad():
                scale = self.model.vae.config.scaling_factor
                full = (self.model.vae.decode(latents / scale).sample[0].clamp(-1, 1) + 1) / 2
            psnrs.append(10 * math.log10(1.0 / max(torch.mean((image - full) ** 2).item(), 1e-12)))
        return image

    sampler_module.ReferenceSampler.decode = decode_both
    settings = [EvalSetting("tiny-4step (full VAE decoder)", load_model("tiny-4step"), "single", 4),
                EvalSetting("tiny-fast (tiny VAE decoder)", load_model("tiny-fast"), "single", 4)]
    report = evaluate(settings, data, judge, out, limit=limit)
    print(report.markdown())
    s = sorted(psnrs)
    print(json.dumps({"images": len(s), "psnr_tiny_vs_full_decoder_db_mean": sum(s) / len(s), "min": s[0],
                      "median": s[len(s) // 2]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 96)

"""The official recipe's choices against the project's, on the tiny world (BENCHMARKS.md, "Conditioning recipes").

Runs `dhumandiff eval`'s evaluation of the embedded `tiny` (trained with the `dhumandiff` recipe) once per recipe
variant on the same held-out records and seeds, with the independent world-b evaluator: the project's recipe, the
full official recipe, and each official choice alone on top of the project's (negative prompt, zero-image
unconditional ID tokens, no region masks, the whole photo for CLIP, last-layer / penultimate text), in single mode;
then the cascade with the official mask, the two-person mask and the project's attention-mass mask.
Usage: python benchmarks/recipe_choices.py DATA_DIR OUT_DIR [LIMIT] [STEPS]
"""

from __future__ import annotations

import dataclasses
import json
import sys

from dhumandiff.checks.evaluate import EvalSetting, evaluate
from dhumandiff.contract.recipe import OFFICIAL
from dhumandiff.model.faces import get_face_analyzer
from dhumandiff.model.generate import load_model
from dhumandiff.model.registry import ASSETS


def main(data: str, out: str, limit: int, steps: int) -> None:
    judge = get_face_analyzer("world", encoder=ASSETS.parent / "evaluators" / "world-b")
    model = load_model("tiny")
    own = model.config.conditioning
    official = dataclasses.replace(OFFICIAL, text_layer=-1, uncond_text_layer=-2)
    single = {
        "dhumandiff (trained with)": own,
        "official": official,
        "+ official negative prompt": dataclasses.replace(own, negative_prompt=OFFICIAL.negative_prompt),
        "+ zero-image uncond ID tokens": dataclasses.replace(own, uncond_id_tokens="zero-image"),
        "+ no region masks": dataclasses.replace(own, region_masks=False),
        "+ whole photo for CLIP": dataclasses.replace(own, clip_input="photo"),
        "+ penultimate negative text": dataclasses.replace(own, uncond_text_layer=-2),
    }
    cascade = {f"cascade, {m} mask": dataclasses.replace(own, cascade_mask=m)
               for m in ("attention-mass", "official", "two-person")}
    settings = [EvalSetting(label, model, "single", steps, recipe=r) for label, r in single.items()]
    settings += [EvalSetting(label, model, "cascade", steps, recipe=r) for label, r in cascade.items()]
    report = evaluate(settings, data, judge, out, limit=limit,
                      progress=lambda label, k, n: print(f"{label}: {k}/{n}", end="\r", flush=True))
    print()
    print(report.markdown())
    print(json.dumps([{k: r[k] for k in ("label", "identity_similarity", "swap_rate", "attribute_accuracy")}
                      for r in report.rows], indent=1))


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    main(args[0], args[1], int(args[2]) if len(args) > 2 else 96, int(args[3]) if len(args) > 3 else 30)

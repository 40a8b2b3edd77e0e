"""Write a synthetic dataset of the tiny world in the PairHuman folder format, deterministically and atomically.

Layout (see :mod:`dhumandiff.data.layout`)::

    DIR/dataset.json            format, version, generator, seed, image_size, layout
    DIR/identities.json         {identity_id: {attributes..., "split": "train" | "heldout"}}
    DIR/images/000000.png       lossless scenes
    DIR/annotations/000000.json the real PairHuman schema + people[i].identity_id + top-level "split"
    DIR/faces/<identity_id>/0.png ... 112x112 reference views

The same arguments give byte-identical files (no timestamps, seeded generators per image), so a dataset can be
rebuilt instead of shipped. Held-out identities appear only in images whose ``split`` is ``"heldout"``, so an
evaluation on them measures generalisation to unseen faces.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dhumandiff.data.captions import build_caption
from dhumandiff.data.layout import DATASET_FILE, FORMAT_NAME, FORMAT_VERSION, IDENTITIES_FILE, DatasetLayout
from dhumandiff.data.schema import Annotation, ImageCaption, Information, MatchInfo, Person, dump_annotation
from dhumandiff.data.world import (
    EXPRESSION, Identity, SceneSpec, feasible_topics, make_identities, reference_views, render_scene,
    sample_scene_spec,
)
from dhumandiff.utils.atomic import atomic_dir

GENERATOR = "dhumandiff.synth"
TRAIN, HELDOUT = "train", "heldout"

# Order in which (gender, age) groups give up a held-out member: the first few already make every topic
# possible among held-out identities (an adult man and woman, a child, a second woman).
_HELDOUT_PRIORITY = (
    ("male", "adult"), ("female", "adult"), ("female", "child"), ("female", "young adult"),
    ("male", "young adult"), ("male", "child"), ("male", "elderly"), ("female", "elderly"),
)


def default_identity_count(count: int) -> int:
    """Enough identities that each appears in ~16 images on average, and at least 40 for variety."""
    return max(40, count // 8)


def split_identities(identities: Sequence[Identity], heldout_fraction: float, seed: int) -> dict[str, str]:
    """Assign each identity to ``train`` or ``heldout`` (about ``heldout_fraction`` of them).

    Held-out members are taken round-robin from the (gender, age) groups and never a group's last member,
    so both splits keep every kind of person the topics need.
    """
    n_held = int(round(len(identities) * heldout_fraction))
    rng = np.random.default_rng([int(seed), 0x5B1])
    groups: dict[tuple[str, str], list[str]] = {}
    for ident in identities:
        groups.setdefault((ident.gender, ident.age_group), []).append(ident.identity_id)
    for key in groups:
        groups[key] = [groups[key][i] for i in rng.permutation(len(groups[key]))]
    held: set[str] = set()
    progress = True
    while len(held) < n_held and progress:
        progress = False
        for key in _HELDOUT_PRIORITY:
            members = groups.get(key, [])
            if len(held) < n_held and len(members) >= 2:
                held.add(members.pop())
                progress = True
    return {i.identity_id: (HELDOUT if i.identity_id in held else TRAIN) for i in identities}


def _text_fields(ident: Identity) -> dict[str, str]:
    """Face attributes as the free-text people fields of PairHuman (never in the caption)."""
    traits = f"{ident.face_shape} face, {ident.eye_color} eyes"
    if ident.beard:
        traits += ", beard"
    if ident.age_group == "elderly":
        traits += ", wrinkles"
    return {
        "facial_traits": traits,
        "hair_detail": f"{ident.hair_style} {ident.hair_color} hair",
        "skin_tone": ident.skin_tone,
        "accessories": "glasses" if ident.glasses else "none",
    }


def scene_annotation(
    spec: SceneSpec, boxes: Sequence[Sequence[float]], keypoints: Sequence[Sequence[Sequence[float]]],
    text: str, match_info: list[MatchInfo], image_size: int, split: str,
) -> Annotation:
    """The PairHuman annotation of one rendered scene (people ordered left, right; object_id 1, 2)."""
    people = []
    for i, (p, box, kps) in enumerate(zip(spec.persons, boxes, keypoints)):
        people.append(Person(
            unique_coordinate=tuple(float(v) for v in box),  # type: ignore[arg-type]
            object_id=i + 1,
            gender=p.identity.gender,
            age_group=p.identity.age_group,
            action=p.action,
            expression=EXPRESSION,
            details_of_clothes_and_shoes=f"{p.clothes_color} {p.clothes_type}",
            keypoints=tuple(tuple(float(v) for v in kp) for kp in kps),  # type: ignore[misc]
            extra={"identity_id": p.identity.identity_id, "person_word": p.word},
            **_text_fields(p.identity),
        ))
    return Annotation(
        information=Information(height=image_size, width=image_size, image_category=spec.topic,
                                photo_settings={"location": spec.setting, "framing": "half-body"}),
        image_caption=ImageCaption(text=text, match_info=match_info),
        people=people,
        extra={"split": split},
    )


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def synthesize(
    out_dir: str | os.PathLike,
    count: int,
    seed: int,
    image_size: int = 64,
    n_identities: int | None = None,
    refs_per_identity: int = 4,
    heldout_fraction: float = 0.2,
    overwrite: bool = False,
) -> Path:
    """Generate ``count`` annotated scenes plus reference faces into ``out_dir``; returns the folder.

    The folder is built under a hidden temporary sibling and renamed into place at the end, so readers never
    see a half-written dataset. Raises ``FileExistsError`` if ``out_dir`` exists and not ``overwrite``.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    if image_size < 32:
        raise ValueError("image_size must be >= 32 (faces would be a few pixels wide)")
    if refs_per_identity < 1:
        raise ValueError("refs_per_identity must be >= 1")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError("heldout_fraction must be in [0, 1)")
    n_ids = n_identities if n_identities is not None else default_identity_count(count)
    identities = make_identities(n_ids, seed)
    splits = split_identities(identities, heldout_fraction, seed)
    pools = {s: [i for i in identities if splits[i.identity_id] == s] for s in (TRAIN, HELDOUT)}
    if not feasible_topics(pools[TRAIN]):
        raise ValueError(f"{n_ids} identities cannot form a train pair; use more identities")
    n_held_images = 0
    if pools[HELDOUT]:
        if not feasible_topics(pools[HELDOUT]):
            raise ValueError(f"the {len(pools[HELDOUT])} held-out identities cannot form any pair; raise "
                             "n_identities or heldout_fraction, or set heldout_fraction=0")
        n_held_images = min(count, int(round(count * heldout_fraction)))
    order = np.random.default_rng([int(seed), 0x5B2]).permutation(count)
    held_images = set(int(i) for i in order[:n_held_images])
    layout = DatasetLayout()

    with atomic_dir(out_dir, overwrite=overwrite, markers=(DATASET_FILE,)) as tmp:
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "generator": GENERATOR, "seed": int(seed),
                "image_size": int(image_size), "count": int(count), "n_identities": int(n_ids),
                "refs_per_identity": int(refs_per_identity), "heldout_fraction": float(heldout_fraction),
                "layout": {"images": layout.images, "annotations": layout.annotations, "faces": layout.faces}}
        (tmp / DATASET_FILE).write_text(_dump(meta), encoding="utf-8")
        ids_json = {i.identity_id: {**i.attributes(), "split": splits[i.identity_id]} for i in identities}
        (tmp / IDENTITIES_FILE).write_text(_dump(ids_json), encoding="utf-8")
        for ident in identities:
            folder = tmp / layout.faces / ident.identity_id
            folder.mkdir(parents=True)
            for k, view in enumerate(reference_views(ident, refs_per_identity, seed)):
                view.save(folder / f"{k}.png", format="PNG")
        (tmp / layout.images).mkdir()
        (tmp / layout.annotations).mkdir()
        for idx in range(count):
            split = HELDOUT if idx in held_images else TRAIN
            rng = np.random.default_rng([int(seed), 0x5CE, idx])
            spec = sample_scene_spec(pools[split], rng)
            img, boxes, kps = render_scene(spec, image_size, rng)
            text, match_info = build_caption(spec, rng)
            ann = scene_annotation(spec, boxes, kps, text, match_info, image_size, split)
            img.save(tmp / layout.images / f"{idx:06d}.png", format="PNG")
            (tmp / layout.annotations / f"{idx:06d}.json").write_text(dump_annotation(ann), encoding="utf-8")
    return Path(out_dir)

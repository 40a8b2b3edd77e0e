"""data stage: the procedural tiny world, the PairHuman annotation schema, captions, synthesis, checks, Dataset.

Importing this package is torch-free; ``PairHumanDataset`` and ``collate_fn`` (which need torch) are loaded on
first access, or import them from :mod:`dhumandiff.data.dataset` directly.
"""

from __future__ import annotations

from typing import Any

from dhumandiff.data.captions import (
    build_caption, caption_corpus, caption_person_spans, count_tokens, fit_caption_window, person_token_positions,
    world_vocabulary,
)
from dhumandiff.data.check import CheckReport, check_folder
from dhumandiff.data.layout import DatasetLayout, read_dataset_meta, read_identities
from dhumandiff.data.schema import (
    Annotation, ImageCaption, Information, MatchInfo, ObjectInfo, Person, PersonSpan, dump_annotation,
    load_annotation, parse_annotation, resolve_person_span,
)
from dhumandiff.data.synth import synthesize
from dhumandiff.data.world import (
    ACTIONS, ATTRIBUTES, CLOTHES_COLORS, CLOTHES_RGB, CLOTHES_TYPES, EYE_RGB, HAIR_RGB, SETTINGS, SKIN_RGB, TOPICS,
    Identity, PersonSpec, SceneSpec, face_box_from_keypoints, make_identities, reference_views, render_face,
    render_scene, sample_scene_spec,
)

_LAZY = {"PairHumanDataset", "collate_fn"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from dhumandiff.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIONS", "ATTRIBUTES", "CLOTHES_COLORS", "CLOTHES_RGB", "CLOTHES_TYPES", "EYE_RGB", "HAIR_RGB", "SETTINGS",
    "SKIN_RGB", "TOPICS", "Annotation", "CheckReport", "DatasetLayout", "Identity", "ImageCaption", "Information",
    "MatchInfo", "ObjectInfo", "PairHumanDataset", "Person", "PersonSpan", "PersonSpec", "SceneSpec",
    "build_caption", "caption_corpus", "caption_person_spans", "check_folder", "collate_fn", "count_tokens",
    "dump_annotation", "face_box_from_keypoints", "fit_caption_window", "load_annotation", "make_identities",
    "parse_annotation", "person_token_positions", "read_dataset_meta", "read_identities", "reference_views",
    "render_face", "render_scene", "resolve_person_span", "sample_scene_spec", "synthesize", "world_vocabulary",
]

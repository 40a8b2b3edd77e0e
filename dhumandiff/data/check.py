"""Validate a PairHuman-format folder before training on it, reporting every problem instead of the first.

Training would otherwise fail hours in on one bad file, or worse, silently learn from a box that lies outside
its image. ``check_folder`` reads every annotation with the strict schema, opens its image, and cross-checks
sizes, boxes, caption spans, identity ids and reference faces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from dhumandiff.data.captions import caption_person_spans
from dhumandiff.data.layout import DatasetLayout, read_identities
from dhumandiff.data.schema import Annotation, load_annotation
from dhumandiff.errors import AnnotationError

#: Boxes may overshoot the image by this many pixels (rounding in annotation tools) before it is a problem.
BOX_TOLERANCE_PX = 1.0


@dataclass
class CheckReport:
    """``ok_count`` annotations passed every check; ``problems`` lists ``(file, message)`` pairs."""

    ok_count: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return f"{self.ok_count} annotation(s) OK, {len(self.problems)} problem(s)"


def _open_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(size, None) if the image decodes fully, else (None, reason)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size, None
    except Exception as e:  # PIL raises many types for corrupt files; all mean "unreadable"
        return None, f"image cannot be read: {type(e).__name__}: {e}"


def _check_annotation(root: Path, layout: DatasetLayout, ann_path: Path, ann: Annotation,
                      identities: dict[str, dict] | None) -> list[str]:
    issues: list[str] = []
    info = ann.information
    img_path = layout.image_for(root, ann_path.stem)
    if img_path is None:
        issues.append(f"no image {layout.images}/{ann_path.stem}{{{','.join(layout.image_ext)}}} for this annotation")
    else:
        size, err = _open_image(img_path)
        if err:
            issues.append(f"{img_path.name}: {err}")
        elif size != (info.width, info.height):
            issues.append(f"field 'Information': height/width {info.height}x{info.width} do not match the image "
                          f"{img_path.name} ({size[1]}x{size[0]})")
    issues.extend(_dual_person_issues(ann))
    tol = BOX_TOLERANCE_PX
    for i, p in enumerate(ann.people):
        x0, y0, x1, y1 = p.unique_coordinate
        if x0 < -tol or y0 < -tol or x1 > info.width + tol or y1 > info.height + tol:
            issues.append(f"field 'people[{i}].unique_coordinate': box {list(p.unique_coordinate)} is outside the "
                          f"{info.width}x{info.height} image")
        if identities is not None:
            iid = p.identity_id
            if iid is not None and iid not in identities:
                issues.append(f"field 'people[{i}].identity_id': {iid!r} is not in identities.json")
    try:
        caption_person_spans(ann)
    except AnnotationError as e:
        issues.append(str(e).removeprefix(f"{ann.source}: "))
    return issues


def _dual_person_issues(ann: Annotation) -> list[str]:
    """What makes a record unusable as a *dual-person* PairHuman record (the schema itself accepts any number of
    people and refuses boxes without area): exactly two people, and two different identities when the record
    names them (training pairs each person with their own reference photos)."""
    issues = []
    if len(ann.people) != 2:
        issues.append(f"field 'people': a dual-person record shows exactly 2 people, this one {len(ann.people)}")
    ids = [p.identity_id for p in ann.people[:2]]
    if len(ids) == 2 and ids[0] is not None and ids[0] == ids[1]:
        issues.append(f"field 'people[1].identity_id': both people are identity {ids[0]!r}; a dual-person record "
                      "needs two different people")
    return issues


def check_folder(root: str | os.PathLike, layout: DatasetLayout | None = None) -> CheckReport:
    """Check every annotation of a dataset folder (and its reference faces); never raises for bad data."""
    root = Path(root)
    report = CheckReport()
    if not root.is_dir():
        report.problems.append((str(root), "not a folder"))
        return report
    try:
        layout = layout or DatasetLayout.from_root(root)
    except AnnotationError as e:
        report.problems.append((str(root / "dataset.json"), str(e)))
        layout = DatasetLayout()
    try:
        identities = read_identities(root)
    except AnnotationError as e:
        report.problems.append((str(root / "identities.json"), str(e)))
        identities = None
    files = layout.annotation_files(root)
    if not files:
        report.problems.append((str(root / layout.annotations), "no annotation files (*.json)"))
    stems = set()
    used_ids: set[str] = set()
    for path in files:
        stems.add(path.stem)
        try:
            ann = load_annotation(path)
        except AnnotationError as e:
            report.problems.append((str(path), str(e).removeprefix(f"{path}: ")))  # the file is named already
            continue
        used_ids.update(p.identity_id for p in ann.people if p.identity_id)
        issues = _check_annotation(root, layout, path, ann, identities)
        report.problems.extend((str(path), msg) for msg in issues)
        if not issues:
            report.ok_count += 1
    for img in layout.image_files(root):
        if img.stem not in stems:
            report.problems.append((str(img), "image has no annotation"))
    # reference faces: every known identity (or every identity used by an annotation) needs readable photos
    for iid in sorted(set(identities or {}) | used_ids):
        faces = layout.face_files(root, iid)
        if not faces:
            if (root / layout.faces).is_dir():
                report.problems.append((str(root / layout.faces / iid), "no reference face images"))
            continue
        for f in faces:
            _, err = _open_image(f)
            if err:
                report.problems.append((str(f), err))
    return report

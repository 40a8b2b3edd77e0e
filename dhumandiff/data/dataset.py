"""PyTorch view of a PairHuman-format folder: images, captions, person tokens, boxes, faces and references.

The only module of :mod:`dhumandiff.data` that imports torch; ``import dhumandiff.data`` stays torch-free.

Each item holds exactly two persons, ordered left to right by box centre; ``person_positions``,
``boxes``, ``face_crops`` and ``reference_faces`` all follow that order, so index 0 is always the left
person and its caption word. Faces are cropped from the full-resolution image (before any resize) with the
aligned-crop geometry of :func:`~dhumandiff.data.world.face_box_from_keypoints`, so synthetic crops look like
the reference views.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dhumandiff.data.captions import caption_person_spans, fit_caption_window, model_max_length, person_token_positions
from dhumandiff.data.layout import DatasetLayout, read_identities
from dhumandiff.data.schema import Annotation, Person, load_annotation
from dhumandiff.data.world import face_box_from_keypoints
from dhumandiff.errors import AnnotationError, InputImageError

_TEXT_ATTRS = ("gender", "age_group", "facial_traits", "hair_detail", "skin_tone", "action", "expression",
               "details_of_clothes_and_shoes", "accessories")


def _to_tensor01(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def crop_square(img: Image.Image, box: Sequence[float], size: int) -> Image.Image:
    """Crop ``box`` (may extend past the image: padded with black) and resize to ``size`` x ``size``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    b = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    # Image.transform with an EXTENT samples sub-pixel boxes and fills outside with 0 (black)
    return img.convert("RGB").transform((size, size), Image.Transform.EXTENT, b, Image.Resampling.BICUBIC)


def _face_box(p: Person, width: int, height: int) -> list[float]:
    """Face box from keypoints, or the top of the person box when keypoints are missing or unusable."""
    if p.keypoints is not None:
        try:
            return face_box_from_keypoints(p.keypoints, (width, height), person_box=p.unique_coordinate)
        except ValueError:
            pass
    x0, y0, x1, y1 = p.unique_coordinate
    side = max(1.0, min(x1 - x0, y1 - y0) * 0.6)
    cx = (x0 + x1) / 2
    return [cx - side / 2, y0, cx + side / 2, y0 + side]


class PairHumanDataset(Dataset):
    """Items of a PairHuman-format folder for training the dual-person generator.

    ``image_size`` resizes the shorter side and centre-crops to a square (``None``: native size, which must be
    equal across images for batching). ``split`` keeps annotations whose top-level ``split`` field equals it
    (annotations without one count as ``"train"``). Reference faces are drawn at random (seeded by ``seed``
    and the item index, so an epoch is reproducible) from ``faces/<identity_id>/``; without them the face crop
    stands in. All annotations are parsed up front so a broken file fails at construction, naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        tokenizer: Any = None,
        image_size: int | None = None,
        split: str | None = None,
        face_size: int = 112,
        use_reference_faces: bool = True,
        seed: int = 0,
        layout: DatasetLayout | None = None,
    ) -> None:
        self.root = Path(root)
        self.layout = layout or DatasetLayout.from_root(self.root)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.split = split
        self.face_size = face_size
        self.use_reference_faces = use_reference_faces
        self.seed = seed
        self.max_length = model_max_length(tokenizer) if tokenizer is not None else 77
        self.identities = read_identities(self.root) or {}
        self.items: list[tuple[Annotation, Path]] = []
        for path in self.layout.annotation_files(self.root):
            ann = load_annotation(path)
            if split is not None and (ann.split or "train") != split:
                continue
            if len(ann.people) < 2:
                raise AnnotationError(f"{path}: field 'people': expected 2 persons for a dual-person item, "
                                      f"got {len(ann.people)}")
            img = self.layout.image_for(self.root, path.stem)
            if img is None:
                raise InputImageError(f"{path}: no image {self.layout.images}/{path.stem}.* for this annotation")
            self.items.append((ann, img))

    def __len__(self) -> int:
        return len(self.items)

    def _pair(self, ann: Annotation) -> list[int]:
        """Indices of the two persons (the two largest boxes if there are more), left to right."""
        idx = list(range(len(ann.people)))
        if len(idx) > 2:
            def area(i: int) -> float:
                x0, y0, x1, y1 = ann.people[i].box
                return (x1 - x0) * (y1 - y0)

            idx = sorted(sorted(idx, key=area, reverse=True)[:2])
        return sorted(idx, key=lambda i: (ann.people[i].box[0] + ann.people[i].box[2]) / 2)

    def _reference(self, iid: str | None, rng: random.Random, fallback: Image.Image) -> Image.Image:
        if self.use_reference_faces and iid:
            files = self.layout.face_files(self.root, iid)
            if files:
                path = files[rng.randrange(len(files))]
                try:
                    with Image.open(path) as im:
                        return im.convert("RGB").resize((self.face_size, self.face_size), Image.Resampling.BICUBIC)
                except Exception as e:  # corrupt reference: say which file
                    raise InputImageError(f"{path}: reference face cannot be read: {e}") from None
        return fallback

    def __getitem__(self, index: int) -> dict[str, Any]:
        ann, img_path = self.items[index]
        try:
            with Image.open(img_path) as im:
                image = im.convert("RGB")
        except Exception as e:
            raise InputImageError(f"{img_path}: image cannot be read: {e}") from None
        W, H = image.size
        order = self._pair(ann)
        persons = [ann.people[i] for i in order]
        rng = random.Random(self.seed * 1_000_003 + index)

        # faces from the full-resolution image
        crops = [crop_square(image, _face_box(p, W, H), self.face_size) for p in persons]
        refs = [self._reference(p.identity_id, rng, c) for p, c in zip(persons, crops)]

        # geometry: shorter side -> image_size, centre crop
        if self.image_size is not None:
            s = self.image_size / min(W, H)
            nw, nh = max(self.image_size, round(W * s)), max(self.image_size, round(H * s))
            ox, oy = (nw - self.image_size) / 2, (nh - self.image_size) / 2
            image = image.resize((nw, nh), Image.Resampling.BICUBIC).crop(
                (int(ox), int(oy), int(ox) + self.image_size, int(oy) + self.image_size))
            ox, oy = int(ox), int(oy)
            out_w = out_h = self.image_size
        else:
            s, ox, oy, out_w, out_h = 1.0, 0, 0, W, H
        boxes = torch.zeros(2, 4)
        face_boxes = torch.zeros(2, 4)
        kps = torch.zeros(2, 17, 3)
        for j, p in enumerate(persons):
            x0, y0, x1, y1 = p.box
            b = torch.tensor([(x0 * s - ox) / out_w, (y0 * s - oy) / out_h, (x1 * s - ox) / out_w,
                              (y1 * s - oy) / out_h])
            boxes[j] = b.clamp(0.0, 1.0)
            f0, g0, f1, g1 = _face_box(p, W, H)
            face_boxes[j] = torch.tensor([(f0 * s - ox) / out_w, (g0 * s - oy) / out_h, (f1 * s - ox) / out_w,
                                          (g1 * s - oy) / out_h])
            if p.keypoints is not None:
                k = torch.tensor(p.keypoints, dtype=torch.float32)
                k[:, 0] = (k[:, 0] * s - ox) / out_w
                k[:, 1] = (k[:, 1] * s - oy) / out_h
                kps[j] = k
        pixel_values = _to_tensor01(image) * 2.0 - 1.0

        # caption: spans per person, window to the encoder length, token positions
        all_spans = caption_person_spans(ann)
        spans = [all_spans[i] for i in order]
        sentences = [m.sentence for m in ann.image_caption.match_info]
        caption, spans = fit_caption_window(ann.image_caption.text, spans, self.tokenizer, sentences,
                                            self.max_length)
        item: dict[str, Any] = {
            "pixel_values": pixel_values,
            "caption": caption,
            "boxes": boxes,
            "face_boxes": face_boxes,
            "keypoints": kps,
            "face_crops": torch.stack([_to_tensor01(c) for c in crops]),
            "reference_faces": torch.stack([_to_tensor01(r) for r in refs]),
            "identity_ids": [p.identity_id or "" for p in persons],
            "attributes": [self._attributes(p) for p in persons],
        }
        if self.tokenizer is not None:
            enc = self.tokenizer(caption, padding="max_length", truncation=True, max_length=self.max_length)
            item["input_ids"] = torch.tensor(enc["input_ids"], dtype=torch.long)
            item["person_positions"] = torch.tensor(
                person_token_positions(self.tokenizer, caption, spans, self.max_length), dtype=torch.long)
        return item

    def _attributes(self, p: Person) -> dict[str, Any]:
        """The person's annotated text fields, merged with identities.json attributes when known."""
        attrs: dict[str, Any] = {k: getattr(p, k) for k in _TEXT_ATTRS if getattr(p, k) is not None}
        if p.identity_id and p.identity_id in self.identities:
            attrs.update({k: v for k, v in self.identities[p.identity_id].items() if k != "split"})
        return attrs


def collate_fn(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of a list of items; strings and dicts stay lists (``identity_ids``: list of pairs)."""
    out: dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out

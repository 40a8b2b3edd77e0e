"""Caption windows, person token positions and the PyTorch dataset over a synthetic folder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from dhumandiff.data.captions import (
    count_tokens, fit_caption_window, person_token_positions, world_vocabulary,
)
from dhumandiff.data.dataset import PairHumanDataset, collate_fn
from dhumandiff.data.schema import load_annotation
from dhumandiff.data.synth import synthesize

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<unk>"


def word_tokenizer(extra_words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A CLIP-shaped (BOS ... EOS, pad with EOS, 77 tokens) word-level tokenizer over the world's vocabulary."""
    pre = pre_tokenizers.Whitespace()
    pieces: list[str] = []
    for w in world_vocabulary() + (extra_words or []):
        pieces += [p for p, _ in pre.pre_tokenize_str(w)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys([UNK, BOS, EOS] + pieces))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS,
                                   unk_token=UNK, model_max_length=77)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer(["filler", "words", "here", "x"])


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(tmp_path_factory.mktemp("data") / "ds", count=6, seed=11, n_identities=16,
                      refs_per_identity=3, heldout_fraction=0.25)


# -------------------------------------------------------------------------------------------------------- captions


def test_person_token_positions_count_bos(tokenizer) -> None:
    text = "a groom in a black suit and his bride in a white dress hugging in a chapel."
    spans = [(2, 7), (32, 37), None]
    pos = person_token_positions(tokenizer, text, spans)
    ids = tokenizer(text)["input_ids"]
    assert pos[2] == -1
    assert tokenizer.convert_ids_to_tokens([ids[pos[0]], ids[pos[1]]]) == ["groom", "bride"]
    assert pos[0] == 2  # BOS, "a", "groom"


def test_short_captions_are_left_alone(tokenizer) -> None:
    text = "a man in a red shirt and a woman in a blue dress waving on a beach."
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fit_caption_window(text, [(2, 5), (27, 32)], tokenizer) == (text, [(2, 5), (27, 32)])


def test_long_captions_keep_the_sentence_with_both_person_words(tokenizer) -> None:
    filler = " ".join(["filler words here."] * 12)
    key = "a man in a red shirt and a woman in a blue dress waving on a beach."
    text = f"{filler} {key} {filler}"
    assert count_tokens(tokenizer, text) > 77
    start = len(filler) + 1
    spans = [(start + 2, start + 5), (start + 27, start + 32)]
    with pytest.warns(UserWarning, match="exceeds the 77-token limit"):
        window, new = fit_caption_window(text, spans, tokenizer, sentences=[key])
    assert key in window and count_tokens(tokenizer, window) <= 77
    assert [window[a:b] for a, b in new] == ["man", "woman"]
    assert window.startswith("filler") or window.startswith("a man")  # whole sentences only
    pos = person_token_positions(tokenizer, window, new)
    ids = tokenizer(window, padding="max_length", max_length=77)["input_ids"]
    assert tokenizer.convert_ids_to_tokens([ids[p] for p in pos]) == ["man", "woman"]


def test_one_huge_sentence_falls_back_to_a_token_window(tokenizer) -> None:
    text = " ".join(["x"] * 60) + " man " + " ".join(["x"] * 10) + " woman " + " ".join(["x"] * 60)
    spans = [(text.index(" man ") + 1, text.index(" man ") + 4), (text.index("woman"), text.index("woman") + 5)]
    with pytest.warns(UserWarning):
        window, new = fit_caption_window(text, spans, tokenizer)
    assert count_tokens(tokenizer, window) <= 77
    assert [window[a:b] for a, b in new] == ["man", "woman"]
    # without a tokenizer the window uses an approximate word count and still keeps both words
    with pytest.warns(UserWarning):
        window2, new2 = fit_caption_window(text, spans, None)
    assert [window2[a:b] for a, b in new2] == ["man", "woman"]


# --------------------------------------------------------------------------------------------------------- dataset


def test_dataset_items_have_the_documented_shapes(dataset_root: Path, tokenizer) -> None:
    ds = PairHumanDataset(dataset_root, tokenizer=tokenizer, face_size=56)
    assert len(ds) == 6
    item = ds[0]
    assert item["pixel_values"].shape == (3, 64, 64) and item["pixel_values"].dtype == torch.float32
    assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    assert item["input_ids"].shape == (77,) and item["input_ids"].dtype == torch.long
    assert item["person_positions"].shape == (2,) and item["person_positions"].dtype == torch.long
    assert item["boxes"].shape == (2, 4) and 0 <= item["boxes"].min() and item["boxes"].max() <= 1
    assert item["keypoints"].shape == (2, 17, 3)
    assert item["face_crops"].shape == (2, 3, 56, 56) and item["reference_faces"].shape == (2, 3, 56, 56)
    assert 0 <= item["face_crops"].min() and item["face_crops"].max() <= 1
    assert len(item["identity_ids"]) == 2 and all(i.startswith("id") for i in item["identity_ids"])
    assert item["attributes"][0]["skin_tone"] in ("light", "medium", "tan", "dark")
    assert "hair_color" in item["attributes"][0] and "split" not in item["attributes"][0]
    assert isinstance(item["caption"], str)


def test_person_positions_point_at_the_person_words_left_to_right(dataset_root: Path, tokenizer) -> None:
    ds = PairHumanDataset(dataset_root, tokenizer=tokenizer)
    for i in range(len(ds)):
        item = ds[i]
        ann = load_annotation(dataset_root / "annotations" / f"{i:06d}.json")
        words = [p.extra["person_word"] for p in ann.people]  # people are stored left, right
        toks = tokenizer.convert_ids_to_tokens(item["input_ids"][item["person_positions"]].tolist())
        assert toks == words
        b = item["boxes"]
        assert (b[0, 0] + b[0, 2]) < (b[1, 0] + b[1, 2])
        assert item["identity_ids"] == [p.identity_id for p in ann.people]


def test_reference_faces_come_from_faces_folder(dataset_root: Path) -> None:
    with_refs = PairHumanDataset(dataset_root, seed=1)
    without = PairHumanDataset(dataset_root, use_reference_faces=False)
    a, b = with_refs[0], without[0]
    assert torch.equal(b["reference_faces"], b["face_crops"])
    assert not torch.equal(a["reference_faces"], a["face_crops"])
    assert torch.equal(a["face_crops"], b["face_crops"])
    assert torch.equal(with_refs[0]["reference_faces"], PairHumanDataset(dataset_root, seed=1)[0]["reference_faces"])


def test_split_filter_resize_and_collate(dataset_root: Path, tokenizer) -> None:
    splits = {json.loads(p.read_text())["split"] for p in (dataset_root / "annotations").glob("*.json")}
    assert splits == {"train", "heldout"}
    train = PairHumanDataset(dataset_root, split="train")
    held = PairHumanDataset(dataset_root, split="heldout")
    assert len(train) + len(held) == 6 and len(held) >= 1
    small = PairHumanDataset(dataset_root, tokenizer=tokenizer, image_size=32, split="train")
    loader = torch.utils.data.DataLoader(small, batch_size=2, collate_fn=collate_fn)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["input_ids"].shape == (2, 77) and batch["person_positions"].shape == (2, 2)
    assert batch["reference_faces"].shape == (2, 2, 3, 112, 112)
    assert len(batch["identity_ids"]) == 2 and len(batch["caption"]) == 2
    full = PairHumanDataset(dataset_root, split="train")[0]["boxes"]
    assert torch.allclose(small[0]["boxes"], full, atol=1e-6)


def test_real_style_folder_without_identities(tmp_path: Path, tokenizer) -> None:
    """A real-data folder: no dataset.json/identities/faces, a long caption with word-index spans, non-square
    image; reference faces fall back to the crops."""
    from PIL import Image

    root = tmp_path / "real"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (96, 64), (120, 130, 140)).save(root / "images" / "a.jpg")
    filler = " ".join(["filler words here."] * 15)
    sent = "a woman in a red dress and a man in a black suit standing side by side in a garden."
    kps = [[30 + i, 20 + i, 1.0] for i in range(17)]
    obj = {
        "Information": {"height": 64, "width": 96},
        "image_caption": {"text": f"{filler} {sent}",
                          "match_info": [{"sentence_ID": 3, "sentence": sent, "person_info": [
                              {"words": "man", "start_idx": 8, "end_idx": 8},
                              {"words": "woman", "start_idx": 1, "end_idx": 1}]}]},
        "people": [
            {"unique_coordinate": [50, 2, 90, 64], "keypoints": kps},  # right person listed first
            {"unique_coordinate": [4, 4, 45, 64]},
        ],
    }
    (root / "annotations" / "a.json").write_text(json.dumps(obj))
    ds = PairHumanDataset(root, tokenizer=tokenizer, image_size=48)
    with pytest.warns(UserWarning):
        item = ds[0]
    assert item["pixel_values"].shape == (3, 48, 48)
    toks = tokenizer.convert_ids_to_tokens(item["input_ids"][item["person_positions"]].tolist())
    assert toks == ["woman", "man"]  # left person first
    assert torch.equal(item["reference_faces"], item["face_crops"])
    assert item["identity_ids"] == ["", ""]

"""Prompt tokenisation and person-word positions (BOS = index 0)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import write_tokenizer

from dhumandiff.errors import BundleError, PromptError
from dhumandiff.runtimes.tokenizer import PromptTokenizer, find_person_words


@pytest.fixture()
def tok(tmp_path: Path) -> PromptTokenizer:
    spec = write_tokenizer(tmp_path / "tokenizer.json")
    return PromptTokenizer(tmp_path / "tokenizer.json", spec["max_length"], spec["pad_token_id"],
                           spec["bos_token_id"], spec["eos_token_id"])


def test_encode_layout(tok: PromptTokenizer) -> None:
    ids, offsets = tok.encode("A photo of a man")
    assert ids.shape == (1, 77) and ids.dtype == np.int64
    row = ids[0].tolist()
    assert row[0] == 1 and row[6] == 2 and row[7:] == [0] * 70
    assert len(set(row[1:6])) == 4  # a, photo, of, (a), man
    assert offsets[5] == (13, 16) and offsets[0] == (0, 0)


def test_empty_prompt_encodes_to_bos_eos(tok: PromptTokenizer) -> None:
    ids, _ = tok.encode("")
    assert ids[0, :3].tolist() == [1, 2, 0]


def test_long_prompt_is_truncated_with_a_warning(tok: PromptTokenizer) -> None:
    prompt = " ".join(["photo"] * 100) + " man"
    with pytest.warns(UserWarning, match=r"prompt is 101 tokens; only the first 75 are used"):
        ids, _ = tok.encode(prompt)
    assert ids.shape == (1, 77) and ids[0, -1] == 2 and ids[0, 0] == 1


def test_person_positions_default_words(tok: PromptTokenizer) -> None:
    assert tok.find_person_positions("a photo of a man and a woman at the beach") == [5, 8]
    assert tok.find_person_positions("A Bride, and her groom!") == [2, 6]


def test_person_positions_given_words(tok: PromptTokenizer) -> None:
    prompt = "a woman and a man"
    assert tok.find_person_positions(prompt) == [2, 5]  # prompt order
    assert tok.find_person_positions(prompt, ("man", "woman")) == [5, 2]  # face order
    assert tok.find_person_positions("a friend and a friend", ("friend", "friend")) == [2, 5]


def test_person_word_must_be_whole_word(tok: PromptTokenizer) -> None:
    # "woman" must not match inside "womanhood"-like tokens, "man" not inside "woman"
    assert find_person_words("a woman and a man")[0] == ("woman", (2, 7))
    with pytest.raises(PromptError, match=r"does not contain the person word 'man'"):
        tok.find_person_positions("a woman and a girl", ("man", "girl"))


@pytest.mark.parametrize(
    "prompt,words,pattern",
    [
        ("", None, r"the prompt is empty"),
        ("   ", None, r"the prompt is empty"),
        ("a photo at the beach", None, r"must name both people .*--person-words"),
        ("a man at the beach", None, r"must name both people"),
        ("a man and a woman", ("man", "groom"), r"does not contain the person word 'groom'; add it"),
        ("a friend at the park", ("friend", "friend"), r"must use 'friend' twice.*\(found 1\)"),
        ("a man and a woman", ("man",), r"give exactly two person words"),
    ],
)
def test_prompt_refusals(tok: PromptTokenizer, prompt: str, words: tuple | None, pattern: str) -> None:
    with pytest.raises(PromptError, match=pattern) as e:
        tok.find_person_positions(prompt, words)
    assert "\n" not in str(e.value)


def test_person_word_beyond_the_window(tok: PromptTokenizer) -> None:
    prompt = "a man " + " ".join(["photo"] * 90) + " and a woman"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # positions never warn; encode() does
        with pytest.raises(PromptError, match=r"'woman' falls outside the first 75 tokens"):
            tok.find_person_positions(prompt)


def test_prompt_length_is_bounded(tok: PromptTokenizer) -> None:
    """Tokenising costs time in proportion to the prompt: one of megabytes is refused before it is tokenised."""
    prompt = "a man and a woman " + "on the beach " * 100_000
    with pytest.raises(PromptError, match=r"prompt is 1300018 characters long; .*at most 10000 characters"):
        tok.find_person_positions(prompt)
    with pytest.raises(PromptError, match=r"at most 10000 characters"):
        tok.encode(prompt)  # the negative prompt takes this door


def test_unreadable_tokenizer_is_a_bundle_error(tmp_path: Path) -> None:
    f = tmp_path / "tokenizer.json"
    f.write_text("{}")
    with pytest.raises(BundleError, match=r"cannot read tokenizer .*re-export"):
        PromptTokenizer(f)


def _word_level(path: Path, vocab: dict[str, int], unk: str = "<unk>") -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


@pytest.mark.parametrize(
    "vocab,pattern",
    [
        ({}, r"has an empty vocabulary"),
        ({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 4, "beach": 5}, r"knows none of the person words .*map "
                                                                            r"to its unknown token or to nothing"),
        ({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "man": 4}, r"knows only one of the person words"),
        ({"<pad>": 0, "<s>": 1, "a": 2, "man": 3, "woman": 4}, r"cannot encode the person word 'boy' \(WordLevel"),
        ({"<pad>": 0, "<unk>": 1}, r"has 2 tokens, fewer than its special token ids \{'eos': 2\} need"),
    ],
    ids=["empty", "person-words-unknown", "one-person-word", "unknown-token-missing", "specials-beyond-vocab"],
)
def test_unusable_tokenizer_is_refused_when_loaded(tmp_path: Path, vocab: dict, pattern: str) -> None:
    """A replaced tokenizer.json that parses but cannot serve the model: a BundleError when the bundle loads
    (exit 10, "unusable"), not a misleading "person word" refusal of every prompt later, nor a library crash."""
    f = _word_level(tmp_path / "tokenizer.json", vocab)
    with pytest.raises(BundleError, match=pattern) as e:
        PromptTokenizer(f, 77, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    assert "tokenizer file is unusable; copy the bundle again or re-export it" in str(e.value)


def test_tokenizer_with_person_words_loads(tmp_path: Path) -> None:
    f = _word_level(tmp_path / "tokenizer.json", {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "man": 4, "woman": 5})
    assert PromptTokenizer(f, 77, 0, 1, 2).find_person_positions("man woman") == [1, 2]


def test_padded_hf_tokenizer_json_matches_the_reference(tmp_path: Path) -> None:
    """The tiny backbone's tokenizer.json (padding/truncation/post-processor enabled, as saved by the model
    stage) gives the same ids as the transformers tokenizer and the same positions as the reference helper."""
    pytest.importorskip("transformers")
    from dhumandiff.model.tokenizer import build_word_tokenizer, tokenize
    from dhumandiff.utils.prompt import person_positions

    words = "a photo of man woman and bride groom friend at the beach wedding smiling".split()
    hf = build_word_tokenizer(words)
    hf.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    mine = PromptTokenizer(tmp_path / "tokenizer.json", 77, pad_token_id=hf.pad_token_id,
                           bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id)
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    prompts = [
        "a photo of a man and a woman at the beach",
        "A Bride, and her groom! smiling at the wedding",
        "a friend and a friend at the beach",
        "a man and a woman " + "smiling " * 80,
    ]
    for prompt in prompts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids, _ = mine.encode(prompt)
            ref_ids, ref_pos = person_positions(backend, prompt)
        np.testing.assert_array_equal(ids[0], tokenize(hf, [prompt])[0].numpy())
        np.testing.assert_array_equal(ids[0], ref_ids)
        assert mine.find_person_positions(prompt) == ref_pos.tolist(), prompt

"""Prompt -> token ids, and where each person's word sits among them.

Why not ``transformers``: it imports torch-adjacent machinery a runtime-only install does not have. The
``tokenizers`` library reads the same ``tokenizer.json`` and is what transformers' fast tokenizers wrap.

The layout of ``input_ids`` is placed here, not by the tokenizer file's post-processor, so it is the same for any
tokenizer the exporter ships: ``[BOS] + tokens[: max_length - 2] + [EOS] + [PAD] * rest`` (CLIP's layout with
``padding="max_length", truncation=True``). Positions returned by :meth:`PromptTokenizer.find_person_positions`
index that array, BOS included: they are what the text encoder's ``subject_positions`` input expects.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import numpy as np

from dhumandiff.errors import BundleError, PromptError
from dhumandiff.utils.prompt import PERSON_WORDS, check_prompt_length

#: Nouns that name one person, searched (in prompt order) when the caller gives no person words. The list is the
#: one the PyTorch reference uses (``dhumandiff.utils.prompt``), so both pick the same words.
DEFAULT_PERSON_WORDS: tuple[str, ...] = tuple(PERSON_WORDS)


@dataclass(frozen=True)
class Encoded:
    """``input_ids`` [1, max_length] int64 and, per id, the (start, end) character span in the prompt."""

    input_ids: np.ndarray
    offsets: list[tuple[int, int]]
    num_prompt_tokens: int
    truncated: bool


class PromptTokenizer:
    """A ``tokenizers`` JSON tokenizer with the special-token ids and window length from the bundle manifest."""

    def __init__(
        self,
        path: str | os.PathLike,
        max_length: int = 77,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
    ) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses with long messages
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BundleError(
                f"cannot read tokenizer {path} ({first}); copy the bundle again or re-export it"
            ) from None
        # a tokenizer.json saved from a Hugging Face tokenizer carries its own padding/truncation: this class
        # places BOS/EOS/padding itself, so the raw encoding must be the prompt's tokens only
        self._tok.no_padding()
        self._tok.no_truncation()
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self._check_usable(path)

    def _check_usable(self, path: str | os.PathLike) -> None:
        """Refuse, at load time, a tokenizer file that parses but cannot serve this model (a replaced or emptied
        ``tokenizer.json``): no vocabulary, special-token ids beyond it, or no person word it knows. Otherwise every
        prompt would later be blamed for lacking a person word, or fail inside the tokenizer library."""
        fix = "the bundle's tokenizer file is unusable; copy the bundle again or re-export it"
        size = self._tok.get_vocab_size(with_added_tokens=True)
        if size == 0:
            raise BundleError(f"tokenizer {path} has an empty vocabulary: {fix}")
        specials = {"pad": self.pad_token_id, "bos": self.bos_token_id, "eos": self.eos_token_id}
        outside = {k: v for k, v in specials.items() if not 0 <= int(v) < size}
        if outside:
            raise BundleError(f"tokenizer {path} has {size} tokens, fewer than its special token ids {outside} "
                              f"need: {fix}")
        unknown = _unknown_id(self._tok)
        known: set[int] = set()
        for word in DEFAULT_PERSON_WORDS:
            try:
                ids = self._tok.encode(word, add_special_tokens=False).ids
            except Exception as e:  # e.g. WordLevel whose unknown token is missing from its vocabulary
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise BundleError(f"tokenizer {path} cannot encode the person word {word!r} ({first[:120]}): "
                                  f"{fix}") from None
            if ids and unknown not in ids:
                known.add(ids[0])
        if len(known) < 2:
            raise BundleError(f"tokenizer {path} knows {'only one' if known else 'none'} of the person words "
                              f"({', '.join(DEFAULT_PERSON_WORDS[:4])}, ...): they map to its unknown token or to "
                              f"nothing, so no prompt can name two people: {fix}")

    @classmethod
    def from_spec(cls, path: str | os.PathLike, spec: object) -> "PromptTokenizer":
        """Build from a :class:`~dhumandiff.contract.bundle.TokenizerSpec` (``path`` already resolved)."""
        return cls(
            path,
            max_length=spec.max_length,  # type: ignore[attr-defined]
            pad_token_id=spec.pad_token_id,  # type: ignore[attr-defined]
            bos_token_id=spec.bos_token_id,  # type: ignore[attr-defined]
            eos_token_id=spec.eos_token_id,  # type: ignore[attr-defined]
        )

    def encode_full(self, prompt: str) -> Encoded:
        """Ids and character offsets; the empty prompt is allowed (it is the unconditional branch)."""
        check_prompt_length(prompt)
        enc = self._tok.encode(prompt, add_special_tokens=False)
        ids, offsets = list(enc.ids), [tuple(o) for o in enc.offsets]
        room = self.max_length - 2
        truncated = len(ids) > room
        if truncated:
            warnings.warn(
                f"prompt is {len(ids)} tokens; only the first {room} are used (the text encoder reads "
                f"{self.max_length} with BOS/EOS); shorten the prompt to keep every word",
                stacklevel=3,
            )
        n = min(len(ids), room)
        row = [self.bos_token_id, *ids[:n], self.eos_token_id]
        row += [self.pad_token_id] * (self.max_length - len(row))
        spans = [(0, 0), *offsets[:n], (len(prompt), len(prompt))]
        spans += [(len(prompt), len(prompt))] * (self.max_length - len(spans))
        return Encoded(np.asarray([row], dtype=np.int64), spans, n, truncated)  # type: ignore[arg-type]

    def encode(self, prompt: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """``(input_ids [1, max_length] int64, offsets)``; prompts over the window are truncated with a warning."""
        e = self.encode_full(prompt)
        return e.input_ids, e.offsets

    def find_person_positions(
        self, prompt: str, words: tuple[str, str] | list[str] | None = None
    ) -> list[int]:
        """Token index (BOS = 0) of person 1's word and person 2's word in the encoded prompt.

        ``words``: the two person words, in the order of the faces (face A, face B). When omitted, the first two
        words of the prompt found in :data:`DEFAULT_PERSON_WORDS` are used, in prompt order. With the same word
        twice (``("friend", "friend")``) its first and second occurrences are used. The first token of the word
        is returned (a word split into sub-word tokens points at its first piece).
        """
        if not prompt or not prompt.strip():
            raise PromptError("the prompt is empty; describe the scene and name both people, e.g. 'a man and a woman'")
        check_prompt_length(prompt)
        spans = find_person_words(prompt, words)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # encode() warns once for the caller; positions only need the spans
            enc = self.encode_full(prompt)
        positions: list[int] = []
        for word, (start, end) in spans:
            pos = _token_at(enc, start, end)
            if pos is None:
                raise PromptError(
                    f"the person word {word!r} falls outside the first {self.max_length - 2} tokens the text "
                    "encoder reads; shorten the prompt or move the people to its start"
                )
            positions.append(pos)
        return positions


def _unknown_id(tok) -> int | None:  # noqa: ANN001 - a tokenizers.Tokenizer
    """The id of the tokenizer model's unknown token (None when it has none, or it is not in the vocabulary)."""
    name = getattr(tok.model, "unk_token", None)
    if name is None and getattr(tok.model, "unk_id", None) is not None:  # Unigram names it by id
        return int(tok.model.unk_id)
    return tok.token_to_id(name) if isinstance(name, str) else None


def _token_at(enc: Encoded, start: int, end: int) -> int | None:
    for i in range(1, 1 + enc.num_prompt_tokens):
        s, e = enc.offsets[i]
        if s < end and e > start:
            return i
    return None


def _occurrences(prompt: str, word: str) -> list[tuple[int, int]]:
    """Whole-word matches; a word is a run of letters (as in the reference's ``dhumandiff.utils.prompt``)."""
    pattern = re.compile(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", re.IGNORECASE)
    return [(m.start(), m.end()) for m in pattern.finditer(prompt)]


def find_person_words(
    prompt: str, words: tuple[str, str] | list[str] | None = None
) -> list[tuple[str, tuple[int, int]]]:
    """Character spans of the two person words: ``[(word, (start, end)), (word, (start, end))]``."""
    if words is not None:
        words = [w.strip() for w in words]
        if len(words) != 2 or not all(words):
            raise PromptError(f"give exactly two person words, one per face (got {list(words)!r})")
        if words[0].lower() == words[1].lower():
            occ = _occurrences(prompt, words[0])
            if len(occ) < 2:
                raise PromptError(
                    f"the prompt must use {words[0]!r} twice, once per person (found {len(occ)}); "
                    "rephrase it, e.g. 'a friend and another friend'"
                )
            return [(words[0], occ[0]), (words[1], occ[1])]
        found = []
        for w in words:
            occ = _occurrences(prompt, w)
            if not occ:
                raise PromptError(
                    f"the prompt does not contain the person word {w!r}; add it to the prompt or pass other "
                    "--person-words"
                )
            found.append((w, occ[0]))
        return found
    hits: list[tuple[int, int, str]] = []
    for w in DEFAULT_PERSON_WORDS:
        hits += [(s, e, prompt[s:e]) for s, e in _occurrences(prompt, w)]
    hits.sort()
    if len(hits) < 2:
        raise PromptError(
            "the prompt must name both people with a person word each (e.g. 'a man and a woman', 'a bride and "
            "groom'); rephrase it or pass --person-words WORD1 WORD2"
        )
    return [(hits[0][2], hits[0][:2]), (hits[1][2], hits[1][:2])]

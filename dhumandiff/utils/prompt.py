"""Prompt handling shared by the torch reference and the torch-free runtimes.

Works on a ``tokenizers.Tokenizer`` (the fast backend of every Hugging Face tokenizer, and what bundles ship as
``tokenizer.json``), so both sides produce the same 77 token ids and the same person positions.
"""

from __future__ import annotations

import re
import warnings

import numpy as np

from ..errors import PromptError

MAX_LENGTH = 77
#: Longest prompt accepted, in characters: the text encoder reads 77 tokens (a few hundred characters), and
#: tokenising costs time in proportion to the length (a 10 MB prompt took ~20 s per pass).
MAX_PROMPT_CHARS = 10_000

# Nouns that name a person; the first two found in the prompt are person 1 and person 2, in order.
PERSON_WORDS = (
    "man", "woman", "boy", "girl", "bride", "groom", "mother", "father", "mom", "dad", "son", "daughter",
    "husband", "wife", "friend", "lady", "gentleman", "child", "kid", "baby", "grandmother", "grandfather",
    "grandma", "grandpa", "brother", "sister", "person", "partner", "teenager", "guy", "boyfriend", "girlfriend",
)


def check_prompt_length(prompt: str, what: str = "the prompt") -> None:
    """Refuse a prompt longer than :data:`MAX_PROMPT_CHARS` before it is tokenised (:class:`PromptError`)."""
    if isinstance(prompt, str) and len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError(f"{what} is {len(prompt)} characters long; the text encoder reads only its first "
                          f"{MAX_LENGTH} tokens (a few hundred characters): shorten it (at most {MAX_PROMPT_CHARS} "
                          "characters)")


def encode(tokenizer, prompt: str, max_length: int = MAX_LENGTH):
    """Token ids ``[max_length]`` (int64) and the encoding (for offsets). Truncates with a warning."""
    check_prompt_length(prompt)
    tokenizer.no_truncation()
    full = tokenizer.encode(prompt)
    n_real = sum(full.attention_mask) if full.attention_mask else len(full.ids)
    if n_real > max_length:
        warnings.warn(f"prompt is {n_real} tokens; only the first {max_length} are used (shorten it to keep "
                      f"every word)", stacklevel=2)
    tokenizer.enable_truncation(max_length=max_length)
    enc = tokenizer.encode(prompt)
    ids = list(enc.ids)[:max_length]
    if len(ids) < max_length:
        pad = tokenizer.padding["pad_id"] if tokenizer.padding else ids[-1]
        ids = ids + [pad] * (max_length - len(ids))
    return np.asarray(ids, dtype=np.int64), enc


def _used_words(found: list[tuple[str, int] | None]) -> set[str]:
    return {h[0] for h in found if h is not None}


def person_positions(tokenizer, prompt: str, person_words: tuple[str, str] | None = None,
                     max_length: int = MAX_LENGTH, require: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids [77], positions [2])``: the token index of each person's word (-1 when absent).

    With ``person_words`` the caller names the two words; otherwise the first two person nouns of the prompt
    (see ``PERSON_WORDS``) are used. ``require`` turns a missing word into a one-line PromptError.
    """
    if not prompt or not prompt.strip():
        raise PromptError("the prompt is empty: describe the scene and name both people, e.g. "
                          "'a man and a woman on the beach'")
    check_prompt_length(prompt)
    ids, enc = encode(tokenizer, prompt, max_length)
    words = [(m.group(0).lower(), m.start()) for m in re.finditer(r"[A-Za-z]+", prompt)]
    if person_words is not None:
        wanted = [str(w).strip().lower() for w in person_words]
        if len(wanted) != 2 or not all(wanted):
            raise PromptError(f"give exactly two person words, one per face (got {list(person_words)!r})")
        found: list[tuple[str, int] | None] = []
        used: set[int] = set()
        for w in wanted:
            hit = next(((word, s) for word, s in words if word == w and s not in used), None)
            if hit:
                used.add(hit[1])
            elif require and w in _used_words(found):
                raise PromptError(f"the prompt must use {w!r} twice, once per person; rephrase it, e.g. "
                                  f"'a {w} and another {w}'")
            elif require:
                raise PromptError(f"the prompt does not contain the person word {w!r}; add it to the prompt or "
                                  f"pass other --person-words")
            found.append(hit)
    else:
        hits = [(w, s) for w, s in words if w in PERSON_WORDS]
        found = (hits + [None, None])[:2]
    positions = np.full(2, -1, dtype=np.int64)
    for k, hit in enumerate(found):
        if hit is None:
            continue
        start = hit[1]
        for ti, (a, b) in enumerate(enc.offsets):
            if a <= start < b and ti < max_length and enc.special_tokens_mask[ti] == 0:
                positions[k] = ti
                break
    if require and (positions < 0).any():
        cut = [h[0] for k, h in enumerate(found) if h is not None and positions[k] < 0]
        if cut:
            raise PromptError(f"the person word {cut[0]!r} falls outside the first {max_length} tokens the text "
                              f"encoder reads; shorten the prompt or move the people to its start")
        got = [h[0] for h in found if h is not None]
        raise PromptError(f"the prompt must name both people (e.g. 'a man and a woman ...'); found "
                          f"{got or 'no person word'} — add a word such as {', '.join(PERSON_WORDS[:6])} "
                          f"for each person, or pass --person-words")
    return ids, positions

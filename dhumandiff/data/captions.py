"""Captions: the synthetic caption grammar, person-word spans, 77-token windows and person token positions.

Two jobs meet here. The synthetic world needs captions that name each person by a *unique* noun (so the model
can route each identity to its word, like DHumanDiff's ``person_idx1``/``person_idx2``) and say nothing about
faces (identity must come from the reference photo, not the text). Real PairHuman captions are long (often
over CLIP's 77 tokens), so they are cut to a window that keeps both person words, and the words are located
as token indices through a fast tokenizer's offset mapping.

Torch-free: tokenizers are duck-typed Hugging Face fast tokenizers (``tokenizer(text,
return_offsets_mapping=True)``); ``tokenizer=None`` falls back to a word/punctuation count.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Sequence

import numpy as np

from dhumandiff.data.schema import Annotation, MatchInfo, PersonSpan
from dhumandiff.data.world import (
    ACTIONS, CLOTHES_COLORS, CLOTHES_TYPES, SETTINGS, SceneSpec, make_identities, sample_scene_spec,
)

CLIP_MAX_LENGTH = 77

Span = tuple[int, int]

# --------------------------------------------------------------------------------------------------------------
# Synthetic caption grammar
# --------------------------------------------------------------------------------------------------------------

PREFIXES = ("", "a photo of ", "a portrait of ", "a picture of ")
#: Every noun a person can be called; each caption uses two different ones (see world._person_words).
PERSON_WORDS = ("man", "woman", "husband", "wife", "boyfriend", "girlfriend", "groom", "bride", "lady", "friend",
                "father", "mother", "dad", "mom", "son", "daughter", "boy", "girl")
# Second persons named by a relation get a possessive ("a groom ... and his bride"), others "a".
_RELATION_WORDS = frozenset(PERSON_WORDS) - {"man", "woman", "lady", "boy", "girl"}
SETTING_PHRASES: dict[str, tuple[str, ...]] = {
    "beach": ("on a beach", "on the beach"),
    "garden": ("in a garden", "in the garden"),
    "city": ("in the city", "on a city street"),
    "chapel": ("in a chapel", "in the chapel"),
}
SECOND_SENTENCES: dict[str, tuple[str, ...]] = {
    "beach": ("the sea is calm behind them.", "the sky is clear and blue."),
    "garden": ("flowers bloom behind them.", "green hedges surround them."),
    "city": ("tall buildings rise behind them.",),
    "chapel": ("a pink arch frames them.",),
    "*": ("both of them are smiling.",),
}
_FIXED_WORDS = ("a", "and", "in", "his", "her", ".")


def build_caption(spec: SceneSpec, rng: np.random.Generator) -> tuple[str, list[MatchInfo]]:
    """Caption a scene: left person first, then right; returns the text and its ``match_info``.

    Spans are character offsets (end exclusive) into the sentence, and each ``person_info`` entry carries
    ``object_id`` (1 = left, 2 = right), matching ``people[i].object_id`` of the annotation.
    """
    left, right = spec.persons
    prefix = PREFIXES[int(rng.integers(len(PREFIXES)))]
    second_article = ({"male": "his", "female": "her"}[left.identity.gender]
                      if right.word in _RELATION_WORDS else "a")
    parts: list[str] = [prefix, "a "]
    spans: list[Span] = []

    def person(p: Any) -> None:
        start = sum(len(x) for x in parts)
        parts.append(p.word)
        spans.append((start, start + len(p.word)))
        parts.append(f" in a {p.clothes_color} {p.clothes_type}")

    person(left)
    parts.append(f" and {second_article} ")
    person(right)
    phrases = SETTING_PHRASES[spec.setting]
    parts.append(f" {spec.action} {phrases[int(rng.integers(len(phrases)))]}.")
    sentence = "".join(parts)
    info = [PersonSpan(p.word, a, b, {"object_id": i + 1}) for i, (p, (a, b)) in enumerate(zip(spec.persons, spans))]
    matches = [MatchInfo(sentence=sentence, person_info=info, sentence_id=0)]
    text = sentence
    if rng.random() < 0.5:
        pool = SECOND_SENTENCES[spec.setting] + SECOND_SENTENCES["*"]
        second = pool[int(rng.integers(len(pool)))]
        text = f"{sentence} {second}"
        matches.append(MatchInfo(sentence=second, person_info=[], sentence_id=1))
    return text, matches


def world_vocabulary() -> list[str]:
    """Every word (and the full stop) the synthetic grammar can produce, sorted; for training a tokenizer.

    Words are split on whitespace with the trailing full stop separated; hyphenated words ("t-shirt") stay whole.
    """
    pieces: list[str] = list(PREFIXES) + list(PERSON_WORDS) + list(CLOTHES_COLORS) + list(CLOTHES_TYPES)
    pieces += list(ACTIONS) + [p for ps in SETTING_PHRASES.values() for p in ps]
    pieces += [s for ss in SECOND_SENTENCES.values() for s in ss] + list(_FIXED_WORDS)
    words: set[str] = set()
    for piece in pieces:
        for w in piece.split():
            if w.endswith(".") and len(w) > 1:
                words.update((w[:-1], "."))
            else:
                words.add(w)
    return sorted(words)


def caption_corpus(n: int, seed: int) -> list[str]:
    """``n`` sample captions of the synthetic grammar (e.g. to train or test a tokenizer)."""
    rng = np.random.default_rng([int(seed), 0xCA])
    ids = make_identities(16, seed)
    return [build_caption(sample_scene_spec(ids, rng, setting=SETTINGS[i % len(SETTINGS)]), rng)[0] for i in range(n)]


# --------------------------------------------------------------------------------------------------------------
# Person spans in an annotation's caption
# --------------------------------------------------------------------------------------------------------------


def _locate_sentences(text: str, sentences: Sequence[str]) -> list[Span | None]:
    """Character range of each sentence in ``text`` (searched in order, then anywhere, then ignoring case)."""
    out: list[Span | None] = []
    cursor = 0
    low = text.lower()
    for s in sentences:
        if not s:
            out.append(None)
            continue
        i = text.find(s, cursor)
        if i < 0:
            i = text.find(s)
        if i < 0:
            i = low.find(s.lower())
        if i < 0:
            out.append(None)
            continue
        out.append((i, i + len(s)))
        cursor = i + len(s)
    return out


def caption_person_spans(ann: Annotation) -> list[Span | None]:
    """Character span of each person's words in ``ann.image_caption.text``, one per ``ann.people`` entry.

    ``person_info`` entries are matched to people by ``object_id`` when they carry one (synthetic data);
    otherwise by position, taking the first sentence that mentions as many persons as there are people, or
    failing that entry ``i`` of the first sentence with more than ``i`` entries. ``None`` where a person's
    words cannot be found. Raises AnnotationError when a span's indices do not match its words.
    """
    from dhumandiff.data.schema import resolve_person_span

    cap = ann.image_caption
    located = _locate_sentences(cap.text, [m.sentence for m in cap.match_info])
    resolved: list[list[Span | None]] = []
    for mi, (m, loc) in enumerate(zip(cap.match_info, located)):
        row: list[Span | None] = []
        for pi, pinfo in enumerate(m.person_info):
            if loc is None:
                row.append(None)
                continue
            a, b = resolve_person_span(m.sentence, pinfo, ann.source,
                                       f"image_caption.match_info[{mi}].person_info[{pi}]")
            row.append((loc[0] + a, loc[0] + b))
        resolved.append(row)
    n = len(ann.people)
    out: list[Span | None] = [None] * n
    by_id = {p.object_id: i for i, p in enumerate(ann.people) if p.object_id is not None}
    for m, row in zip(cap.match_info, resolved):
        for pinfo, span in zip(m.person_info, row):
            oid = pinfo.extra.get("object_id")
            if oid in by_id and out[by_id[oid]] is None and span is not None:
                out[by_id[oid]] = span
    if any(s is not None for s in out):
        return out
    full = next((row for row in resolved if len(row) == n and all(s is not None for s in row)), None)
    if full is not None:
        return list(full)
    for i in range(n):
        out[i] = next((row[i] for row in resolved if len(row) > i and row[i] is not None), None)
    return out


# --------------------------------------------------------------------------------------------------------------
# Token windows and positions
# --------------------------------------------------------------------------------------------------------------

_APPROX_TOKENS = re.compile(r"\w+|[^\w\s]")
_SENTENCE_SPLIT = re.compile(r"[^.!?]*(?:[.!?]+|$)")


def model_max_length(tokenizer: Any, default: int = CLIP_MAX_LENGTH) -> int:
    """The tokenizer's context length, or ``default`` when it is unset (HF uses a huge sentinel)."""
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n <= 4096 else default


def _content_offsets(tokenizer: Any, text: str) -> tuple[list[Span], int]:
    """(character offsets of the non-special tokens, number of special tokens added)."""
    if tokenizer is None:
        offs = [(m.start(), m.end()) for m in _APPROX_TOKENS.finditer(text)]
        return offs, 2
    enc = tokenizer(text, truncation=False, return_offsets_mapping=True, verbose=False)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    content = [(int(a), int(b)) for a, b in offsets if b > a]
    return content, len(offsets) - len(content)


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` including BOS/EOS (approximate word/punctuation count without a tokenizer)."""
    offs, special = _content_offsets(tokenizer, text)
    return len(offs) + special


def _segments(text: str, sentences: Sequence[str] | None) -> list[Span]:
    """Sentence ranges covering ``text``: the given (match_info) sentences where found, regex splits elsewhere."""
    fixed = sorted(s for s in _locate_sentences(text, sentences or []) if s is not None)
    ranges: list[Span] = []
    cursor = 0
    for a, b in fixed:
        if a < cursor:
            continue
        ranges += _regex_segments(text, cursor, a)
        ranges.append((a, b))
        cursor = b
    ranges += _regex_segments(text, cursor, len(text))
    return ranges


def _regex_segments(text: str, a: int, b: int) -> list[Span]:
    out = []
    for m in _SENTENCE_SPLIT.finditer(text, a, b):
        s, e = m.start(), m.end()
        while s < e and text[s].isspace():
            s += 1
        if e > s:
            out.append((s, e))
    return out


def _cut(text: str, spans: Sequence[Span | None], a: int, b: int) -> tuple[str, list[Span | None]]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    new = [(s - a, e - a) if s is not None and a <= s and e <= b else None
           for s, e in ((sp if sp is not None else (None, None)) for sp in spans)]
    return text[a:b], new  # type: ignore[return-value]


def fit_caption_window(
    text: str,
    char_spans: Sequence[Span | None],
    tokenizer: Any = None,
    sentences: Sequence[str] | None = None,
    max_length: int | None = None,
) -> tuple[str, list[Span | None]]:
    """Cut a caption that does not fit the text encoder to a window that keeps the person words.

    Returns ``(window_text, spans_in_window)``. Captions that fit are returned unchanged. Otherwise the
    window is made of whole sentences: the smallest run of sentences containing every person word, grown
    by neighbouring sentences (following first) while it fits; if even that run is too long, a token window
    centred on the person words. A span that cannot stay in the window becomes ``None``. Emits a
    ``UserWarning`` whenever it truncates, since the model then sees less than the caption says.
    """
    limit = max_length or model_max_length(tokenizer)
    total = count_tokens(tokenizer, text)
    if total <= limit:
        return text, list(char_spans)
    segs = _segments(text, sentences)
    wanted = [s for s in char_spans if s is not None]
    seg_of = [next((i for i, (a, b) in enumerate(segs) if a <= s < b), None) for s, _ in wanted]
    fits = lambda a, b: count_tokens(tokenizer, text[a:b].strip()) <= limit  # noqa: E731
    if segs and all(i is not None for i in seg_of):
        lo = min(seg_of) if seg_of else 0  # type: ignore[type-var]
        hi = max(seg_of) if seg_of else 0  # type: ignore[type-var]
        if fits(segs[lo][0], segs[hi][1]):
            grew = True
            while grew:
                grew = False
                if hi + 1 < len(segs) and fits(segs[lo][0], segs[hi + 1][1]):
                    hi += 1
                    grew = True
                if lo > 0 and fits(segs[lo - 1][0], segs[hi][1]):
                    lo -= 1
                    grew = True
            out = _cut(text, char_spans, segs[lo][0], segs[hi][1])
            _warn(total, limit, f"kept sentences {lo}..{hi} of {len(segs)}", out[1], char_spans)
            return out
    # token window centred on the person words
    offs, special = _content_offsets(tokenizer, text)
    width = limit - special
    toks = [i for i, (a, b) in enumerate(offs) for s in wanted if a < s[1] and b > s[0]]
    centre = (min(toks) + max(toks)) / 2 if toks else 0.0
    while width > 0:
        start = int(round(centre - width / 2))
        start = max(0, min(start, len(offs) - width))
        a, b = offs[start][0], offs[min(len(offs), start + width) - 1][1]
        if fits(a, b):
            out = _cut(text, char_spans, a, b)
            _warn(total, limit, "kept a token window around the person words", out[1], char_spans)
            return out
        width -= 1
    out = ("", [None] * len(char_spans))
    _warn(total, limit, "nothing fits", out[1], char_spans)
    return out


def _warn(total: int, limit: int, how: str, new: Sequence[Span | None], old: Sequence[Span | None]) -> None:
    lost = sum(1 for a, b in zip(old, new) if a is not None and b is None)
    msg = f"caption of {total} tokens exceeds the {limit}-token limit; {how}"
    if lost:
        msg += f"; {lost} person word(s) fell outside the window"
    warnings.warn(msg, UserWarning, stacklevel=3)


def person_token_positions(
    tokenizer: Any, text: str, char_spans: Sequence[Span | None], max_length: int | None = None
) -> list[int]:
    """Index of each person's word in the padded ``input_ids`` (BOS is index 0), or -1 if absent/truncated.

    Uses the fast tokenizer's offset mapping, so it works for any tokenizer that splits words into pieces;
    for a multi-piece word the *last* piece is used, because in CLIP's causal text encoder it is the first
    position that has seen the whole word (the position Path B augments with the face token).
    """
    length = max_length or model_max_length(tokenizer)
    enc = tokenizer(text, padding="max_length", truncation=True, max_length=length, return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    out = []
    for span in char_spans:
        if span is None:
            out.append(-1)
            continue
        s, e = span
        hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
        out.append(hits[-1] if hits else -1)
    return out

"""Tokenizers: the tiny world's word-level CLIP-format tokenizer, and loading real CLIP tokenizers.

No tokenizer can be downloaded here, so the `tiny` backbone ships its own: one token per word of the synthetic
world's vocabulary (lower-cased, punctuation split off), wrapped as a ``PreTrainedTokenizerFast`` with CLIP's
conventions (``<|startoftext|>`` ... ``<|endoftext|>``, padded with the end token to 77). Its ``tokenizer.json``
is what the torch-free runtimes read with the ``tokenizers`` library, so both sides tokenise identically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..errors import CheckpointError

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_LENGTH = 77
PUNCTUATION = [",", ".", "!", "?", ";", ":", "'", "-", "(", ")", '"']


def build_word_tokenizer(words: Iterable[str], max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` with CLIP's special tokens and 77-token padding."""
    vocab: dict[str, int] = {BOS: 0, EOS: 1, UNK: 2}
    for w in list(PUNCTUATION) + sorted({w.lower() for w in words}):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = TemplateProcessing(single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(length=max_length, pad_id=1, pad_token=EOS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   pad_token=EOS, model_max_length=max_length)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer folder saved by ``save_pretrained`` (ours, or SDXL/SD1.5's CLIP tokenizers), offline."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"tokenizer folder {path} not found: the model folder is incomplete; re-export or "
                              f"re-download it")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_length: int = MAX_LENGTH):
    """Token ids ``[B, 77]`` (torch) padded and truncated the CLIP way."""
    return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="pt").input_ids

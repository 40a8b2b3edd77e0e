"""Subject-augmented text encoding (FastComposer style), shared by training, sampling and export.

The face token of each person is fused into the embedding of that person's noun (``man``, ``woman``...) by the
subject MLP *before* the CLIP text transformer runs, so the text encoder is called from input embeddings. The
fusion uses a one-hot scatter (no in-place indexing) so the same module exports to ONNX / OpenVINO / Core ML.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_attn_mask_utils import _create_4d_causal_attention_mask

from .projections import SubjectMLP


class SubjectTextEncoder(nn.Module):
    """``(input_ids [B,77], face_tokens [B,2,F], subject_positions [B,2]) -> prompt_embeds [B,77,D]``.

    ``subject_positions`` holds the token index of each person's word; ``-1`` disables fusion for that person
    (the unconditional branch, or a prompt without that person).
    """

    def __init__(self, text_encoder: nn.Module, subject_mlp: SubjectMLP | None, hidden_index: int = -1) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.subject_mlp = subject_mlp
        self.hidden_index = hidden_index

    def forward(self, input_ids: torch.Tensor, face_tokens: torch.Tensor | None = None,
                subject_positions: torch.Tensor | None = None, hidden_index: int | None = None) -> torch.Tensor:
        """``hidden_index`` (-1: last layer after the final LayerNorm, -2: penultimate) overrides the encoder's own;
        the official recipe reads -1 for the fused prompt and -2 for the negative one."""
        hidden_index = self.hidden_index if hidden_index is None else hidden_index
        return self.layers(input_ids, face_tokens, subject_positions, (hidden_index,))[0]

    def layers(self, input_ids: torch.Tensor, face_tokens: torch.Tensor | None,
               subject_positions: torch.Tensor | None, indices: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """The hidden states ``indices`` of one encoder pass (so a two-layer recipe's graph runs it once)."""
        tm = self.text_encoder.text_model
        embeds = tm.embeddings.token_embedding(input_ids)
        if self.subject_mlp is not None and face_tokens is not None and subject_positions is not None:
            seq = input_ids.shape[1]
            ar = torch.arange(seq, device=input_ids.device).view(1, seq, 1)
            onehot = (ar == subject_positions.unsqueeze(1)).to(embeds.dtype)  # [B, S, P]
            words = onehot.transpose(1, 2) @ embeds  # [B, P, D]: each person's word embedding
            fused = self.subject_mlp(words, face_tokens)  # [B, P, D]
            keep = 1.0 - onehot.sum(dim=-1, keepdim=True).clamp(max=1.0)
            embeds = embeds * keep + onehot @ fused
        hidden = tm.embeddings(inputs_embeds=embeds)
        mask = _create_4d_causal_attention_mask(input_ids.shape, hidden.dtype, device=hidden.device)
        enc = tm.encoder(inputs_embeds=hidden, causal_attention_mask=mask, output_hidden_states=True)
        return tuple(tm.final_layer_norm(enc.last_hidden_state) if i == -1 else enc.hidden_states[i]
                     for i in indices)


class PlainTextEncoder(nn.Module):
    """SDXL's second encoder (OpenCLIP bigG): penultimate hidden states + pooled projection, no fusion."""

    def __init__(self, text_encoder: nn.Module, hidden_index: int = -2) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.hidden_index = hidden_index

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.text_encoder(input_ids, output_hidden_states=True)
        return out.hidden_states[self.hidden_index], out.text_embeds

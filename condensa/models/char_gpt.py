"""``char_gpt``: a small decoder-only transformer in today's common layout.

A ``transformers.LlamaForCausalLM`` (RMSNorm, rotary positions, SwiGLU MLP, q/k/v/o projections
with optional grouped KV heads) built from a ``LlamaConfig`` over the character vocabulary of
:mod:`condensa.data.text`; nothing is downloaded. Defaults: 4 layers, 4 heads of 32, width 128,
MLP 512, context 64 (1.07M parameters). It returns a ``CausalLMOutputWithPast`` whose ``logits``
are ``[batch, positions, vocab]``: condensa reads them with :func:`condensa.outputs.logits_of`
and scores every position.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..data.text import VOCAB
from ..extras import require

DEFAULTS: dict[str, Any] = {
    "vocab_size": len(VOCAB),
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "use_cache": False,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}


def char_gpt_config(**overrides: Any):
    require("transformers")
    from transformers import LlamaConfig

    unknown = set(overrides) - set(DEFAULTS) - {"head_dim", "attention_dropout", "rope_theta", "initializer_range",
                                                "attn_implementation"}
    if unknown:
        raise TypeError(f"char_gpt: unknown argument(s) {sorted(unknown)}; allowed: {sorted(DEFAULTS)} and head_dim")
    kwargs = {**DEFAULTS, **overrides}
    attn = kwargs.pop("attn_implementation", "sdpa")
    config = LlamaConfig(**kwargs)
    config._attn_implementation = attn
    return config


def char_gpt(**overrides: Any) -> nn.Module:
    """A fresh (randomly initialized) char_gpt; keyword arguments override ``LlamaConfig`` fields."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(char_gpt_config(**overrides))

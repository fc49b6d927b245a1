"""Tiny random Hugging Face models built from configs (nothing downloaded), for the LM tests."""

from __future__ import annotations

import torch

VOCAB = 48


def _randomize_norms(model: torch.nn.Module) -> None:
    """Fresh norms are weight 1 / bias 0; randomize so masking mistakes change outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or "ln_" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + (0.75 if p.dim() == 1 and "bias" not in name else -0.25))


def tiny_llama(seed: int = 0, kv_heads: int = 2, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=8, max_position_embeddings=32,
                    use_cache=False, tie_word_embeddings=False, attention_bias=True, initializer_range=0.2,
                    bos_token_id=None, eos_token_id=None, pad_token_id=None)
    config = LlamaConfig(**{**settings, **overrides})
    model = LlamaForCausalLM(config).eval()
    _randomize_norms(model)
    return model


def tiny_gpt2(seed: int = 0, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    settings = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, use_cache=False,
                    initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    config = GPT2Config(**{**settings, **overrides})
    model = GPT2LMHeadModel(config).eval()
    _randomize_norms(model)
    return model


def tiny_bert(seed: int = 0, num_labels: int = 3, **overrides):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    settings = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=32, num_labels=num_labels, initializer_range=0.2,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = BertConfig(**{**settings, **overrides})
    model = BertForSequenceClassification(config).eval()
    _randomize_norms(model)
    return model


def tokens(batch: int = 3, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))

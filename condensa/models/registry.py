"""Resolve a model spec to a fresh ``nn.Module``.

A spec is a registered name (``digits_cnn``, ``digits_mlp``, ``char_lstm``, ``char_gpt``), ``hf:PATH`` (a local
Hugging Face folder, :mod:`.hf`), a torchvision model name (``resnet18``; random init, weights are never
downloaded), ``package.module:function``, or ``path/to/file.py:function``. Factories take keyword arguments
from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ModelError
from ..loading import is_file_spec, load_callable
from .digits import DigitsCNN, DigitsMLP
from .hf import is_hf_spec, load_hf
from .text import CharLSTM

REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        REGISTRY[name] = factory
        return factory

    return wrap


@register("digits_cnn")
def _digits_cnn(**kwargs: Any) -> nn.Module:
    return DigitsCNN(**kwargs)


@register("digits_mlp")
def _digits_mlp(**kwargs: Any) -> nn.Module:
    return DigitsMLP(**kwargs)


@register("char_lstm")
def _char_lstm(**kwargs: Any) -> nn.Module:
    return CharLSTM(**kwargs)


@register("char_gpt")
def _char_gpt(**kwargs: Any) -> nn.Module:
    from .char_gpt import char_gpt  # imports transformers: only when asked for

    return char_gpt(**kwargs)


def resolve_factory(spec: str | Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The factory callable behind a spec (raises :class:`ModelError` naming the spec)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ModelError(f"model.name: must be a non-empty string, got {spec!r}")
    if spec in REGISTRY:
        return REGISTRY[spec]
    if is_hf_spec(spec):  # before module:function: 'hf:PATH' names data (a folder), never code to import
        return lambda **kwargs: load_hf(spec, **kwargs)
    if ":" in spec or is_file_spec(spec):
        return load_callable(spec, "model.name", error=ModelError)
    import torchvision  # 2 s of start-up that only torchvision model names need

    if spec in torchvision.models.list_models():
        return lambda **kwargs: torchvision.models.get_model(spec, weights=None, **kwargs)
    raise ModelError(
        f"model.name: unknown model '{spec}'; use one of {sorted(REGISTRY)}, 'hf:PATH', a torchvision model name, "
        "'package.module:function' or 'path/to/file.py:function'"
    )


def build_model(spec: str | Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    factory = resolve_factory(spec)
    try:
        model = factory(**kwargs)
    except Exception as error:  # noqa: BLE001 - a user factory can raise anything; report it in one line
        if isinstance(error, ModelError) and is_hf_spec(spec):  # load_hf's errors already name model.name
            raise
        raise ModelError(f"model.name: factory '{spec}' raised {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.name: factory '{spec}' returned {type(model).__name__}, not an nn.Module")
    return model

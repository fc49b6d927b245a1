"""YAML configs parsed into dataclasses.

Every section is a dataclass; unknown keys and wrong types raise a one-line
:class:`~condensa.errors.ConfigError` naming the key path and what is allowed. ``--set a.b=v``
overrides are applied to the raw mapping before validation, so they get the same checks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.digits import TEST_FRACTION as DIGITS_TEST_FRACTION
from .data.loaders import DATA_SETS, VISION_DATA_SETS
from .device import DEVICES
from .errors import ConfigError
from .recovery.config import check_training
from .schema import from_dict
from .search import check_settings

#: deepest nesting a config value may have (YAML and JSON readers recurse)
MAX_DEPTH = 64
#: the safe loader, in C when PyYAML has LibYAML (the Python scanner takes seconds on pathological input)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: seeds go to torch, numpy and scikit-learn; the last accepts [0, 2**32 - 1]
MAX_SEED = 2**32 - 1


@dataclass
class TrainSection:
    """How the reference model is trained when no checkpoint is given."""

    epochs: int = 30
    lr: float = 3e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 64


@dataclass
class ModelConfig:
    name: str = "digits_cnn"
    kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    train: TrainSection = field(default_factory=TrainSection)


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    batch_size: int = 64
    split_seed: int = 0
    image_size: int | None = None
    val_fraction: float = 0.2
    limit: int | None = None
    seq_len: int = 64
    tokenizer: str | None = None


@dataclass
class StrategyConfig:
    scheme: str | None = None
    args: dict = field(default_factory=dict)
    ops: list | None = None


@dataclass
class ConstraintConfig:
    metric: str = "accuracy_drop"
    upper: float = 1.0


@dataclass
class SearchConfig:
    objective: str = "footprint"
    direction: str = "minimize"
    constraints: list = field(default_factory=lambda: [{"metric": "accuracy_drop", "upper": 1.0}])
    budget: int = 10
    method: str = "bo"
    eval_epochs: int | None = None
    n_init: int | None = None
    recommend: str = "model"
    workers: int = 1
    ray_address: str | None = None
    resources_per_evaluation: dict = field(default_factory=lambda: {"cpu": 1})
    ranks_per_evaluation: int = 1


@dataclass
class OutputConfig:
    dir: str | None = None
    save_weights: bool = True


@dataclass
class MetricsConfig:
    latency: bool = False
    latency_batch_size: int = 1
    latency_repeats: int = 20
    memorization: bool = False
    memorization_models: int = 48
    memorization_epochs: int = 15
    agreement: Any = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    recovery: dict = field(default_factory=dict)
    search: SearchConfig = field(default_factory=SearchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    device: str = "auto"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line explanation as ``" at line L, column C: problem"``."""
    if isinstance(error, yaml.reader.ReaderError):
        return f" at position {error.position}: unacceptable character #x{error.character:04x}"
    mark = getattr(error, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{at}: {problem}"


def _check_depth(node: Any, where: str) -> None:
    """Refuse absurdly nested values before anything recurses over them (a RecursionError later
    would be a traceback); the error names the top-level key ``where`` holds it under."""
    stack = [(node, 0, where)]
    while stack:
        value, depth, key = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"{key or 'config'}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1, key or str(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, key) for v in value)


def _parse_override(path: str, text: str) -> Any:
    if not text:
        return None
    try:
        value = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as error:
        shown = repr(text if len(text) <= 40 else text[:37] + "...")
        raise ConfigError(f"{path}: --set value {shown} is not valid YAML{_yaml_problem(error)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: --set value nested more than {MAX_DEPTH} levels deep") from None
    _check_depth(value, path)
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        path, _, text = item.partition("=")
        keys = path.strip().split(".")
        if "=" not in item or not all(keys):
            raise ConfigError(f"--set: expected key.path=value, got {item!r}")
        path = ".".join(keys)
        value = _parse_override(path, text)
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{path}: --set cannot set a key inside '{key}', which is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def parse_config(raw: Any, overrides: list[str] | None = None) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: the top level must be a mapping of sections, got {type(raw).__name__}")
    _check_depth(raw, "")
    raw = apply_overrides(raw, overrides or [])
    config = from_dict(Config, raw, "")
    validate(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read and validate a YAML config file (UTF-8)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config: {path} is a directory; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"config: file {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"config: cannot read {path}: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        utf16 = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"config: {path} is not UTF-8 text{utf16}: byte 0x{data[error.start]:02x} at offset "
                          f"{error.start}; save the config as UTF-8 YAML") from None
    try:
        raw = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as error:
        raise ConfigError(f"config: {path} is not valid YAML{_yaml_problem(error)}") from None
    except RecursionError:
        raise ConfigError(f"config: {path} is nested more than {MAX_DEPTH} levels deep") from None
    return parse_config(raw, overrides)


def _check_int(where: str, value: Any, low: int, high: int | None = None, *, null: bool = False) -> None:
    if value is None and null:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise ConfigError(f"{where}: must be {allowed}{' or null' if null else ''}, got {value!r}")


def _resolve_tokenizer(config: Config) -> None:
    """``data.tokenizer: model`` is the tokenizer saved in the ``hf:`` model's own folder."""
    tokenizer = config.data.tokenizer
    if tokenizer is None:
        return
    if not isinstance(tokenizer, str) or not tokenizer.strip():
        raise ConfigError(f"data.tokenizer: must be null (characters), 'model' (the hf: model's folder) or the path of a "
                          f"tokenizer.json or its folder, got {tokenizer!r}")
    if config.data.name != "text":
        raise ConfigError(f"data.tokenizer: applies to the text data set only, not to {config.data.name}; remove it")
    if tokenizer == "model":
        name = str(config.model.name)
        if not name.startswith("hf:"):
            raise ConfigError(f"data.tokenizer: 'model' needs model.name: hf:PATH (a folder holding tokenizer.json), "
                              f"got model.name {name!r}; give the tokenizer's path instead")
        config.data.tokenizer = name[3:]


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    if config.device not in DEVICES and not config.device.startswith("cuda:"):
        raise ConfigError(f"device: must be one of {list(DEVICES)}, got {config.device!r}")
    _check_int("seed", config.seed, 0, MAX_SEED)
    _check_data(config.data)
    _resolve_tokenizer(config)
    check_training("model.train", **dataclasses.asdict(config.model.train))
    search = config.search
    check_settings(budget=search.budget, method=search.method, recommend=search.recommend, n_init=search.n_init,
                   direction=search.direction, workers=search.workers, ray_address=search.ray_address,
                   resources_per_evaluation=search.resources_per_evaluation,
                   ranks_per_evaluation=search.ranks_per_evaluation)
    _check_int("search.eval_epochs", search.eval_epochs, 0, null=True)
    for i, item in enumerate(search.constraints):
        where = f"search.constraints[{i}]"
        constraint = from_dict(ConstraintConfig, item, where)
        if not math.isfinite(constraint.upper) or constraint.upper < 0:
            raise ConfigError(f"{where}.upper: must be a finite number >= 0 (a bound on a drop or a rate), got {constraint.upper}")
    metrics = config.metrics
    _check_int("metrics.latency_batch_size", metrics.latency_batch_size, 1)
    _check_int("metrics.latency_repeats", metrics.latency_repeats, 1)
    _check_int("metrics.memorization_models", metrics.memorization_models, 2)  # each example needs models with and without it
    _check_int("metrics.memorization_epochs", metrics.memorization_epochs, 1)
    if metrics.agreement is not None and not callable(metrics.agreement) and (
            not isinstance(metrics.agreement, str) or not metrics.agreement.strip()):
        raise ConfigError("metrics.agreement: must be null or a function 'pkg.module:function' / 'path/file.py:function' "
                          f"taking (output, reference_output, labels), got {metrics.agreement!r}")
    strategy = config.strategy
    if strategy.ops is not None and not strategy.ops and not strategy.scheme:
        raise ConfigError("strategy.ops: the list is empty; give at least one operator, e.g. [{Prune: {density: 0.1}}]")
    if strategy.scheme is None and strategy.ops is None:
        raise ConfigError("strategy: give 'scheme' (with optional 'args') or 'ops'")


def _check_data(data: DataConfig) -> None:
    if data.name not in DATA_SETS:
        raise ConfigError(f"data.name: must be one of {list(DATA_SETS)}, got {data.name!r}")
    _check_int("data.batch_size", data.batch_size, 1)
    _check_int("data.split_seed", data.split_seed, 0, MAX_SEED)
    _check_int("data.limit", data.limit, 1, null=True)
    _check_int("data.seq_len", data.seq_len, 1)
    _check_int("data.image_size", data.image_size, 1, null=True)
    if data.image_size is not None and data.name not in VISION_DATA_SETS:
        raise ConfigError(f"data.image_size: applies to {' and '.join(VISION_DATA_SETS)} only, not to {data.name}; remove it")
    if not 0 < data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction: must be a number in (0, 1), got {data.val_fraction}")
    if data.name == "digits" and data.val_fraction >= 1 - DIGITS_TEST_FRACTION:
        raise ConfigError(f"data.val_fraction: digits keeps a fixed {DIGITS_TEST_FRACTION:.0%} for test, so the validation share "
                          f"of all images must be below {1 - DIGITS_TEST_FRACTION:g}, got {data.val_fraction}")

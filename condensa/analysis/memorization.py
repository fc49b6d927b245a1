"""Feldman-Zhang memorization scores and their relation to compression-induced label flips.

mem(i) = P[model is right on i | i in its training set] - P[model is right on i | i held out],
estimated by subsampling (Feldman & Zhang, "What Neural Networks Memorize and Why", NeurIPS 2020):
train K models on random ``fraction`` subsets of the training split and, for every example,
average correctness over the models that saw it and over those that did not. Compression-induced
mismatches concentrate on high-memorization examples (Hooker et al., "What Do Compressed Deep
Neural Networks Forget?"); :func:`memorization_vs_flips` tests that on your model with a one-sided
Mann-Whitney U test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from scipy.stats import mannwhitneyu
from torch.utils.data import Subset

from ..io import atomic_write_json
from ..metrics.accuracy import predict
from ..models.reference import cache_dir, cache_key
from ..models.registry import build_model
from ..recovery.config import TrainConfig
from ..recovery.train import train


def memorization_scores(
    spec: str,
    kwargs: dict[str, Any],
    train_data,
    config: TrainConfig,
    *,
    models: int = 32,
    fraction: float = 0.7,
    seed: int = 0,
    data_key: dict[str, Any] | None = None,
    cache: str | os.PathLike | None = None,
    device: torch.device = torch.device("cpu"),
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, float]:
    """``{example id: memorization score}`` over the training split (cached on disk)."""
    key = cache_key({"mem": 1, "spec": spec, "kwargs": kwargs, "train": vars(config), "models": models,
                     "fraction": fraction, "seed": seed, "data": data_key, "n": len(train_data)})
    path = cache_dir(cache) / f"memorization-{key}.json"
    if path.is_file():
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    n = len(train_data)
    generator = torch.Generator().manual_seed(seed)
    hits_in = count_in = hits_out = count_out = None
    for k in range(models):
        chosen = torch.randperm(n, generator=generator)[: int(round(fraction * n))]
        member = torch.zeros(n, dtype=torch.bool)
        member[chosen] = True
        torch.manual_seed(seed * 1000 + k)
        model = build_model(spec, **kwargs)
        train(model, Subset(train_data, chosen.tolist()), config, device=device, seed=seed * 1000 + k)
        predictions = predict(model, train_data, device=device, keep_logits=False)
        correct = (predictions.predicted == predictions.labels).float()
        # Per prediction: for a language model every position of a window is one (id = window * T + t,
        # the ids flipped_ids uses); membership is per window, so a window's positions share it.
        ids = predictions.indices
        member = member.repeat_interleave(len(correct) // n)
        if hits_in is None:
            hits_in, count_in, hits_out, count_out = (torch.zeros(len(correct)) for _ in range(4))
        hits_in += correct * member
        count_in += member.float()
        hits_out += correct * (~member)
        count_out += (~member).float()
        if progress is not None:
            progress(k + 1, models)
    valid = (count_in > 0) & (count_out > 0)
    scores = torch.where(valid, hits_in / count_in.clamp_min(1) - hits_out / count_out.clamp_min(1), torch.zeros(len(valid)))
    result = {int(i): float(s) for i, s, ok in zip(ids.tolist(), scores.tolist(), valid.tolist()) if ok}
    atomic_write_json(path, result)
    return result


def memorization_vs_flips(scores: dict[int, float], flipped_ids: Sequence[int]) -> dict[str, Any]:
    """Do flipped examples have higher memorization than the rest? Means and a one-sided
    Mann-Whitney U test (alternative: flipped > others)."""
    flipped = set(int(i) for i in flipped_ids)
    flipped_scores = [s for i, s in scores.items() if i in flipped]
    other_scores = [s for i, s in scores.items() if i not in flipped]
    result: dict[str, Any] = {
        "n_flipped": len(flipped_scores),
        "n_other": len(other_scores),
        "flipped_mean": sum(flipped_scores) / len(flipped_scores) if flipped_scores else float("nan"),
        "other_mean": sum(other_scores) / len(other_scores) if other_scores else float("nan"),
        "flipped_scores": flipped_scores,
        "other_scores": other_scores,
        "p_value": float("nan"),
    }
    if flipped_scores and other_scores:
        result["p_value"] = float(mannwhitneyu(flipped_scores, other_scores, alternative="greater").pvalue)
    higher = result["flipped_mean"] > result["other_mean"]
    result["summary"] = (
        f"flipped training examples: mean memorization {result['flipped_mean']:.3f} (n={len(flipped_scores)}) vs "
        f"{result['other_mean']:.3f} for the rest; one-sided Mann-Whitney p = {result['p_value']:.3g}"
        + (" — flips concentrate on memorized examples" if higher and result["p_value"] < 0.05 and len(flipped_scores) >= 5 else "")
        + (" (fewer than 5 flipped examples: too few to conclude)" if len(flipped_scores) < 5 else "")
    )
    return result

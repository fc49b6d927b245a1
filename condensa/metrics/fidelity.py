"""Mismatches: inputs where the compressed model's label differs from the reference model's.

Accuracy can stay flat while many answers change; users who ship a compressed model need to know
how many labels flipped, whether the flips hit examples the reference got right, how unevenly
they fall on classes, and exactly which examples flipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .accuracy import Predictions

#: the classes with the most flips whose names a result records (with those its exemplars name)
NAMED_CLASSES = 40


def mismatches(reference: Predictions, compressed: Predictions, num_classes: int | None = None, exemplars: int = 20,
               class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Fidelity figures of ``compressed`` against ``reference`` on the same examples.

    Rates are in percent. ``per_class_*`` is keyed by the true label. ``bias`` is the worst
    class's mismatch rate divided by the mean class rate (1.0 = evenly spread; 0 when no flips).
    ``class_names`` adds ``class_names`` for the classes a report shows: the most flipped ones and
    those the exemplars name (not all: a tokenizer's vocabulary has tens of thousands).
    """
    if not torch.equal(reference.indices, compressed.indices):
        raise ValueError("reference and compressed predictions are not on the same examples")
    labels = reference.labels
    ref_pred, cmp_pred = reference.predicted, compressed.predicted
    flipped = ref_pred != cmp_pred
    ref_correct = ref_pred == labels
    n = len(labels)
    num_classes = num_classes or int(max(int(labels.max()), int(ref_pred.max()), int(cmp_pred.max())) + 1)
    # one bincount per figure rather than a loop over classes (a GPT-2 vocabulary has 50,257)
    class_total = torch.bincount(labels, minlength=num_classes)[:num_classes].tolist()
    class_flips = torch.bincount(labels[flipped], minlength=num_classes)[:num_classes].tolist()
    per_class_count = {str(c): class_flips[c] for c in range(num_classes)}
    per_class_rate = {str(c): 100.0 * class_flips[c] / class_total[c] if class_total[c] else 0.0 for c in range(num_classes)}
    # Classes without examples in this split have no rate; they must not dilute the mean.
    rates = [per_class_rate[str(c)] for c in range(num_classes) if class_total[c]]
    mean_rate = sum(rates) / len(rates) if rates else 0.0
    ref_conf, cmp_conf = reference.confidence, compressed.confidence
    flipped_positions = torch.nonzero(flipped).reshape(-1).tolist()
    # Most confident reference answers that changed first: the most surprising flips.
    flipped_positions.sort(key=lambda i: -float(ref_conf[i]))
    result = {
        "mismatches": int(flipped.sum()),
        "mismatch_rate": 100.0 * int(flipped.sum()) / n if n else 0.0,
        "mismatches_ref_correct": int((flipped & ref_correct).sum()),
        "mismatch_rate_ref_correct": 100.0 * int((flipped & ref_correct).sum()) / max(1, int(ref_correct.sum())),
        "mismatches_ref_wrong": int((flipped & ~ref_correct).sum()),
        "per_class_mismatches": per_class_count,
        "per_class_mismatch_rate": per_class_rate,
        "mismatch_bias": (max(rates) / mean_rate) if mean_rate > 0 else 0.0,
        "flipped_ids": sorted(int(reference.indices[i]) for i in flipped_positions),
        "exemplars": [
            {
                "id": int(reference.indices[i]),
                "label": int(labels[i]),
                "reference_pred": int(ref_pred[i]),
                "compressed_pred": int(cmp_pred[i]),
                "reference_confidence": round(float(ref_conf[i]), 4),
                "compressed_confidence": round(float(cmp_conf[i]), 4),
            }
            for i in flipped_positions[:exemplars]
        ],
    }
    if class_names is not None:
        shown = sorted(range(num_classes), key=lambda c: -class_flips[c])[:NAMED_CLASSES]
        for x in result["exemplars"]:
            shown += [x["label"], x["reference_pred"], x["compressed_pred"]]
        result["class_names"] = {str(c): class_names[c] for c in sorted(set(shown)) if 0 <= c < len(class_names)}
    return result

"""Recovery with default settings only: does L-C and the label-preserving loss beat fine-tuning?

Every method gets the same step budget, the same compressed model (Prune to a global density +
int8) and the same seeds; only ``method`` and ``loss`` differ, everything else is the library's
default (``lr: auto``, the budget-derived L-C schedule, distillation = KL + flip + CE/2). Figures on the
test split; mean ± std over seeds (the recovery seed: data order and the range test's batches;
the reference model is fixed).

    python benchmarks/recovery.py [--models digits_cnn digits_mlp char_lstm speaker] [--seeds 3] [--points 1 2]

Operating points: point 1 is where fine-tuning with CE loses about one point, point 2 is harsher.
``speaker`` is the pretrained resemblyzer encoder of ``examples/speaker_encoder.py`` (needs
``pip install --no-deps resemblyzer==0.1.4``) on synthetic speech: it outputs embeddings, so "ce"
is that example's ``1 - cosine`` loss to the reference embedding, the label-preserving ``distill``
loss (made for class logits) is not run, quality is the mean cosine to the reference embedding, and
mismatches are test utterances whose nearest speaker centroid (centroids: the reference's
embeddings of each speaker's first two utterances) differs from the reference model's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from condensa.config import parse_config
from condensa.pipeline import Workspace
from condensa.recovery import RecoveryConfig, recover
from condensa.strategies import build_strategy

REPO = Path(__file__).resolve().parents[1]
#: model -> (config with its reference and data, layers compressed (None: the scheme's Conv2d + Linear),
#: densities at points 1 and 2, step budget)
MODELS = {
    "digits_cnn": ("configs/digits.yaml", None, (0.02, 0.015), {"epochs": 30}),
    "digits_mlp": ("configs/digits-mlp.yaml", ["Linear"], (0.042, 0.035), {"epochs": 30}),
    "char_lstm": ("configs/lm-char-lstm.yaml", ["LSTM", "Linear", "Embedding"], (0.07, 0.05), {"epochs": 2}),
    "speaker": (None, ["LSTM", "Linear"], (0.9, 0.85), {"epochs": 2, "batch_size": 16}),
}
SPEAKER_METHODS = ("none", "finetune + ce", "lc + ce")
METHODS = {
    "none": {"method": "none"},
    "finetune + ce": {"method": "finetune", "loss": "ce"},
    "finetune + distill": {"method": "finetune", "loss": "distill"},
    "lc + ce": {"method": "lc", "loss": "ce"},
    "lc + distill": {"method": "lc", "loss": "distill"},
}
#: the distillation default before this one (KL alone), for side-by-side runs: ``--methods "lc + distill" "lc + kl"``
FORMER = {"lc + kl": {"method": "lc", "loss": "distill", "weights": {"kl": 1.0}}}


def ms(values: list[float], digits: int = 2) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def speaker_workspace():
    """The speaker encoder, its synthetic-speech splits, and a speaker-ID mismatch count."""
    import importlib.util

    from condensa.metrics import predict

    spec = importlib.util.spec_from_file_location("speaker_encoder", REPO / "examples" / "speaker_encoder.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.manual_seed(0)
    ws = Workspace(example.load_pretrained(), example.splits(small=False), batch_size=64, log=lambda *_: None)
    test = ws.splits.test
    speakers = int(test.labels.max()) + 1
    enrolled = torch.zeros(len(test.labels), dtype=torch.bool)
    for s in range(speakers):
        enrolled[torch.nonzero(test.labels == s).reshape(-1)[:2]] = True
    reference = predict(ws.reference, test, batch_size=64).logits  # the embeddings themselves
    centroids = torch.nn.functional.normalize(
        torch.stack([reference[enrolled & (test.labels == s)].mean(0) for s in range(speakers)]), dim=1)

    def measure(model) -> dict:
        embeddings = predict(model, test, batch_size=64).logits  # one pass gives both figures
        flips = (embeddings[~enrolled] @ centroids.T).argmax(1) != (reference[~enrolled] @ centroids.T).argmax(1)
        return {"accuracy": example.mean_cosine(embeddings, reference, test.labels), "mismatches": int(flips.sum())}

    return ws, example.cosine_loss, measure, int((~enrolled).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--points", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*METHODS, *FORMER])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | point | density | method | accuracy % | mismatches | lr | seconds |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name in args.models:
        config_file, layers, densities, budget = MODELS[name]
        if name == "speaker":
            ws, user_loss, measure, probes = speaker_workspace()
            batch_size, methods = budget["batch_size"], [m for m in args.methods if m in SPEAKER_METHODS]
            print(f"| {name} | reference | | | mean cosine 1 | of {probes} | | |", flush=True)
        else:
            config = parse_config(yaml.safe_load((REPO / config_file).read_text()))
            ws = Workspace.from_config(config, log=lambda *_: None)
            user_loss, measure, batch_size, methods = None, None, config.recovery.get("batch_size", 64), args.methods
            print(f"| {name} | reference | | | {ws.reference_predictions('test').accuracy:.2f} | of {len(ws.splits.test)} | | |",
                  flush=True)
        for point in args.points:
            density = densities[point - 1]
            strategy = build_strategy("prune_quantize", {"density": density, **({"layers": layers} if layers else {})}, None)
            for label in methods:
                settings = {**budget, "batch_size": batch_size, **{**METHODS, **FORMER}[label]}
                if user_loss is not None and settings.get("loss") == "ce":
                    settings["loss"] = user_loss
                runs = []
                for seed in range(1 if label == "none" else args.seeds):  # no recovery: nothing random
                    start = time.perf_counter()
                    model, _ = strategy.apply(ws.reference)
                    report: dict = {}
                    model = recover(model, ws.reference, ws.splits.train, RecoveryConfig.from_dict(settings), strategy=strategy,
                                    seed=seed, report=report)
                    seconds = time.perf_counter() - start
                    metrics = measure(model) if measure is not None else ws.measure(model, "test")
                    runs.append((metrics["accuracy"], metrics["mismatches"], report.get("lr", 0.0), seconds))
                acc, mm, lr, sec = (list(column) for column in zip(*runs))
                print(f"| {name} | {point} | {density} | {label} | {ms(acc, 4 if name == 'speaker' else 2)} | {ms(mm, 1)} | {statistics.mean(lr):.2g} | "
                      f"{ms(sec, 0)} |", flush=True)


if __name__ == "__main__":
    main()

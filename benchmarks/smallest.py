"""Smallest files (issue 17): bytes of each encoding, exactly as written, for three models.

Rows per model, each a restriction of the packed format (``condensa.packing.layout.Options``,
passed to ``condensa.export.save(options=...)``) applied to a compressed model:

* ``dense fp32``          the uncompressed model, every value raw
* ``bitmask + int8``      Prune + int8 codes, one bit per element for the index
* ``relative + int8``     the same model, bounded relative-index gaps (fixed ``b`` bits, fillers)
* ``+ int4``              Prune + int4, relative index
* ``+ codebook``          Prune + Codebook (3 bits) + int8 biases/folded BatchNorm, relative index
* ``+ entropy coding``    the codebook model, Huffman-coded gaps and codes, rows dropped when cheaper

Columns: file bytes (safetensors container included), fp32 bytes / file bytes, the footprint
(``packed_size`` of the same encoding, computed without writing; with the default options it is
``condensa.metrics.footprint``) and file / footprint, test accuracy of the model
loaded back from the file (digits CNN; next-character accuracy and perplexity for the char LSTM;
resnet18 has random weights: bytes only), encode and decode seconds, and whether every loaded
tensor is bit-identical to the in-memory compressed model. Digits and LSTM models are recovered
(``--epochs``) before encoding; resnet18 is compressed without recovery (per-layer pruning, since
global magnitude pruning of random weights empties whole layers).

Deep Compression (Han et al., ICLR 2016): pruning + trained quantization + Huffman coding gave
35x on AlexNet, 49x on VGG-16, 40x on LeNet-300-100 and 39x on LeNet-5; Condensa (Joseph et al.)
reports up to 65x, 188x in its journal version.

    python benchmarks/smallest.py [--quick] [--models digits,lstm,resnet18]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from condensa import Codebook, Compose, Prune, Quantize, QuantizeAux  # noqa: E402
from condensa.export import load, save  # noqa: E402
from condensa.packing import layout as C  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEEP_COMPRESSION = "Deep Compression: AlexNet 35x, VGG-16 49x, LeNet-300-100 40x, LeNet-5 39x; Condensa: up to 65x (188x journal)"

ROWS = [
    ("dense fp32", "dense", C.Options(("dense",), rows=False, entropy_values=False)),
    ("bitmask + int8", "int8", C.Options(("bitmask",), rows=False, entropy_values=False)),
    ("relative + int8", "int8", C.Options(("relative",), rows=False, entropy_values=False)),
    ("+ int4", "int4", C.Options(("relative",), rows=False, entropy_values=False)),
    ("+ codebook", "codebook", C.Options(("relative",), rows=False, entropy_values=False)),
    ("+ entropy coding", "codebook", C.Options()),
]


def strategies(density: float, layers: tuple[str, ...], scope: str, cb_bits: int) -> dict:
    prune = Prune(density, layers=layers, scope=scope)
    return {
        "int8": Compose([prune, Quantize("int8", layers=layers)]),
        "int4": Compose([prune, Quantize(bits=4, layers=layers)]),
        "codebook": Compose([prune, Codebook(cb_bits, layers=layers), QuantizeAux("int8")]),
    }


def measure_row(model, options, factory, workspace, reference_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        specs = C.specs(model, C.quant_plan(model))
        footprint = C.packed_size(specs, options).file_bytes
        start = time.perf_counter()
        manifest = save(model, tmp, options=options, onnx=False, surgery=False)
        encode_s = time.perf_counter() - start
        file_bytes = os.path.getsize(Path(tmp) / "model.safetensors")
        start = time.perf_counter()
        loaded, _ = load(tmp, model_factory=factory)
        decode_s = time.perf_counter() - start
    state = loaded.state_dict()
    exact = all(torch.equal(s.effective, state[s.name]) for s in specs)
    quality = "-"
    if workspace is not None:
        metrics = workspace.measure(loaded, "test")
        if workspace.splits.num_classes > 20:  # a language model: next-character accuracy and perplexity
            quality = f"{metrics['accuracy']:.2f}% / ppl {metrics['perplexity']:.3f}"
        else:
            quality = f"{metrics['accuracy']:.2f}%"
    return {"file": file_bytes, "ratio": reference_bytes / file_bytes, "footprint": footprint,
            "file/fp": file_bytes / footprint, "quality": quality, "encode": encode_s, "decode": decode_s,
            "exact": exact, "breakdown": manifest["size"]["bits_by_role"]}


def run_model(label, reference, factory, workspace, density, layers, scope, cb_bits, epochs):
    reference_bytes = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in reference.state_dict().values())
    models = {"dense": reference}
    for key, strategy in strategies(density, layers, scope, cb_bits).items():
        if workspace is not None and epochs:
            evaluation = workspace.evaluate(strategy, split="test", epochs=epochs)
            models[key] = evaluation.model.eval()
        else:
            model, _ = strategy.apply(reference)
            strategy.finish(model)
            models[key] = model.eval()
    print(f"\n### {label} (fp32 state dict {reference_bytes:,} B; density {density}, {scope} pruning, codebook {cb_bits} bits)\n")
    print("| encoding | file B | ratio | footprint B | file/footprint | test quality | encode s | decode s | bit-exact |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, key, options in ROWS:
        row = measure_row(models[key], options, factory, workspace, reference_bytes)
        rows.append((name, row))
        print(f"| {name} | {row['file']:,} | {row['ratio']:.1f}x | {row['footprint']:,} | {row['file/fp']:.4f} | {row['quality']} | "
              f"{row['encode']:.3f} | {row['decode']:.3f} | {'yes' if row['exact'] else 'NO'} |", flush=True)
    last = rows[-1][1]["breakdown"]
    print("\nbytes of the last row by role and part: " + "; ".join(
        f"{role}: " + ", ".join(f"{part} {bits / 8:.0f}" for part, bits in parts.items() if bits) for role, parts in last.items()))
    return rows


def workspace_for(config: str, overrides: list[str]):
    from condensa.config import load_config
    from condensa.pipeline import Workspace

    return Workspace.from_config(load_config(CONFIGS / config, overrides), log=lambda s: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer recovery epochs")
    parser.add_argument("--models", default="digits,lstm,resnet18")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = args.models.split(",")
    print(DEEP_COMPRESSION)
    if "digits" in chosen:
        from condensa.models.digits import DigitsCNN

        ws = workspace_for("digits.yaml", [])
        run_model("digits CNN", ws.reference, DigitsCNN, ws, 0.03, ("Conv2d", "Linear"), "global", 3, 5 if args.quick else 30)
    if "lstm" in chosen:
        from condensa.models.text import CharLSTM

        ws = workspace_for("lm-char-lstm.yaml", ["data.limit=2000"] if args.quick else [])
        run_model("char LSTM", ws.reference, CharLSTM, ws, 0.2, ("LSTM", "Linear", "Embedding"), "global", 4, 1 if args.quick else 2)
    if "resnet18" in chosen:
        from condensa.models.registry import build_model

        torch.manual_seed(0)
        reference = build_model("resnet18").eval()
        run_model("resnet18 (random weights)", reference, lambda: build_model("resnet18"), None, 0.05,
                  ("Conv2d", "Linear"), "layer", 4, 0)


if __name__ == "__main__":
    main()

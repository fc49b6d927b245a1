"""Packed export benchmark: file bytes vs the theoretical minimum, and exactness after load.

For each strategy on the digits CNN and resnet18 (random weights, no downloads):

* ``file``      bytes of ``model.safetensors`` (header included)
* ``theory``    the footprint metric: the exact packed size of the unshrunk model, computed
                without writing (equal to ``file`` unless surgery shrank the model further)
* ``file/th``   their ratio (1.0000 without surgery; below 1 with it)
* ``pay/th``    payload (file minus safetensors header) / theory: what the encodings cost
* ``fp32``      bytes of a plain fp32 safetensors file of the uncompressed model
* ``x``         fp32 file / packed file
* ``diff``      max |output| difference of the loaded model vs the in-memory compressed model
                (FilterPrune: vs the masked model; the loaded model is the shrunk one)
* ``|y|``       max |output| of the compressed model, and whether it depends on the input at all
                (global magnitude pruning of a random resnet18 at 5% empties whole layers, so its
                output is constant; the per-layer row shows the same check on a live network)
* ``weights``   max |difference| of every loaded tensor vs the tensor the in-memory model uses
                (masked, and for intN the ``FakeQuantize`` value); "exact" when bit-identical
* ``onnx``      max |output| difference of model.onnx (onnxruntime) vs torch

    python benchmarks/export.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save as st_save  # noqa: E402

from condensa import Compose, FilterPrune, NMPrune, Prune, Quantize  # noqa: E402
from condensa.export import load, save  # noqa: E402
from condensa.metrics.footprint import footprint  # noqa: E402
from condensa.models.registry import build_model  # noqa: E402
from condensa.operators import params  # noqa: E402


def weight_diff(loaded: torch.nn.Module, compressed: torch.nn.Module) -> float:
    """Max |loaded - in-memory effective tensor| over all tensors (unshrunk models only)."""
    worst = 0.0
    for key, tensor in loaded.state_dict().items():
        module_name, _, tensor_name = key.rpartition(".")
        module = compressed.get_submodule(module_name) if module_name else compressed
        quant = params.get_quant(module, tensor_name)
        if quant is not None:
            expected = quant.quantized(params.masked_tensor(module, tensor_name))
        else:
            expected = getattr(module, tensor_name).detach()
        if tensor.is_floating_point():
            worst = max(worst, float((tensor - expected).abs().max()) if tensor.numel() else 0.0)
        elif not torch.equal(tensor, expected):
            worst = float("inf")
    return worst

STRATEGIES = {
    "Prune 0.1": Prune(0.1),
    "Prune 0.05 + int8": Compose([Prune(0.05), Quantize("int8")]),
    "Prune 0.05/layer + int8": Compose([Prune(0.05, scope="layer"), Quantize("int8")]),
    "NMPrune 2:4": NMPrune(2, 4, exclude=("@first",)),
    "FilterPrune 0.5": FilterPrune(0.5),
}


def fp32_bytes(model: torch.nn.Module) -> int:
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    return len(st_save(state))


def run(model_name: str, input_shape: tuple[int, ...], rows: list[dict]) -> None:
    torch.manual_seed(0)
    model = build_model(model_name).eval()
    x = torch.randn(*input_shape)
    reference = fp32_bytes(model)
    for label, strategy in STRATEGIES.items():
        start = time.perf_counter()
        compressed, record = strategy.apply(model)
        with tempfile.TemporaryDirectory() as tmp:
            manifest = save(compressed, tmp, strategy=strategy, record=record, model_factory=model_name, example_input=x[:1])
            loaded, _ = load(tmp)
        with torch.no_grad():
            y = compressed(x)
            diff = float((loaded(x) - y).abs().max())
        live = bool((y[0] - y[1]).abs().max() > 0)
        weights = weight_diff(loaded, compressed) if not manifest["surgery"]["applied"] else float("nan")
        size = manifest["size"]
        header = size["file_bytes"] - size["payload_bytes"]
        rows.append({
            "model": model_name, "strategy": label, "file": size["file_bytes"], "theory": footprint(compressed).bytes,
            "header": header, "payload": size["payload_bytes"], "fp32": reference,
            "masked_footprint": footprint(compressed).bytes, "surgery": manifest["surgery"]["applied"],
            "diff": diff, "scale": float(y.abs().max()), "live": live, "weights": weights, "onnx": manifest["files"].get("model.onnx", {}).get("max_abs_diff", float("nan")),
            "seconds": time.perf_counter() - start,
        })
        print(f"  {model_name} / {label}: {time.perf_counter() - start:.1f}s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits CNN only")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows: list[dict] = []
    run("digits_cnn", (8, 1, 8, 8), rows)
    if not args.quick:
        run("resnet18", (2, 3, 224, 224), rows)
    print()
    print("| model | strategy | surgery | file B | theory B | file/th | pay/th | fp32 B | x | diff | abs(y) | weights | onnx diff |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        weights = "shrunk" if r["surgery"] else ("exact" if r["weights"] == 0 else f"{r['weights']:.2g}")
        print(f"| {r['model']} | {r['strategy']} | {'yes' if r['surgery'] else 'no'} | {r['file']:,} | {r['theory']:,.0f} | "
              f"{r['file'] / r['theory']:.4f} | {r['payload'] / r['theory']:.4f} | {r['fp32']:,} | {r['fp32'] / r['file']:.1f} | "
              f"{r['diff']:.2g} | {r['scale']:.2g}{'' if r['live'] else ' const'} | {weights} | {r['onnx']:.2g} |")
    print()
    print("FilterPrune rows store the shrunk model; the footprint of the masked (unshrunk) model for comparison:")
    for r in rows:
        if r["surgery"]:
            print(f"  {r['model']}: masked footprint {r['masked_footprint']:,.0f} B -> shrunk file {r['file']:,} B")


if __name__ == "__main__":
    main()

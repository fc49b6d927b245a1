"""What each ``condensa`` sub-command does, as plain functions the CLI and tests call.

Every command writes into an output folder: ``config.json`` (the resolved config, so ``export``,
``eval`` and ``report`` can rebuild the workspace), ``result.json`` and ``compressed.safetensors``;
``search`` adds ``journal.jsonl``, from which a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Config, parse_config
from .errors import ConfigError, KnobError
from .io import atomic_write_json
from .pipeline import Workspace, result_summary, save_weights, versions
from .progress import Progress


def _out_dir(config: Config, out: str | None, config_path: str | None, kind: str) -> Path:
    if out:
        path = Path(out)
    elif config.output.dir:
        path = Path(config.output.dir)
    else:
        stem = Path(config_path).stem if config_path else "run"
        path = Path("runs") / f"{stem}-{kind}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"--out: cannot write to {path}: {error.strerror or error}") from None
    return path


def _epoch_progress(desc: str, total: int, quiet: bool) -> tuple[Progress, Callable[[int, float], None]]:
    bar = Progress(total, desc, quiet=quiet, unit="epoch", leave=False)

    def update(epoch: int, loss: float) -> None:
        bar.update(1, loss=loss)

    return bar, update


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return str(n)


def summary_table(metrics: dict[str, Any]) -> str:
    rows = [
        ("accuracy", f"{metrics['accuracy']:.2f}% (reference {metrics['reference_accuracy']:.2f}%, drop {metrics['accuracy_drop']:+.2f} pts)"),
        ("mismatches", f"{metrics['mismatches']} ({metrics['mismatch_rate']:.2f}%), {metrics['mismatches_ref_correct']} where the reference was right"),
        ("density", f"{metrics['density']:.4f}"),
        ("footprint", f"{_fmt_bytes(metrics['footprint_bytes'])} vs {_fmt_bytes(metrics['reference_bytes'])} fp32 -> {metrics['compression_ratio']:.1f}x smaller"),
        ("FLOPs", f"{metrics['flops_effective']:.3g} effective / {metrics['flops_dense']:.3g} dense"),
    ]
    if "latency_ms" in metrics:
        rows.append(("latency", f"{metrics['latency_ms']:.3f} ms (batch {metrics['latency_batch_size']}, {metrics['latency_threads']} threads)"))
    return _table(rows)


def _resolved(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def compress(config: Config, *, out: str | None = None, config_path: str | None = None, quiet: bool = False,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Apply the (concrete) strategy, recover, measure on validation and test, write the result."""
    start = time.perf_counter()
    out_dir = _out_dir(config, out, config_path, "compress")
    workspace = Workspace.from_config(config, log=log)
    strategy = workspace.strategy
    if strategy.knobs():
        listing = ", ".join(f"{k} ({v.describe()})" for k, v in strategy.knobs().items())
        raise KnobError(f"strategy has open knobs: {listing}; use 'condensa search', or fix them, e.g. --set strategy.args.density=0.05")
    recovery = workspace.recovery_config()
    bar, update = _epoch_progress("recovery", max(1, getattr(recovery, "epochs", 1)), quiet)
    with bar:
        evaluation = workspace.evaluate(strategy, split="test", progress=update)
    validation = workspace.measure(evaluation.model, "val", evaluation.record)
    test = evaluation.metrics
    memorization = memorization_report(workspace, config, evaluation.model, log) if config.metrics.memorization else None
    result = {
        "command": "compress",
        **result_summary(test),
        "test": test,
        "validation": validation,
        "strategy": strategy.to_dict(),
        "record": evaluation.record.to_dict(),
        "seed": config.seed,
        "device": str(workspace.device),
        "seconds": time.perf_counter() - start,
        "versions": versions(),
    }
    if memorization is not None:
        result["memorization"] = memorization
    _write_outputs(out_dir, config, result, evaluation.model)
    if not quiet:
        log(f"compressed {config.model.name} with {type(strategy).__name__} -> {out_dir}")
        log(summary_table(test))
    return result


def memorization_report(workspace: Workspace, config: Config, model, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Feldman-Zhang memorization on the training split vs the examples ``model`` flips there."""
    from .data.loaders import data_key
    from .metrics import mismatches, predict
    from .metrics.memorization import memorization_scores, memorization_vs_flips
    from .recovery.finetune import TrainConfig

    train_cfg = config.model.train
    log(f"memorization: training {config.metrics.memorization_models} models on 70% subsets (cached afterwards)")
    scores = memorization_scores(
        config.model.name, config.model.kwargs, workspace.splits.train,
        TrainConfig(epochs=config.metrics.memorization_epochs, lr=train_cfg.lr, optimizer=train_cfg.optimizer,
                    weight_decay=train_cfg.weight_decay, batch_size=train_cfg.batch_size),
        models=config.metrics.memorization_models, seed=config.seed, data_key=data_key(config.data), device=workspace.device,
    )
    flips = mismatches(workspace.reference_predictions("train"), predict(model, workspace.splits.train, device=workspace.device),
                       workspace.splits.num_classes)
    relation = memorization_vs_flips(scores, flips["flipped_ids"])
    relation["models"] = config.metrics.memorization_models
    relation["train_mismatches"] = flips["mismatches"]
    log(relation["summary"])
    return relation


def _write_outputs(out_dir: Path, config: Config, result: dict[str, Any], model) -> None:
    from .recovery.distributed import is_main_process

    if not is_main_process():  # under torchrun every rank computes the same result; rank 0 writes
        return
    atomic_write_json(out_dir / "config.json", _resolved(config))
    if config.output.save_weights and model is not None:
        save_weights(model, out_dir / "compressed.safetensors")
    atomic_write_json(out_dir / "result.json", result)


def _fingerprint(config: Config, strategy) -> dict[str, Any]:
    return {
        "strategy": strategy.to_dict(),
        "model": dataclasses.asdict(config.model),
        "data": dataclasses.asdict(config.data),
        "recovery": config.recovery,
        "objective": config.search.objective,
        "direction": config.search.direction,
        "constraints": config.search.constraints,
        "method": config.search.method,
        "eval_epochs": config.search.eval_epochs,
        "seed": config.seed,
    }


def evaluations_table(evaluations: list[Any], objective: str, set_aside: Any = ()) -> str:
    """The search trace; ``set_aside`` marks observed-feasible points the constraint model judged noise."""
    header = f"  {'#':>2}  {'knobs':<40} {'acc drop':>8} {'mismatch%':>9} {objective:>16} {'ratio':>7}  feasible"
    lines = [header, "  " + "-" * (len(header) - 2)]
    for ev in evaluations:
        m = ev.metrics or {}
        knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in ev.knobs.items())
        if ev.status != "ok":
            lines.append(f"  {ev.index:>2}  {knobs:<40} failed: {ev.message if hasattr(ev, 'message') else ''}"[:160])
            continue
        lines.append(
            f"  {ev.index:>2}  {knobs:<40} {m.get('accuracy_drop', float('nan')):>8.2f} {m.get('mismatch_rate', float('nan')):>9.2f} "
            f"{ev.objective:>16.6g} {m.get('compression_ratio', float('nan')):>7.1f}  {_feasible_mark(ev, set_aside)}"
        )
    if set_aside:
        lines.append("  yes? = under the bound as measured, over it by the constraint model: probably noise, not chosen")
    return "\n".join(lines)


def _feasible_mark(evaluation: Any, set_aside: Any) -> str:
    if not evaluation.feasible:
        return "no"
    return "yes?" if evaluation.index in set_aside else "yes"


def run_search(config: Config, *, out: str | None = None, config_path: str | None = None, quiet: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search the strategy's open knobs, then re-run the best with the full recovery budget on test."""
    from .search import Constraint, Objective, search

    start = time.perf_counter()
    out_dir = _out_dir(config, out, config_path, "search")
    workspace = Workspace.from_config(config, log=log)
    strategy = workspace.strategy
    if not strategy.knobs():
        raise KnobError("strategy has no open knobs to search; give a range, e.g. density: {low: 0.01, high: 0.5, log: true}, or use 'condensa compress'")
    search_cfg = config.search
    metric = workspace.objective_metric()
    objective = Objective(metric=metric, direction=search_cfg.direction, cheap=workspace.cheap_objective(strategy))
    constraints = [Constraint(metric=c["metric"], upper=float(c["upper"])) for c in search_cfg.constraints]
    bar = Progress(search_cfg.budget, "search", quiet=quiet, unit="eval")

    def on_evaluation(evaluation, so_far) -> None:
        best = so_far.best_metrics or {}
        postfix = {"best_" + metric: best.get(metric, "none")}
        if "compression_ratio" in best:
            postfix["ratio"] = best["compression_ratio"]
        bar.update(1, **postfix)

    def evaluate(bound):
        return workspace.evaluate(bound, split="val", epochs=search_cfg.eval_epochs).metrics

    journal = out_dir / "journal.jsonl"
    with bar:
        result = search(strategy, evaluate, objective, constraints, budget=search_cfg.budget, seed=config.seed,
                        method=search_cfg.method, journal=journal, fingerprint=_fingerprint(config, strategy),
                        n_init=search_cfg.n_init, on_evaluation=on_evaluation, recommend=search_cfg.recommend)
    summary: dict[str, Any] = {
        "command": "search",
        "feasible": result.feasible,
        "samples": result.samples,
        "knobs": result.best_knobs,
        "objective": {"metric": metric, "direction": search_cfg.direction},
        "constraints": search_cfg.constraints,
        "message": result.message,
        "search": result.to_dict(),
        "seed": config.seed,
        "device": str(workspace.device),
        "versions": versions(),
    }
    model = None
    if result.feasible:
        best = strategy.bind(result.best_knobs)
        recovery = workspace.recovery_config()
        epoch_bar, update = _epoch_progress("final recovery", max(1, getattr(recovery, "epochs", 1)), quiet)
        with epoch_bar:
            final = workspace.evaluate(best, split="test", progress=update)
        model = final.model
        summary.update(result_summary(final.metrics))
        summary.update({
            "strategy": best.to_dict(),
            "test": final.metrics,
            "validation": workspace.measure(final.model, "val", final.record),
            "validation_search": result.best_metrics,
            "record": final.record.to_dict(),
        })
        if config.metrics.memorization:
            summary["memorization"] = memorization_report(workspace, config, final.model, log)
    else:
        summary["strategy"] = strategy.to_dict()
    summary["seconds"] = time.perf_counter() - start
    _write_outputs(out_dir, config, summary, model)
    if not quiet:
        log(evaluations_table(result.evaluations, metric, result.set_aside))
        if result.feasible:
            knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_knobs.items())
            log(f"best: {knobs} after {result.samples} evaluations; final model on the test split:")
            log(summary_table(summary["test"]))
        else:
            log(result.message)
        log(f"results in {out_dir}")
    return summary


def load_run_config(run_dir: Path) -> Config:
    import json

    if Path(run_dir).is_file():
        from .export.checkpoint import refuse_if_pickle

        refuse_if_pickle(Path(run_dir))
        raise ConfigError(f"{run_dir} is a file; expected the output folder of 'condensa compress', 'search' or 'export'")
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.json; expected the output folder of 'condensa compress' or 'condensa search'")
    return parse_config(json.loads(path.read_text()))


__all__ = ["compress", "run_search", "summary_table", "load_run_config"]


def _read_result(run_dir: Path) -> dict[str, Any]:
    import json

    path = run_dir / "result.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no result.json; expected the output folder of 'condensa compress' or 'condensa search'")
    return json.loads(path.read_text())


def _quant_dtypes(record: dict[str, Any]) -> dict[str, str]:
    from .operators.params import is_quant_dtype

    dtypes = {}
    for name, entry in (record or {}).items():
        if entry.get("dtype"):
            dtypes[name] = entry["dtype"]
            continue
        for op in entry.get("ops", []):
            if is_quant_dtype(op):
                dtypes[name] = op
    return dtypes


def load_compressed(run_dir: str | Path):
    """Rebuild the compressed model of a result folder: the model from its config's factory, the
    compressed weights, and the quantizers re-attached from the record (so export sees int codes)."""
    from .models.reference import load_weights
    from .models.registry import build_model
    from .operators import params

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    result = _read_result(run_dir)
    weights = run_dir / "compressed.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{run_dir}: no compressed.safetensors (the search found no feasible strategy, or output.save_weights was false)")
    model = load_weights(build_model(config.model.name, **config.model.kwargs), weights).eval()
    modules = dict(model.named_modules())
    for tensor, dtype in _quant_dtypes(result.get("record", {})).items():
        module_name, _, tensor_name = tensor.rpartition(".")
        params.set_quant(modules[module_name], tensor_name, dtype)
    return model, config, result


def export(run_dir: str | Path, *, out: str | None = None, onnx: bool = True, quiet: bool = False,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write a packed checkpoint (model.safetensors + manifest.json + model.onnx) for a run."""
    from .data.loaders import load_splits
    from .export import save

    run_dir = Path(run_dir)
    model, config, result = load_compressed(run_dir)
    out_dir = Path(out) if out else run_dir.with_name(run_dir.name + "-export")
    splits = load_splits(config.data)
    example = splits.val[0][0].unsqueeze(0)
    manifest = save(model, out_dir, strategy=result.get("strategy"), record=result.get("record"), knobs=result.get("knobs"),
                    metrics=result.get("test"), model_factory={"name": config.model.name, "kwargs": config.model.kwargs},
                    example_input=example, onnx=onnx)
    atomic_write_json(out_dir / "config.json", _resolved(config))
    if not quiet:
        total = sum(p.stat().st_size for p in out_dir.iterdir() if p.name == "model.safetensors")
        log(f"exported {run_dir} -> {out_dir} (model.safetensors {_fmt_bytes(total)}"
            f"{', model.onnx' if onnx else ''})")
    return manifest


def evaluate_export(export_dir: str | Path, *, split: str = "test", device: str | None = None, out: str | None = None,
                    quiet: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load an exported checkpoint (safetensors + JSON only) and measure it like ``compress`` does."""
    from .export import load

    export_dir = Path(export_dir)
    config = load_run_config(export_dir)
    if device:
        config.device = device
    model, manifest = load(export_dir)
    from .operators import params

    modules = dict(model.named_modules())
    for tensor, dtype in _quant_dtypes(manifest.get("record") or {}).items():
        module_name, _, tensor_name = tensor.rpartition(".")
        if module_name in modules and hasattr(modules[module_name], tensor_name):
            params.set_quant(modules[module_name], tensor_name, dtype)  # idempotent on stored codes
    workspace = Workspace.from_config(config, log=log)
    metrics = workspace.measure(model, split)
    result = {"command": "eval", "split": split, **result_summary(metrics), "metrics": metrics,
              "manifest_hash": manifest.get("content_hash") if isinstance(manifest, dict) else None, "versions": versions()}
    out_path = Path(out) / "eval.json" if out else export_dir / f"eval-{split}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path, result)
    if not quiet:
        log(f"evaluated {export_dir} on the {split} split -> {out_path}")
        log(summary_table(metrics))
    return result


def report(run_dir: str | Path, *, out: str | None = None, quiet: bool = False, log: Callable[[str], None] = print) -> dict[str, Path]:
    from .report import write_report

    paths = write_report(run_dir, out)
    if not quiet:
        log(f"wrote {paths['markdown']} and {paths['html']} ({len(paths) - 2} plots)")
    return paths

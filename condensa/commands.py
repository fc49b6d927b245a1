"""What each ``condensa`` sub-command does, as plain functions the CLI and tests call.

``compress`` and ``search`` write a run folder (:mod:`condensa.runs`; a search's journal lets a
rerun resume), ``export`` turns one into a packed checkpoint, ``eval`` measures a checkpoint and
``report`` renders a run folder.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import runs
from .config import Config
from .data.loaders import data_key, load_splits
from .distributed import is_main_process
from .errors import ConfigError, KnobError
from .export import load, republish
from .extras import require
from .io import atomic_write_json
from .loading import reading_file
from .metrics import mismatches, predict
from .pipeline import Workspace, result_summary
from .progress import Progress
from .recovery import TrainConfig
from .search import Constraint, Journal, Objective, search
from .tables import evaluations_table, format_bytes, summary_table
from .versions import versions


def _epoch_progress(desc: str, total: int, quiet: bool) -> tuple[Progress, Callable[[int, float], None]]:
    bar = Progress(total, desc, quiet=quiet, unit="epoch", leave=False)

    def update(epoch: int, loss: float) -> None:
        bar.update(1, loss=loss)

    return bar, update


def compress(config: Config, *, out: str | None = None, config_path: str | None = None, quiet: bool = False,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Apply the (concrete) strategy, recover, measure on validation and test, write the result."""
    out_dir = runs.output_folder(config, out, config_path, "compress")
    with runs.exclusive(out_dir):
        return _compress(config, out_dir, quiet, log)


def _compress(config: Config, out_dir: Path, quiet: bool, log: Callable[[str], None]) -> dict[str, Any]:
    start = time.perf_counter()
    workspace = Workspace.from_config(config, log=log, check=_concrete)
    strategy = workspace.strategy
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
    runs.write_outputs(out_dir, config, result, evaluation, workspace.example_input(1).cpu())
    if not quiet:
        log(f"compressed {config.model.name} with {type(strategy).__name__} -> {out_dir}")
        log(summary_table(test))
    return result


def _concrete(strategy) -> None:
    if strategy.knobs():
        listing = ", ".join(f"{k} ({v.describe()})" for k, v in strategy.knobs().items())
        raise KnobError(f"strategy: has open knobs: {listing}; use 'condensa search', or fix them, e.g. --set strategy.args.density=0.05")


def _open(strategy) -> None:
    if not strategy.knobs():
        raise KnobError("strategy: has no open knobs to search; give a range, e.g. density: {low: 0.01, high: 0.5, log: true}, "
                        "or use 'condensa compress'")


def memorization_report(workspace: Workspace, config: Config, model, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Feldman-Zhang memorization on the training split vs the examples ``model`` flips there."""
    # scipy.stats costs a second of start-up that only this analysis needs
    from .analysis.memorization import memorization_scores, memorization_vs_flips

    train_cfg = config.model.train
    log(f"memorization: training {config.metrics.memorization_models} models on 70% subsets (cached afterwards)")
    scores = memorization_scores(
        config.model.name, config.model.kwargs, workspace.splits.train,
        TrainConfig(epochs=config.metrics.memorization_epochs, lr=train_cfg.lr, optimizer=train_cfg.optimizer,
                    weight_decay=train_cfg.weight_decay, batch_size=train_cfg.batch_size),
        models=config.metrics.memorization_models, seed=config.seed, data_key=data_key(config.data), device=workspace.device,
    )
    compressed = predict(model, workspace.splits.train, device=workspace.device, keep_logits=False)
    flips = mismatches(workspace.reference_predictions("train"), compressed, workspace.splits.num_classes)
    relation = memorization_vs_flips(scores, flips["flipped_ids"])
    relation["models"] = config.metrics.memorization_models
    relation["train_mismatches"] = flips["mismatches"]
    log(relation["summary"])
    return relation


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


def run_search(config: Config, *, out: str | None = None, config_path: str | None = None, quiet: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search the strategy's open knobs, then re-run the best with the full recovery budget on test."""
    if config.search.workers > 1:
        require("ray")  # before any folder or training: parallel evaluations run on Ray
    out_dir = runs.output_folder(config, out, config_path, "search")
    with runs.exclusive(out_dir):  # one run per folder: two searches would interleave their journal lines
        return _search(config, out_dir, quiet, log)


def _search(config: Config, out_dir: Path, quiet: bool, log: Callable[[str], None]) -> dict[str, Any]:
    start = time.perf_counter()
    journal = Journal(out_dir / runs.JOURNAL, writable=is_main_process())  # under torchrun rank 0 writes
    journal.read()  # a journal edited into something that is no journal fails before any training
    workspace = Workspace.from_config(config, log=log, check=_open)
    strategy = workspace.strategy
    search_cfg = config.search
    metric = workspace.objective_metric()
    objective = Objective(metric=metric, direction=search_cfg.direction, cheap=workspace.cheap_objective(strategy))
    constraints = [Constraint(metric=c["metric"], upper=float(c["upper"])) for c in search_cfg.constraints]
    bar = Progress(search_cfg.budget, "search", quiet=quiet, unit="eval")

    postfix: dict[str, Any] = {}

    def on_evaluation(evaluation, so_far) -> None:
        best = so_far.best_metrics or {}
        postfix.pop("ratio", None)
        postfix["best_" + metric] = best.get(metric, "none")
        if "compression_ratio" in best:
            postfix["ratio"] = best["compression_ratio"]
        bar.update(1, **postfix)

    def evaluate(bound):
        return workspace.evaluate(bound, split="val", epochs=search_cfg.eval_epochs).metrics

    parallel: dict[str, Any] = {}
    if search_cfg.workers > 1:  # evaluations as Ray tasks (README: "Several evaluations at once")
        from .parallel_eval import executor_factory

        def on_pending(running) -> None:  # the evaluations in flight, beside the best so far
            postfix["running"] = ",".join(f"#{p.step}" for p in sorted(running, key=lambda p: p.step)) or "-"
            bar.update(0, **postfix)

        parallel = {"workers": search_cfg.workers, "executor": executor_factory(config, workspace, log),
                    "on_pending": on_pending}
    with bar:
        result = search(strategy, evaluate, objective, constraints, budget=search_cfg.budget, seed=config.seed,
                        method=search_cfg.method, journal=journal, fingerprint=_fingerprint(config, strategy),
                        n_init=search_cfg.n_init, on_evaluation=on_evaluation, recommend=search_cfg.recommend,
                        **parallel)
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
    final = None
    if result.feasible:
        best = strategy.bind(result.best_knobs)
        recovery = workspace.recovery_config()
        epoch_bar, update = _epoch_progress("final recovery", max(1, getattr(recovery, "epochs", 1)), quiet)
        with epoch_bar:
            final = workspace.evaluate(best, split="test", progress=update)
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
    runs.write_outputs(out_dir, config, summary, final, workspace.example_input(1).cpu())
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


def export(run_dir: str | Path, *, out: str | None = None, onnx: bool = True, trust_code: bool = False,
           quiet: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Copy a run's packed checkpoint to an export folder and add ``model.onnx`` (QDQ for int weights)."""
    if onnx:
        require("onnx", "onnxruntime", "onnxscript")
    run_dir = Path(run_dir)
    out_dir = runs.check_folder(Path(out) if out else run_dir.with_name(run_dir.name + "-export"))
    model, manifest, config, _ = runs.load_compressed(run_dir, trust_code=trust_code)
    runs.writable_folder(out_dir)  # created only now: a refused export leaves no folder behind
    example = load_splits(config.data).val[0][0].unsqueeze(0) if onnx else None
    manifest = republish(run_dir, out_dir, model, example, manifest)
    atomic_write_json(out_dir / runs.CONFIG, runs.resolved(config))
    if not quiet:
        onnx_note = ""
        if onnx:
            info = manifest["files"].get("model.onnx", {})
            onnx_note = f", model.onnx {format_bytes(info['bytes'])}" if "bytes" in info else f" (no ONNX: {info.get('error')})"
        log(f"exported {run_dir} -> {out_dir} (model.safetensors {format_bytes(manifest['files'][runs.WEIGHTS]['bytes'])}"
            f"{onnx_note})")
    return manifest


def evaluate_export(export_dir: str | Path, *, split: str = "test", device: str | None = None, out: str | None = None,
                    trust_code: bool = False, quiet: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load a packed checkpoint (an export or run folder; safetensors + JSON only) and measure it
    like ``compress`` does. Code its files name runs only with ``trust_code``."""
    export_dir = Path(export_dir)
    if export_dir.is_dir() and not (export_dir / "manifest.json").is_file():
        made_by = "'condensa search' or 'compress'; export it first: condensa export " if (export_dir / runs.RESULT).is_file() else ""
        raise ConfigError(f"{export_dir}: no manifest.json, so not a folder written by 'condensa export'"
                          + (f" (it is the output folder of {made_by}{export_dir})" if made_by else ""))
    config = runs.load_run_config(export_dir, expected="a folder written by 'condensa export'")
    out_path = Path(out) / "eval.json" if out else export_dir / f"eval-{split}.json"
    runs.writable_folder(out_path.parent)
    if device:
        config.device = device
    model, manifest = load(export_dir, trust_code=trust_code)
    runs.attach_quantizers(model, manifest.get("record") or {})
    with reading_file(export_dir / runs.CONFIG, trust_code=trust_code):
        workspace = Workspace.from_config(config, log=log)
    metrics = workspace.measure(model, split)
    result = {"command": "eval", "split": split, **result_summary(metrics), "metrics": metrics,
              "manifest_hash": manifest.get("content_hash") if isinstance(manifest, dict) else None, "versions": versions()}
    atomic_write_json(out_path, result)
    if not quiet:
        log(f"evaluated {export_dir} on the {split} split -> {out_path}")
        log(summary_table(metrics))
    return result


def report(run_dir: str | Path, *, out: str | None = None, quiet: bool = False, log: Callable[[str], None] = print) -> dict[str, Path]:
    require("matplotlib")
    from .report import write_report  # the [report] extra (matplotlib): imported only for reports

    runs.read_result(Path(run_dir))  # a missing or damaged result.json: one line before anything is written
    runs.writable_folder(Path(out) if out else Path(run_dir))
    paths = write_report(run_dir, out)
    if not quiet:
        log(f"wrote {paths['markdown']} and {paths['html']} ({len(paths) - 2} plots)")
    return paths


__all__ = ["compress", "run_search", "export", "evaluate_export", "report", "memorization_report"]

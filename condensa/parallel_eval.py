"""What a parallel ``condensa search`` ships to its Ray tasks: a picklable ``evaluate`` on a Workspace.

The search (``condensa/search/``) knows nothing about workspaces; this module is the glue, like
``pipeline.py`` is for one process. Two ways to run one evaluation (``search.ranks_per_evaluation``):

* ``1`` (default): :class:`WorkspaceEvaluate` holds the workspace (data splits, the reference
  model on the CPU, the reference's validation predictions). ``RayExecutor`` puts it in the object
  store once; every worker process fetches and unpickles it once, moves the reference to the
  device the task was given (Ray sets ``CUDA_VISIBLE_DEVICES`` per task, so ``cuda`` is *its* GPU)
  and evaluates with ``resources_per_evaluation.cpu`` torch threads.
* ``K > 1``: :class:`TorchrunEvaluate` runs each evaluation as a torchrun job of K ranks on the
  K GPUs of its task (``resources_per_evaluation.gpu: K``, or K CPU ranks with gloo when
  ``gpu: 0``): ``python -m torch.distributed.run --standalone --nproc_per_node K -m
  condensa.parallel_eval CONFIG_JSON KNOBS_JSON OUT_JSON``. Each rank rebuilds the workspace and
  the strategy from the config (the reference comes from ``model.checkpoint`` or the model cache,
  which must be on a shared file system on a cluster), binds the knob values, and recovers with
  DDP exactly as under a torchrun-launched ``condensa search``; rank 0 writes the validation
  metrics as JSON. Only JSON crosses the process boundary.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import EvaluationError


class WorkspaceEvaluate:
    """``evaluate(bound) -> validation metrics`` on a workspace, picklable for Ray."""

    def __init__(self, workspace, epochs: int | None) -> None:
        workspace.reference_predictions("val")  # computed once here, shipped with the workspace
        self.device_name = str(workspace.device)
        workspace = copy.copy(workspace)  # the driver's own workspace keeps its device and logger
        workspace._reference_predictions = dict(workspace._reference_predictions)
        workspace.log = _silent
        if next(workspace.reference.parameters()).device.type != "cpu":
            workspace.reference = copy.deepcopy(workspace.reference).cpu()  # the task moves it to its own device
        self.workspace, self.epochs, self._ready = workspace, epochs, False

    def _prepare(self) -> None:
        import torch

        from .device import resolve_device

        ws = self.workspace
        if self.device_name.startswith("cuda"):
            if not torch.cuda.is_available():
                raise EvaluationError(f"this Ray task has no GPU ({self.device_name} requested); "
                                      "set search.resources_per_evaluation.gpu")
            ws.device = resolve_device("cuda")  # the task's own GPU (CUDA_VISIBLE_DEVICES)
        else:
            ws.device = resolve_device(self.device_name)
        ws.reference = ws.reference.to(ws.device).eval()
        self._ready = True

    def __call__(self, bound) -> dict[str, Any]:
        if not self._ready:
            self._prepare()
        return self.workspace.evaluate(bound, split="val", epochs=self.epochs).metrics

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ready"] = False
        return state


def _silent(*_: Any) -> None:
    pass


class TorchrunEvaluate:
    """One evaluation as a torchrun job of ``ranks`` processes (one evaluation, several GPUs)."""

    takes_knobs = True  # called with knob values: each rank binds them to the strategy it rebuilds

    def __init__(self, config_dict: dict[str, Any], ranks: int, cwd: str | None = None,
                 timeout: float | None = None) -> None:
        self.config, self.ranks, self.timeout = config_dict, ranks, timeout
        self.cwd = cwd or os.getcwd()  # relative paths in the config (file.py schemes, data.root) as for the driver

    def __call__(self, knobs: dict[str, Any]) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="condensa-eval-") as tmp:
            tmp = Path(tmp)
            (tmp / "config.json").write_text(json.dumps(self.config))
            (tmp / "knobs.json").write_text(json.dumps(knobs))
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.ranks}",
                       "-m", "condensa.parallel_eval", str(tmp / "config.json"), str(tmp / "knobs.json"),
                       str(tmp / "metrics.json")]
            # a Ray worker may itself carry torchrun variables from its environment; the job makes its own
            env = {k: v for k, v in os.environ.items()
                   if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=self.cwd, timeout=self.timeout)
            if done.returncode != 0 or not (tmp / "metrics.json").is_file():
                tail = " | ".join(done.stderr.strip().splitlines()[-3:])
                raise EvaluationError(f"torchrun evaluation failed (exit {done.returncode}): {tail}")
            return json.loads((tmp / "metrics.json").read_text())


def _main(argv: list[str]) -> int:
    """One evaluation on every rank of a torchrun job; rank 0 writes the metrics."""
    from .config import parse_config
    from .distributed import is_main_process
    from .io import atomic_write_json
    from .pipeline import Workspace

    config_path, knobs_path, out_path = argv
    config = parse_config(json.loads(Path(config_path).read_text()))
    workspace = Workspace.from_config(config, log=_silent)
    bound = workspace.strategy.bind(json.loads(Path(knobs_path).read_text()))
    metrics = workspace.evaluate(bound, split="val", epochs=config.search.eval_epochs).metrics
    if is_main_process():
        atomic_write_json(Path(out_path), metrics)
    return 0


def executor_factory(config, workspace, log):
    """``f(evaluate, workers) -> RayExecutor`` for ``condensa search``: Ray starts only if the
    journal leaves work to do, and each task gets a picklable evaluate instead of the CLI's closure."""
    search_cfg = config.search

    def make(_evaluate, workers):
        from .search.executors import RayExecutor

        if search_cfg.ranks_per_evaluation > 1:
            evaluate = TorchrunEvaluate(config.to_dict(), search_cfg.ranks_per_evaluation)
        else:
            evaluate = WorkspaceEvaluate(workspace, search_cfg.eval_epochs)
        return RayExecutor(evaluate, workers, address=search_cfg.ray_address,
                           resources=search_cfg.resources_per_evaluation, log=log)

    return make


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

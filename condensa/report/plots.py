"""Plots of a finished run (matplotlib, Agg backend: works without a display).

Each function takes the parsed ``result.json`` and writes one PNG, returning its path, or None
when the run has nothing to show for that plot (e.g. no search trace for ``compress``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

from ..search import constraint_band

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FEASIBLE, INFEASIBLE, ACCENT = "#1b9e77", "#d95f02", "#7570b3"


def _evaluations(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in result.get("search", {}).get("evaluations", []) if e.get("status", "ok") == "ok"]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _gp_band(xs: list[float], ys: list[float], log: bool, bound: float):
    """Posterior mean and 2-sigma band of the search's own constraint model along the knob."""
    tx = [math.log(x) if log else x for x in xs]
    lo, hi = min(tx), max(tx)
    if hi <= lo:
        return None
    grid = [i / 199 for i in range(200)]
    band = constraint_band([(t - lo) / (hi - lo) for t in tx], ys, bound, grid)
    if band is None:
        return None
    grid_x = [lo + g * (hi - lo) for g in grid]
    grid_x = [math.exp(g) for g in grid_x] if log else grid_x
    return (grid_x, *band)


def search_trace(result: dict[str, Any], out: Path) -> Path | None:
    """Left: first knob vs the first constraint metric with the GP band and the bound.
    Right: objective of each evaluation in order, best feasible so far as a line."""
    evaluations = _evaluations(result)
    constraints = result.get("constraints") or []
    if not evaluations or not constraints:
        return None
    knob = next(iter(evaluations[0]["knobs"]))
    metric, bound = constraints[0]["metric"], float(constraints[0]["upper"])
    xs = [float(e["knobs"][knob]) for e in evaluations if isinstance(e["knobs"][knob], (int, float))]
    ys = [float(e["metrics"][metric]) for e in evaluations if isinstance(e["knobs"][knob], (int, float))]
    feasible = [bool(e.get("feasible")) for e in evaluations]
    log = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 20
    best_knobs = result.get("search", {}).get("best_knobs")
    chosen = next((i for i, e in enumerate(evaluations) if best_knobs and e.get("feasible") and e["knobs"] == best_knobs), None)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if xs:
        band = _gp_band(xs, ys, log, bound)
        if band is not None:
            gx, mean, low, high = band
            left.fill_between(gx, low, high, color=ACCENT, alpha=0.15, label="constraint model: mean ± 2σ")
            left.plot(gx, mean, color=ACCENT, lw=1.5)
        left.scatter([x for x, f in zip(xs, feasible) if f], [y for y, f in zip(ys, feasible) if f],
                     color=FEASIBLE, zorder=3, label="feasible")
        left.scatter([x for x, f in zip(xs, feasible) if not f], [y for y, f in zip(ys, feasible) if not f],
                     color=INFEASIBLE, marker="x", zorder=3, label="infeasible")
        if chosen is not None and chosen < len(xs):
            left.scatter([xs[chosen]], [ys[chosen]], s=160, facecolors="none", edgecolors="black", zorder=4, label="chosen")
        for i, (x, y) in enumerate(zip(xs, ys)):
            left.annotate(str(evaluations[i]["index"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        left.axhline(bound, color="black", ls="--", lw=1, label=f"bound {metric} ≤ {bound:g}")
        # Zoom on the boundary: far-off points (e.g. a collapsed model) would flatten the picture.
        top = max(4 * bound, 3.0) if bound > 0 else max(ys) + 1
        in_view = [y for y in ys if y <= top]
        bottom = min(in_view + [0.0]) - 0.1 * top
        left.set_ylim(bottom, top)
        for x, y in zip(xs, ys):
            if y > top:
                left.annotate(f"↑ {y:.3g}", (x, top), textcoords="offset points", xytext=(0, -12), ha="center",
                              fontsize=7, color=INFEASIBLE)
        if log:
            left.set_xscale("log")
    left.set_xlabel(knob)
    left.set_ylabel(metric)
    left.set_title("Constraint vs knob (numbers = evaluation order; ↑ = off scale)")
    left.legend(fontsize=8)
    objective = result.get("objective", {}).get("metric", "objective")
    values = [float(e["objective"]) for e in evaluations]
    order = [int(e["index"]) for e in evaluations]
    right.scatter(order, values, c=[FEASIBLE if f else INFEASIBLE for f in feasible], zorder=3)
    pick = min if result.get("objective", {}).get("direction", "minimize") == "minimize" else max
    best, best_line = None, []
    for value, ok in zip(values, feasible):
        if ok:
            best = value if best is None else pick(best, value)
        best_line.append(float("nan") if best is None else best)
    right.plot(order, best_line, color="black", lw=1, drawstyle="steps-post", label="best feasible so far (as measured)")
    if chosen is not None:
        right.scatter([order[chosen]], [values[chosen]], s=160, facecolors="none", edgecolors="black", zorder=4,
                      label="chosen (feasible as measured and by the model)")
    if values and min(values) > 0 and max(values) / min(values) > 5:
        right.set_yscale("log")
    right.set_xlabel("evaluation (green = feasible, orange = infeasible)")
    right.set_ylabel(objective)
    right.set_title("Objective per evaluation")
    right.legend(fontsize=8)
    return _save(fig, out)


def accuracy_vs_ratio(result: dict[str, Any], out: Path) -> Path | None:
    """Accuracy drop and mismatch rate of every evaluation against its compression ratio."""
    evaluations = _evaluations(result)
    points = [(e["metrics"]["compression_ratio"], e["metrics"]["accuracy_drop"], e["metrics"]["mismatch_rate"])
              for e in evaluations if "compression_ratio" in e["metrics"]]
    if "test" in result:
        final = result["test"]
    else:
        final = None
    if not points and final is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], color=ACCENT, label="accuracy drop (pts, validation)")
        ax.scatter([p[0] for p in points], [p[2] for p in points], color=INFEASIBLE, marker="s", label="mismatch rate (%, validation)")
    if final is not None:
        ax.scatter([final["compression_ratio"]], [final["accuracy_drop"]], color="black", marker="*", s=160,
                   label="final model: accuracy drop (test)")
        ax.scatter([final["compression_ratio"]], [final["mismatch_rate"]], color="black", marker="P", s=90,
                   label="final model: mismatch rate (test)")
    ax.axhline(0, color="grey", lw=0.8)
    values = [v for p in points for v in p[1:]]
    if values and max(values) > 10:
        ax.set_yscale("symlog", linthresh=2.0)  # linear near the bound, compressed far above it
        ax.set_ylim(min(values + [0.0]) - 0.3, max(values) * 2)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (fp32 bytes / compressed bytes, log scale)")
    ax.set_ylabel("points / percent (symmetric log above 2)" if values and max(values) > 10 else "points / percent")
    ax.set_title("Accuracy and label mismatches vs compression")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out)


def per_class_mismatches(result: dict[str, Any], out: Path, most: int = 40) -> Path | None:
    """Mismatch rate per true class of the final model on the test split: every class, or the
    ``most`` classes with the most mismatches when there are more (a language model's characters
    or tokens), named when the result names them (``metrics.fidelity.NAMED_CLASSES``, also 40, names
    the most flipped: reports read result files and do not import the metrics package)."""
    test = result.get("test") or {}
    rates = test.get("per_class_mismatch_rate")
    if not rates:
        return None
    counts, names = test.get("per_class_mismatches") or {}, test.get("class_names") or {}
    bias = test.get("mismatch_bias") or 0.0
    # the mean over classes present in the split, as mismatch_bias (= worst / mean) defines it
    mean = max(rates.values()) / bias if bias > 0 else sum(rates.values()) / len(rates)
    classes = list(rates)
    if len(classes) > most:
        classes = sorted(sorted(classes, key=lambda c: -counts.get(c, 0))[:most], key=int)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(classes)), 4))
    ax.bar([names.get(c, c) for c in classes], [rates[c] for c in classes], color=ACCENT)
    ax.axhline(mean, color="black", ls="--", lw=1, label=f"mean class rate {mean:.2f}%")
    ax.set_xlabel("true class" if len(classes) == len(rates) else f"true class: the {len(classes)} of {len(rates)} with most mismatches")
    ax.set_ylabel("mismatch rate (%)")
    ax.set_title(f"Mismatches vs the reference, by true class (test split)\n"
                 f"bias = worst class rate / mean rate = {bias:.2f}", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out)


def layer_densities(result: dict[str, Any], out: Path) -> Path | None:
    """Density (kept fraction) and value bits of every compressed tensor of the final model."""
    record = result.get("record")
    if not record:
        return None
    names = list(record)
    densities = [record[n]["density"] for n in names]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.32 * len(names) + 1)))
    bars = ax.barh(names, densities, color=ACCENT)
    for bar, name in zip(bars, names):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {record[name]['density']:.3f} · {record[name]['bits']} bit",
                va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("density (fraction of weights kept)")
    ax.set_title("Per-layer density of the final model")
    return _save(fig, out)


def memorization_plot(result: dict[str, Any], out: Path) -> Path | None:
    """Memorization scores of flipped examples vs the rest (when the run measured them)."""
    memo = result.get("memorization")
    if not memo or "flipped_scores" not in memo:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    bins = [i / 20 for i in range(-20, 21)]
    ax.hist(memo["other_scores"], bins=bins, density=True, alpha=0.6, color=ACCENT, label="not flipped")
    ax.hist(memo["flipped_scores"], bins=bins, density=True, alpha=0.6, color=INFEASIBLE, label="flipped")
    ax.set_xlabel("memorization score (Feldman-Zhang)")
    ax.set_ylabel("density")
    ax.set_title(f"Memorization of flipped vs other training examples (p = {memo.get('p_value', float('nan')):.3g})")
    ax.legend(fontsize=8)
    return _save(fig, out)


def lc_convergence(result: dict[str, Any], out: Path) -> Path | None:
    """L-C of the final model: distance of the weights from their compressed form and the penalty
    weight mu per C step. A distance that is still high at the end means L-C had too few steps."""
    trace = (result.get("test") or {}).get("lc_trace")
    if not trace:
        return None
    steps = [t["step"] for t in trace]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(steps, [t["distance"] for t in trace], marker="o", color=ACCENT, label="||w - Δ(θ)|| / ||w||")
    ax.set_xlabel("training step of the C step")
    ax.set_ylabel("relative distance (log)")
    ax.set_yscale("log")
    mu_axis = ax.twinx()
    mu_axis.plot(steps, [t["mu"] for t in trace], ls="--", color=INFEASIBLE, label="μ")
    mu_axis.set_ylabel("μ (log)")
    mu_axis.set_yscale("log")
    ax.set_title(f"L-C convergence of the final model (final distance {trace[-1]['distance']:.3g})")
    lines = ax.get_legend_handles_labels()
    more = mu_axis.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8)
    return _save(fig, out)


PLOTS = [
    ("search-trace.png", "Search trace", search_trace),
    ("accuracy-vs-ratio.png", "Accuracy and mismatches vs compression ratio", accuracy_vs_ratio),
    ("per-class-mismatches.png", "Per-class mismatches", per_class_mismatches),
    ("layer-density.png", "Per-layer density", layer_densities),
    ("memorization.png", "Memorization vs flipped examples", memorization_plot),
    ("lc-convergence.png", "L-C convergence", lc_convergence),
]

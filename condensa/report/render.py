"""``condensa report RUN_DIR``: report.md and a self-contained report.html with PNG plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write_text, read_json_object
from .plots import PLOTS


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    test = result.get("test") or {}
    rows = []
    if result.get("command") == "search":
        rows.append(("evaluations", _fmt(result.get("samples"))))
        rows.append(("feasible", "yes" if result.get("feasible") else "no"))
        if result.get("knobs"):
            rows.append(("chosen knobs", ", ".join(f"{k} = {_fmt(v)}" for k, v in result["knobs"].items())))
    language_model = len(test.get("per_class_mismatch_rate", {})) > 20 or any(
        c.get("metric", "").startswith("perplexity") for c in result.get("constraints") or [])
    for key, label in [
        ("reference_accuracy", "reference accuracy (%)"), ("accuracy", "accuracy (%)"), ("accuracy_drop", "accuracy drop (pts)"),
        ("perplexity", "perplexity"), ("mismatches", "mismatches"), ("mismatches_ref_correct", "… where the reference was right"),
        ("mismatch_rate", "mismatch rate (%)"), ("mismatch_bias", "mismatch bias (worst / mean class)"),
        ("density", "density"), ("footprint_bytes", "footprint (bytes)"), ("reference_bytes", "fp32 reference (bytes)"),
        ("compression_ratio", "compression ratio"), ("flops_effective", "effective FLOPs"), ("flops_dense", "dense FLOPs"),
        ("latency_ms", "latency (ms)"),
    ]:
        if key == "perplexity" and not language_model:
            continue  # exp(cross-entropy) of a classifier confuses more than it tells
        if key in test:
            rows.append((label, _fmt(test[key])))
    return rows


def _evaluation_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    constraints = [c["metric"] for c in result.get("constraints") or []]
    set_aside = set(result.get("search", {}).get("set_aside", []))
    for e in result.get("search", {}).get("evaluations", []):
        knobs = ", ".join(f"{k}={_fmt(v)}" for k, v in e.get("knobs", {}).items())
        metrics = e.get("metrics") or {}
        rows.append([str(e.get("index")), knobs] + [_fmt(metrics.get(c, "")) for c in constraints]
                    + [_fmt(e.get("objective", "")), _fmt(metrics.get("compression_ratio", "")),
                       _feasible_label(e, set_aside)])
    return rows


def _feasible_label(evaluation: dict[str, Any], set_aside: set[int]) -> str:
    if evaluation.get("status", "ok") != "ok":
        return "failed"
    if not evaluation.get("feasible"):
        return "no"
    return "yes, set aside as noise" if evaluation.get("index") in set_aside else "yes"


def _exemplar_rows(result: dict[str, Any]) -> list[list[str]]:
    test = result.get("test") or {}
    names = test.get("class_names") or {}

    def named(c: int) -> str:  # a language model's class is a character or token: show it beside its id
        return f"{names[str(c)]} ({c})" if str(c) in names else str(c)

    return [[str(x["id"]), named(x["label"]), named(x["reference_pred"]), named(x["compressed_pred"]),
             f"{x['reference_confidence']:.3f}", f"{x['compressed_confidence']:.3f}"]
            for x in test.get("exemplars", [])[:10]]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]  # a class named "|"
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.4em 0}.note{color:#555;font-size:.9em}"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write plots, report.md and report.html for a result folder; returns their paths."""
    run_dir = Path(run_dir)
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        raise ConfigError(f"{run_dir}: no result.json; expected the output folder of 'condensa search' or 'condensa compress'")
    result = read_json_object(result_path)
    out_dir = Path(out) if out else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    for filename, title, function in PLOTS:
        path = function(result, out_dir / filename)
        if path is not None:
            plots.append((title, path))
    strategy = json.dumps(result.get("strategy"), indent=1)
    title = f"condensa {result.get('command', 'run')} report — {run_dir.name}"
    summary = _summary_rows(result)
    evaluations = _evaluation_rows(result)
    constraints = [c["metric"] for c in result.get("constraints") or []]
    eval_header = ["#", "knobs"] + constraints + [result.get("objective", {}).get("metric", "objective"), "ratio", "feasible"]
    exemplars = _exemplar_rows(result)
    ex_header = ["example id", "true label", "reference", "compressed", "ref. confidence", "comp. confidence"]
    md = [f"# {title}", "", "Figures on the test split unless marked validation.", "", _md_table(["", "value"], [list(r) for r in summary])]
    if evaluations:
        md += ["", "## Search evaluations (validation split)", "", _md_table(eval_header, evaluations)]
    if exemplars:
        md += ["", "## Most confident reference answers that changed", "", _md_table(ex_header, exemplars)]
    for plot_title, path in plots:
        md += ["", f"## {plot_title}", "", f"![{plot_title}]({path.name})"]
    md += ["", "## Strategy", "", "```json", strategy, "```", ""]
    md_path = out_dir / "report.md"
    atomic_write_text(md_path, "\n".join(md))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class='note'>Figures on the test split unless marked validation.</p>",
             _html_table(["", "value"], [list(r) for r in summary])]
    if evaluations:
        parts += ["<h2>Search evaluations (validation split)</h2>", _html_table(eval_header, evaluations)]
    if exemplars:
        parts += ["<h2>Most confident reference answers that changed</h2>", _html_table(ex_header, exemplars)]
    for plot_title, path in plots:
        data = base64.b64encode(path.read_bytes()).decode()
        parts += [f"<h2>{html.escape(plot_title)}</h2>", f"<img alt='{html.escape(plot_title)}' src='data:image/png;base64,{data}'>"]
    parts += ["<h2>Strategy</h2>", f"<pre>{html.escape(strategy)}</pre>", "</body></html>"]
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, "".join(parts))
    return {"markdown": md_path, "html": html_path, **{p.stem: p for _, p in plots}}

"""What the commands print: the summary of one compressed model and the search trace."""

from __future__ import annotations

from typing import Any

from .search import FALLBACK


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return str(n)


def summary_table(metrics: dict[str, Any]) -> str:
    rows = [
        *([("predictions", f"{metrics['predictions']:,} labels compared")] if "predictions" in metrics else []),
        ("accuracy", f"{metrics['accuracy']:.2f}% (reference {metrics['reference_accuracy']:.2f}%, drop {metrics['accuracy_drop']:+.2f} pts)"),
        ("mismatches", f"{metrics['mismatches']} ({metrics['mismatch_rate']:.2f}%), {metrics['mismatches_ref_correct']} where the reference was right"),
        ("density", f"{metrics['density']:.4f}"),
        ("footprint", f"{format_bytes(metrics['footprint_bytes'])} vs {format_bytes(metrics['reference_bytes'])} fp32 -> {metrics['compression_ratio']:.1f}x smaller"),
        ("FLOPs", f"{metrics['flops_effective']:.3g} effective / {metrics['flops_dense']:.3g} dense"),
    ]
    if "latency_ms" in metrics:
        rows.append(("latency", f"{metrics['latency_ms']:.3f} ms (batch {metrics['latency_batch_size']}, {metrics['latency_threads']} threads)"))
    return _table(rows)


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
    for ev in evaluations:
        if getattr(ev, "proposal", "").startswith(FALLBACK):
            lines.append(f"  #{ev.index} was proposed by a {ev.proposal}")
    return "\n".join(lines)


def _feasible_mark(evaluation: Any, set_aside: Any) -> str:
    if not evaluation.feasible:
        return "no"
    return "yes?" if evaluation.index in set_aside else "yes"


__all__ = ["summary_table", "evaluations_table", "format_bytes"]

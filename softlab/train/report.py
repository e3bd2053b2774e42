"""Tables in the terminal and the HTML report of a demo or a comparison (figures from :mod:`softlab.viz`)."""
from __future__ import annotations

import html
from pathlib import Path


def _fmt(value, spec: str = ".4f") -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):
        if value.get("mean") is None:
            return "–"
        return f"{value['mean']:{spec}} ± {value['std']:{spec}}"
    return f"{value:{spec}}"


def table_rows(summary: dict) -> list[list[str]]:
    """Header + one row per method (+ the teacher) as strings."""
    header = ["method", "test top-1", "ECE", "NLL", "agree w/ teacher", "wall s", "img/s", "teacher fwd"]
    rows = [header]
    for name, m in summary["methods"].items():
        rows.append([name, _fmt(m["test_top1"]), _fmt(m["test_ece"]), _fmt(m["test_nll"]),
                     _fmt(m["teacher_agreement"]), _fmt(m["wall_seconds"], ".1f"), _fmt(m["images_per_s"], ".0f"),
                     f"{m['teacher_forwards']:,}"])
    t = summary["teacher"]
    rows.append([f"(teacher {t['spec']})", _fmt(t["top1"]), _fmt(t["ece"]), _fmt(t["nll"]), "", "", "", ""])
    return rows


def print_table(summary: dict) -> None:
    rows = table_rows(summary)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    budget = summary["budget"]
    seeds = f"seeds {summary['seeds']}" if "seeds" in summary else f"seed {summary['seed']}"
    print(f"\n{summary['kind']} ({summary['mode']}): {budget['train_images']} training images, {budget['epochs']} "
          f"epochs = {budget['steps']} steps of {budget['images_per_step']} images × "
          f"{budget['crops_per_image_per_step']} crops, student {budget['student']}, {seeds}; "
          f"test on {summary['test_images']} images")
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        if index == 0:
            print("  ".join("-" * w for w in widths))


def print_calibration(stats: dict) -> None:
    s, f = stats["calibration"], stats["fractions"]
    print(f"FerKD calibration ({s['mode']}): T_L={s['t_low']} T_M={s['t_mid']} T_T={s['t_top']} ε={s['epsilon']}: "
          f"discarded hard {f['discarded_hard']:.1%}, hard {f['hard']:.1%}, important {f['important']:.1%}, "
          f"discarded easy {f['discarded_easy']:.1%}; images with no kept crop: {stats['images_without_kept_crops']}")


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return (f'<table style="border-collapse:collapse" border="1" cellpadding="4"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _intro(summary: dict) -> str:
    b = summary["budget"]
    text = (f"{b['train_images']} Fashion-MNIST training images, {b['epochs']} epochs = {b['steps']} steps of "
            f"{b['images_per_step']} images × {b['crops_per_image_per_step']} crops for every method; student "
            f"{b['student']}; test split: {summary['test_images']} images. Teacher forwards: stored-label methods "
            "spend them once at label generation, KD at every step.")
    calibration = summary.get("calibration")
    if calibration:
        s = calibration["settings"]
        text += (f" FerKD thresholds ({s['mode']}): T_L={s['t_low']}, T_M={s['t_mid']}, T_T={s['t_top']}, "
                 f"ε={s['epsilon']}; {calibration['kept_fraction']:.1%} of the stored crops are kept.")
    return f"<p>{html.escape(text)}</p>{_html_table(table_rows(summary))}"


def _zoomed(figure, bars: dict):
    """Start the bars' axis a little below the lowest mean, so that differences of a point are visible."""
    means = [b["mean"] for b in bars.values() if b.get("mean") is not None]
    if means:
        figure.update_yaxes(range=[max(0.0, min(means) - 0.05), min(1.0, max(means) + 0.02)])
    return figure


def write_run_report(path, summary: dict) -> Path:
    """``report.html`` for a demo or comparison summary: accuracy-vs-epoch per method, the top-1 comparison,
    and a reliability diagram per method and for the teacher (one self-contained offline file)."""
    from ..viz import accuracy_curves, comparison_bars, reliability_diagram, write_report

    methods = summary["methods"]
    histories = {name: m["history"] for name, m in methods.items()}
    bars = {name: m["test_top1"] if isinstance(m["test_top1"], dict) else {"mean": m["test_top1"], "std": None}
            for name, m in methods.items()}
    figures = [("Accuracy, loss and calibration by epoch",
                accuracy_curves(histories, metrics=["test_top1", "train_loss", "test_ece", "train_top1"],
                                title="Test top-1, train loss, ECE by epoch")),
               ("Test top-1 by method", _zoomed(comparison_bars(bars, "test_top1"), bars))]
    which = f" (seed {summary['seeds'][0]})" if summary.get("seeds") else ""
    for name, m in methods.items():
        if m.get("reliability"):
            figures.append((f"Reliability diagram: {name}{which}", reliability_diagram(m["reliability"], title=name)))
    if summary["teacher"].get("reliability"):
        figures.append(("Reliability diagram: teacher",
                        reliability_diagram(summary["teacher"]["reliability"], title="teacher")))
    title = f"softlab {summary['kind']} ({summary['mode']} mode)"
    return write_report(path, figures, title=title, intro_html=_intro(summary))

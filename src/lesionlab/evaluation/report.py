"""One evaluation's report, built once as a list of blocks and rendered to Markdown and to self-contained
HTML, so the two can never disagree.

Everything shown comes from the `metrics.json` payload (plus the figure files): a report can be re-rendered
from an evaluation directory without the model. The HTML embeds its figures as base64 data URIs and its CSS
inline, so it opens anywhere, offline, as one file.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lesionlab.classes import CLASSES
from lesionlab.tables import Table, format_table

VARIANT_TITLES: dict[str, str] = {
    "plain": "plain",
    "tta": "+TTA",
    "temperature": "+temperature",
    "tta+temperature": "+both (TTA and temperature)",
}
INTERVAL_TITLES: dict[str, str] = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy (ISIC 2018 metric)",
    "macro_f1": "macro F1",
}
CLASS_NAMES = {c.code: c.name for c in CLASSES}
MALIGNANCY_ROC_CAPTION = (
    "ROC curve, malignant (akiec, bcc, mel) vs benign, on the summed malignant probability"
)


@dataclass(frozen=True)
class Heading:
    """A section title."""

    text: str


@dataclass(frozen=True)
class Paragraph:
    """Plain prose (no markup, escaped in HTML)."""

    text: str


@dataclass(frozen=True)
class Preformatted:
    """Fixed-width text, such as scikit-learn's classification report."""

    text: str


@dataclass(frozen=True)
class Image:
    """A figure file, referenced by its path relative to the report."""

    relative_path: str
    caption: str


Block = Heading | Paragraph | Table | Preformatted | Image


@dataclass(frozen=True)
class Report:
    """A titled sequence of blocks."""

    title: str
    blocks: tuple[Block, ...]


def number(value: float | None, digits: int = 3) -> str:
    """A metric for display; undefined values show as an em dash rather than 'None' or 'nan'."""
    return "—" if value is None else f"{value:.{digits}f}"


def with_interval(interval: dict[str, float]) -> str:
    """`0.712 (0.690–0.735)`: an estimate with its bootstrap interval."""
    return f"{interval['estimate']:.3f} ({interval['low']:.3f}–{interval['high']:.3f})"


def headline_table(metrics: dict[str, Any]) -> Table:
    """Accuracy, balanced accuracy and macro F1 with 95% intervals, then calibration and ranking figures."""
    intervals = metrics["confidence_intervals"]
    level = f"{intervals['level']:.0%}"
    rows = [(title, with_interval(intervals[name])) for name, title in INTERVAL_TITLES.items()]
    rows += [
        ("weighted F1", number(metrics["weighted_f1"])),
        ("macro ROC AUC (one-vs-rest)", number(metrics["roc_auc_macro"])),
        (f"expected calibration error ({metrics['ece_bins']} bins)", number(metrics["ece"])),
        ("negative log-likelihood", number(metrics["nll"])),
    ]
    return Table(("metric", f"value ({level} interval)"), tuple(rows))


def malignancy_table(metrics: dict[str, Any]) -> Table:
    """Malignant vs benign as a clinician asks it: the flag's sensitivity and specificity at the threshold,
    ROC AUC, and melanoma's sensitivity at fixed specificities, with their intervals."""
    malignancy = metrics["malignancy"]
    origin = "fitted on val" if malignancy["threshold_fitted"] else "fallback"
    threshold = f"{malignancy['threshold']:.3f} ({origin})"
    rows = [
        ("images: malignant / benign", f"{malignancy['malignant_images']} / {malignancy['benign_images']}"),
        ("threshold on the malignant probability", threshold),
    ]
    for key, title in (("sensitivity", "sensitivity at the threshold"),
                       ("specificity", "specificity at the threshold"), ("roc_auc", "ROC AUC")):
        rows.append((title, with_interval(malignancy[key]) if key in malignancy else "—"))
    melanoma = malignancy.get("melanoma")
    rows.append(("melanoma ROC AUC (p(mel))", with_interval(melanoma["roc_auc"]) if melanoma else "—"))
    for specificity, interval in (melanoma or {}).get("sensitivity_at_specificity", {}).items():
        rows.append((f"melanoma sensitivity at specificity {specificity}", with_interval(interval)))
    level = f"{metrics['confidence_intervals']['level']:.0%}"
    return Table(("malignant (akiec, bcc, mel) vs benign", f"value ({level} interval)"), tuple(rows))


def recall_table(metrics: dict[str, Any]) -> Table:
    """Recall (sensitivity) per class: what a clinician checks first for melanoma and the rare classes."""
    per_class = metrics["per_class"]
    return Table(
        ("class", "recall", "support"),
        tuple((code, number(row["recall"]), str(row["support"])) for code, row in per_class.items()),
    )


def per_class_table(metrics: dict[str, Any]) -> Table:
    """The reference's per-class table extended with support, ROC AUC and notes on undefined values."""
    rows = []
    for code, row in metrics["per_class"].items():
        rows.append(
            (
                code,
                CLASS_NAMES.get(code, code),
                str(row["support"]),
                number(row["precision"]),
                number(row["recall"]),
                number(row["f1"]),
                number(row["accuracy"]),
                number(row["roc_auc"]),
                row.get("note", ""),
            )
        )
    return Table(
        (
            "class",
            "name",
            "support",
            "precision",
            "recall (sensitivity)",
            "F1",
            "accuracy (one-vs-rest)",
            "ROC AUC",
            "note",
        ),
        tuple(rows),
        numeric_from=2,
        numeric_to=8,
    )


def variants_table(variants: dict[str, dict[str, float | None]]) -> Table:
    """Plain against +TTA, +temperature and both: what each option changes, side by side."""
    rows = tuple(
        (
            VARIANT_TITLES[name],
            number(row["accuracy"]),
            number(row["balanced_accuracy"]),
            number(row["macro_f1"]),
            number(row["roc_auc_macro"]),
            number(row["ece"]),
            number(row["nll"]),
        )
        for name, row in variants.items()
    )
    return Table(
        ("variant", "accuracy", "balanced accuracy", "macro F1", "macro ROC AUC", "ECE", "NLL"), rows
    )


def data_table(data: dict[str, Any], class_codes: Sequence[str]) -> Table:
    """Images per class in each part of the run's split and in the evaluated data."""
    columns = {**data["split_parts"], f"evaluated ({data['evaluated_name']})": data["evaluated"]}
    rows = [(code, *(str(counts.get(code, 0)) for counts in columns.values())) for code in class_codes]
    rows.append(("total", *(str(sum(counts.values())) for counts in columns.values())))
    return Table(("class", *columns), tuple(rows))


def model_table(model: dict[str, Any]) -> Table:
    """The facts a reader needs to judge the model's cost and provenance."""
    seconds = model.get("training_seconds")
    rows = (
        ("architecture", model["arch"]),
        ("parameters (total)", f"{model['parameters']:,}"),
        ("parameters (trainable in the last stage)", _optional_count(model.get("trainable_parameters"))),
        ("FLOPs per image (2 x multiply-adds)", f"{model['flops_per_image'] / 1e6:,.1f} M"),
        (
            "input",
            f"{model['input_size']} x {model['input_size']} {'grayscale' if model['grayscale'] else 'RGB'}, "
            f"mean {model['mean']}, std {model['std']}",
        ),
        ("checkpoint", f"stage {model['stage']}, epoch {model['epoch']}"),
        ("training time", "—" if seconds is None else f"{seconds / 60:.1f} min"),
    )
    return Table(("fact", "value"), rows, numeric_from=2)


def build_report(metrics: dict[str, Any], figures: dict[str, str]) -> Report:
    """Assemble the report from a metrics.json payload and figure paths relative to the report."""
    evaluation = metrics["evaluation"]
    intervals = metrics["confidence_intervals"]
    blocks: list[Block] = [
        Paragraph(
            f"Run {evaluation['run']} evaluated on {evaluation['dataset']} ({evaluation['split']}, "
            f"{metrics['samples']} images) on {evaluation['created']}. Predictions: "
            f"{evaluation['variant_description']}."
        ),
        *_overlap_warning(evaluation["training_overlap"]),
        Heading("Headline"),
        headline_table(metrics),
        Paragraph(
            f"Intervals: {intervals['method']}, {intervals['resamples']} resamples "
            f"(seed {intervals['seed']}), resampling by {intervals['unit']} "
            f"({intervals['clusters']} clusters). "
            f"Balanced accuracy and macro F1 average over the classes present in the evaluated data "
            f"({', '.join(metrics['classes_present'])})."
        ),
        recall_table(metrics),
        Heading("Malignant vs benign"),
        malignancy_table(metrics),
        Paragraph(
            f"Each image scores {metrics['malignancy']['score']}; it is flagged malignant when that reaches "
            f"the threshold. {evaluation.get('malignancy_note', metrics['malignancy']['rule'])} Intervals "
            f"resample by {intervals['unit']}, as above."
        ),
        *_figure(figures, MALIGNANCY_ROC_CAPTION),
    ]
    if len(metrics["variants"]) > 1:
        blocks += [
            Heading("Test-time augmentation and temperature scaling"),
            variants_table(metrics["variants"]),
            Paragraph(evaluation["calibration_note"]),
        ]
    blocks += [
        Heading("Per class"),
        per_class_table(metrics),
        Paragraph(
            "Accuracy (one-vs-rest) is (TP + TN) / N for each class taken against the rest; the reference's "
            "per-class 'Accuracy' column equals recall, which is listed separately here."
        ),
        Preformatted(metrics["classification_report"]),
        *_absent_classes_note(metrics),
        Heading("Data"),
        data_table(metrics["data"], metrics["classes"]),
        Heading("Model"),
        model_table(metrics["model"]),
        Heading("Figures"),
    ]
    blocks += [Image(path, caption) for caption, path in figures.items() if caption != MALIGNANCY_ROC_CAPTION]
    return Report(
        f"Evaluation: {evaluation['run']} on {evaluation['dataset']}-{evaluation['split']}", tuple(blocks)
    )


def render_markdown(report: Report) -> str:
    """GitHub-flavoured Markdown; figures referenced by relative path."""
    lines = [f"# {report.title}", ""]
    for block in report.blocks:
        match block:
            case Heading(text):
                lines += [f"## {text}", ""]
            case Paragraph(text):
                lines += [text, ""]
            case Table(headers, rows):
                lines.append("| " + " | ".join(_markdown_cell(h) for h in headers) + " |")
                lines.append(
                    "| "
                    + " | ".join("---:" if block.is_numeric(i) else "---" for i in range(len(headers)))
                    + " |"
                )
                lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in rows]
                lines.append("")
            case Preformatted(text):
                lines += ["```", text.rstrip("\n"), "```", ""]
            case Image(path, caption):
                lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def render_html(report: Report, base_dir: Path) -> str:
    """One self-contained HTML page: inline CSS, figures embedded as base64 PNG data URIs, no external
    resource."""
    parts = [f"<h1>{html.escape(report.title)}</h1>"]
    for block in report.blocks:
        match block:
            case Heading(text):
                parts.append(f"<h2>{html.escape(text)}</h2>")
            case Paragraph(text):
                parts.append(f"<p>{html.escape(text)}</p>")
            case Table(headers, rows):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
                body = "".join(
                    "<tr>"
                    + "".join(
                        f"<td{' class=num' if block.is_numeric(i) else ''}>{html.escape(c)}</td>"
                        for i, c in enumerate(row)
                    )
                    + "</tr>"
                    for row in rows
                )
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            case Preformatted(text):
                parts.append(f"<pre>{html.escape(text)}</pre>")
            case Image(path, caption):
                encoded = base64.b64encode((base_dir / path).read_bytes()).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def console_summary(metrics: dict[str, Any], with_classification_report: bool = True) -> str:
    """The end-of-command text: optionally scikit-learn's classification report in the reference's layout,
    then the headline metrics with intervals, recall per class, and the plain/TTA/temperature comparison."""
    sections = [metrics["classification_report"].rstrip("\n")] if with_classification_report else []
    sections += [format_table(headline_table(metrics)), format_table(recall_table(metrics)),
                 format_table(malignancy_table(metrics))]
    if len(metrics["variants"]) > 1:
        sections.append(format_table(variants_table(metrics["variants"])))
    return "\n\n".join(sections)


def _figure(figures: dict[str, str], caption: str) -> list[Block]:
    """The figure with this caption, where it was drawn."""
    return [Image(figures[caption], caption)] if caption in figures else []


def _absent_classes_note(metrics: dict[str, Any]) -> list[Block]:
    """Explain why the report's macro row differs from the headline when some classes are absent."""
    absent = [code for code in metrics["classes"] if code not in metrics["classes_present"]]
    if not absent:
        return []
    return [
        Paragraph(
            f"No {', '.join(absent)} images here: scikit-learn's report above averages over every class, "
            f"counting those as 0, while the headline's balanced accuracy and macro F1 average over the "
            f"{len(metrics['classes_present'])} classes present."
        )
    ]


def _overlap_warning(overlap: dict[str, int]) -> list[Block]:
    """A warning paragraph when the evaluated images (or their lesions) were trained on."""
    if not overlap["images"] and not overlap["lesions"]:
        return []
    return [
        Paragraph(
            f"Warning: {overlap['images']} of the evaluated images and {overlap['lesions']} of their lesions "
            f"were in the run's training part, so these metrics are optimistic."
        )
    ]


def _markdown_cell(text: str) -> str:
    """Escape what would break a Markdown table row."""
    return text.replace("|", "\\|").replace("\n", " ")


def _optional_count(value: int | None) -> str:
    """A parameter count, or a dash where it is not known."""
    return "—" if value is None else f"{value:,}"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}h2{font-size:1.25em;margin-top:1.8em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f2f4f7}
td.num{text-align:right;font-variant-numeric:tabular-nums}tbody tr:nth-child(even){background:#fafafa}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.88em}figure{margin:1.2em 0}
img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
"""

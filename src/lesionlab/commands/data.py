"""`lesionlab data inspect|split|convert`: look at a dataset, split it without lesion leaks, or re-export it.

Each action calls one library function and prints a summary table; the logic lives in `lesionlab.data`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from lesionlab.classes import CLASS_CODES
from lesionlab.data.convert import REFERENCE_SIZE, TARGETS, convert_to_prefix_gray
from lesionlab.data.inspect import InspectionReport, inspect_dataset
from lesionlab.data.readers import FORMATS, read_dataset
from lesionlab.data.readers.samples import class_counts
from lesionlab.data.split import (
    DATASET_GROUPING,
    GROUPINGS,
    LEAK_WARNING,
    make_split,
    shared_lesions,
    write_split,
)
from lesionlab.errors import SOME_INPUTS_BAD
from lesionlab.tables import Table, format_table

DATASET_HELP = "dataset folder, or its CSV (HAM10000 metadata / ISIC ground truth) or MedMNIST .npz"
PATH_HELP = f"{DATASET_HELP}; default: $LESIONLAB_DATA, then ../shared/data/ham10000"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data` and its three actions to the top-level parser."""
    parser = subparsers.add_parser(
        "data",
        help="inspect, split or convert a dataset",
        description="Inspect, split (leak-free, by lesion) or convert a dataset.",
    )
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION", required=True)

    inspect = actions.add_parser(
        "inspect", help="class balance, lesions, image sizes and a full decode check"
    )
    inspect.add_argument("path", nargs="?", help=PATH_HELP)
    _add_format_option(inspect)
    inspect.add_argument("--skip-bad", action="store_true", help="report bad or missing images but exit 0")
    inspect.add_argument(
        "--no-decode", action="store_true", help="read image headers only (fast, misses truncated files)"
    )
    inspect.add_argument("--json", action="store_true", help="print the report as JSON for programs")
    inspect.set_defaults(handler=run_inspect)

    split = actions.add_parser("split", help="write a stratified train/val/test split grouped by lesion")
    split.add_argument("path", nargs="?", help=PATH_HELP)
    _add_format_option(split)
    split.add_argument("--val", type=float, default=0.15, help="validation fraction (default 0.15)")
    split.add_argument("--test", type=float, default=0.15, help="test fraction (default 0.15)")
    split.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same file")
    split.add_argument(
        "--group",
        choices=GROUPINGS,
        default="lesion",
        help="'lesion' keeps every lesion in one part; 'none' splits by image like the reference "
        "(leaks lesions, optimistic metrics)",
    )
    split.add_argument("--out", required=True, help="split file to write, e.g. split.csv")
    split.set_defaults(handler=run_split)

    convert = actions.add_parser("convert", help="write the reference's layout (grayscale <digit>_<id>.png)")
    convert.add_argument("path", help=f"{DATASET_HELP} (required: convert has no default dataset)")
    convert.add_argument("out", help="output folder")
    _add_format_option(convert)
    convert.add_argument("--to", choices=TARGETS, required=True, help="target layout")
    convert.add_argument(
        "--size", type=int, default=REFERENCE_SIZE, help=f"side in pixels (default {REFERENCE_SIZE})"
    )
    convert.set_defaults(handler=run_convert)


def _add_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", dest="fmt", choices=FORMATS, help="dataset layout (default: detected)")


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def run_inspect(args: argparse.Namespace) -> int:
    """Print the inspection report over every image; exit 1 (some inputs bad) if an image is bad or missing,
    unless --skip-bad."""
    report = inspect_dataset(args.path, args.fmt, decode=not args.no_decode, progress=not args.json)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(_describe(report))
    return SOME_INPUTS_BAD if report.problems and not args.skip_bad else 0


def _describe(report: InspectionReport) -> str:
    rows = [
        (summary.code, f"{summary.images:,}", f"{summary.share:.1%}", _count(summary.lesions))
        for summary in report.classes
    ]
    rows.append(("total", f"{report.images:,}", "100.0%", _count(report.lesions)))
    lines = [
        f"Dataset {report.root} ({report.format}, fingerprint {report.fingerprint[:16]})",
        "",
        format_table(Table(("class", "images", "share", "lesions"), tuple(rows))),
        "",
    ]
    if report.sizes is not None:
        common = ", ".join(
            f"{width}x{height} ({count:,})" for (width, height), count in report.sizes.most_common
        )
        lines.append(
            f"Image sizes: {common}; width {report.sizes.min_width}..{report.sizes.max_width}, "
            f"height {report.sizes.min_height}..{report.sizes.max_height}"
        )
    check = "full decode" if report.decoded else "headers only, no decode"
    lines.append(f"Image check ({check}): {report.readable:,} ok, {len(report.problems)} problem(s)")
    lines.extend(f"  {problem}" for problem in report.problems)
    return "\n".join(lines)


def run_split(args: argparse.Namespace) -> int:
    """Make, write and summarise a split."""
    table = read_dataset(args.path, args.fmt)
    if args.group == "none":
        print(f"WARNING: {LEAK_WARNING}", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        split = make_split(table, args.val, args.test, args.seed, args.group)
    if split.group == DATASET_GROUPING:
        print(
            f"{table.root}: the dataset carries its own train/val/test split; kept as is "
            "(--val, --test and --group not used).",
            file=sys.stderr,
        )
    written = write_split(args.out, split)
    rows = []
    for part, samples in [*split.parts.items(), ("all", table.samples)]:
        lesions = {sample.lesion_id or f"image:{sample.image_id}" for sample in samples}
        shares = [f"{count / max(len(samples), 1):.1%}" for count in class_counts(samples)]
        rows.append((part, f"{len(samples):,}", f"{len(lesions):,}", *shares))
    print(format_table(Table(("part", "images", "lesions", *CLASS_CODES), tuple(rows))))
    print(
        f"\nWrote {written} (seed {split.seed}, group {split.group}, fingerprint {split.fingerprint[:16]}); "
        f"lesions shared between parts: {len(shared_lesions(split))}"
    )
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Convert to the reference's layout and print images written per class."""
    table = read_dataset(args.path, args.fmt)
    result = convert_to_prefix_gray(table, args.out, size=args.size)
    rows = [
        (f"{label + 1} {code}", f"{count:,}")
        for label, (code, count) in enumerate(zip(CLASS_CODES, result.per_class, strict=True))
    ]
    rows.append(("total", f"{result.written:,}"))
    print(format_table(Table(("class", "images"), tuple(rows))))
    print(f"\nWrote {result.written:,} grayscale {args.size}x{args.size} PNGs to {result.out_dir}")
    return 0

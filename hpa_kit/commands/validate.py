"""``hpa-kit validate SUBMISSION --sample SAMPLE``: check a submission.csv before uploading."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register"]


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a submission.csv against the expected ids and sizes",
        description=(
            "Check SUBMISSION against the ids and sizes of SAMPLE (sample_submission.csv), "
            "strictly, by the format rules of hpa_kit.submission: columns, one line per row, "
            "missing, extra and repeated ids, ImageWidth/ImageHeight, classes 0..18 and "
            "confidences in [0, 1] written plainly, triplet structure, and that every distinct "
            "mask decodes at its image's size. Warns (without failing) about rows that carry "
            "no cell prediction. Prints the problems by id; exit 0: valid, 1: problems found, "
            "2: a file cannot be read or the sample is bad."
        ),
    )
    parser.add_argument("submission", metavar="SUBMISSION", help="submission CSV to check")
    parser.add_argument(
        "--sample", required=True, metavar="SAMPLE", help="sample_submission.csv (ids, sizes)"
    )
    parser.add_argument(
        "--limit",
        type=_non_negative,
        default=50,
        metavar="N",
        help="ids listed at most (default 50)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the whole report as JSON on stdout (warnings also go to stderr)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hpa_kit.submission import validate_submission

    report = validate_submission(args.submission, args.sample)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        for warning in report.warnings:
            print(f"hpa-kit validate: warning: {warning}", file=sys.stderr)
    else:
        print(report.summary(limit=args.limit))
    return 0 if report.ok else 1

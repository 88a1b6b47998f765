"""``hpa-kit validate SUBMISSION --sample SAMPLE``: check a submission.csv before uploading."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a submission.csv against the expected ids and sizes",
        description=(
            "Check SUBMISSION against the ids and sizes of SAMPLE (sample_submission.csv): "
            "missing, extra and repeated ids, ImageWidth/ImageHeight, classes 0..18, finite "
            "confidences in [0, 1], triplet structure, and that every distinct mask decodes "
            "at its image's size. Prints the problems by id and exits 1 if there are any, "
            "else prints one OK line and exits 0 (2: a file cannot be read)."
        ),
    )
    parser.add_argument("submission", metavar="SUBMISSION", help="submission CSV to check")
    parser.add_argument(
        "--sample", required=True, metavar="SAMPLE", help="sample_submission.csv (ids, sizes)"
    )
    parser.add_argument(
        "--limit", type=int, default=50, metavar="N", help="ids listed at most (default 50)"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hpa_kit.submission import SubmissionError, validate_submission

    try:
        report = validate_submission(args.submission, args.sample)
    except SubmissionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary(limit=args.limit))
    return 0 if report.ok else 1

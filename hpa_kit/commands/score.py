"""``hpa-kit score SUBMISSION --truth TRUTH``: the competition mAP as JSON."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score a submission against truth in submission format (mAP at IoU 0.6)",
        description=(
            "Compute the competition mAP (IoU 0.6, Open Images rules, see hpa_kit.metric) of "
            "SUBMISSION against TRUTH, a CSV in submission format with one 'class 1 mask' "
            "triplet per true cell and class. Prints mAP and per-class AP as JSON. Both files "
            "are read by the format rules of hpa_kit.submission, one row at a time. Exit 0: "
            "scored; 2: a file cannot be read or breaks the format (one line names the file, "
            "line or id and the cause); 1: another failure."
        ),
    )
    parser.add_argument("submission", metavar="SUBMISSION", help="submission CSV")
    parser.add_argument("--truth", required=True, metavar="TRUTH", help="truth CSV")
    parser.add_argument(
        "--iou",
        choices=("mask", "bbox"),
        default="mask",
        help="IoU of the masks (default) or of their bounding boxes",
    )
    parser.add_argument(
        "--all-classes",
        action="store_true",
        help=(
            "count predictions of classes absent from an image's truth as false positives "
            "(default: ignore them, as the host's re-scoring did)"
        ),
    )
    parser.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hpa_kit.metric import score_submission

    result = score_submission(
        args.submission,
        args.truth,
        iou=args.iou,
        ignore_absent_classes=not args.all_classes,
        progress=args.progress,
    )
    print(json.dumps(result.to_dict(), indent=2))
    return 0

"""``hpa-kit download-public``: fetch the extra HPA public training images (kaggle_2021.tsv)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "download-public",
        help="download the extra HPA public images of kaggle_2021.tsv as PNGs",
        description=(
            "Select the rows of the public HPA list (in_trainset False, non-empty Label_idx, one "
            "of the 17 competition cell lines), fetch {stem}_{color}.tif.gz for the four "
            "channels with retries and exponential back-off, convert the 16-bit TIFFs to 8-bit "
            "PNGs of SIZE x SIZE (area interpolation) named DST/{id}_{color}.png, and write the "
            "labels CSV (ID,Label) of the ids whose four PNGs exist. Resumable: ids with all four "
            "PNGs are skipped without a request. Failures are listed at the end and make the "
            "exit status 1; bad arguments, a missing list or an unwritable output exit 2 "
            "before any request."
        ),
    )
    parser.add_argument("list", help="the public image list, e.g. kaggle_2021.tsv")
    parser.add_argument("dst", help="output folder for the PNGs")
    parser.add_argument("--size", type=int, default=1024, help="output side in pixels (1024)")
    parser.add_argument("--workers", type=int, default=8, help="download threads (default 8)")
    parser.add_argument(
        "--base-url",
        default=None,
        help="replaces https://images.proteinatlas.org in the image stems (mirror, test server)",
    )
    parser.add_argument(
        "--labels-csv", default=None, help="labels CSV to write (default DST/labels.csv)"
    )
    parser.add_argument(
        "--attempts", type=int, default=4, help="tries per file on network/5xx errors (4)"
    )
    parser.add_argument(
        "--backoff", type=float, default=1.0, help="first back-off in seconds, doubled per retry"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per request (default 60)"
    )
    parser.add_argument("--failures-csv", default=None, help="also write failures to this CSV")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from hpa_kit.download import (
        RetryPolicy,
        download_public,
        read_public_list,
        select_public_images,
    )

    table = read_public_list(args.list)
    selection = select_public_images(table)
    retry = RetryPolicy(attempts=args.attempts, backoff=args.backoff, timeout=args.timeout)
    print(
        f"{args.list}: {len(table)} rows, {len(selection.images)} images selected, "
        f"{selection.excluded} rows excluded by the filter, {len(selection.rejected)} rejected"
    )
    report = download_public(
        table,
        args.dst,
        size=args.size,
        workers=args.workers,
        base_url=args.base_url,
        retry=retry,
        labels_csv=args.labels_csv,
        progress=not args.quiet,
    )
    labels = Path(args.labels_csv) if args.labels_csv else Path(args.dst) / "labels.csv"
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    print(f"labels of the downloaded ids: {labels}")
    if args.failures_csv:
        print(f"failures written to {report.write_failures(args.failures_csv)}")
    return report.exit_code

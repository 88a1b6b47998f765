"""``hpa-kit prepare``: an image cache of per-channel PNGs at one fixed size."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="resize per-channel images (8/16-bit PNG or TIFF) into a PNG cache",
        description=(
            "Convert SRC/{id}_{color}.{png,tif,tiff} (8- or 16-bit) into DST/{id}_{color}.png, "
            "uint8, SIZE x SIZE, area interpolation, in parallel. Resumable: finished files are "
            "skipped (files are written under a temporary name, then renamed). Failures are "
            "listed at the end and make the exit status 1; bad arguments or folders exit 2 "
            "before any work."
        ),
    )
    parser.add_argument("src", help="folder of source channel images")
    parser.add_argument("dst", help="output folder for the PNG cache")
    parser.add_argument("--size", type=int, default=1024, help="output side in pixels (1024)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: the CPU cores this process may use)",
    )
    parser.add_argument(
        "--channels",
        default="red,green,blue,yellow",
        help="comma-separated colours to convert (default red,green,blue,yellow)",
    )
    parser.add_argument("--failures-csv", default=None, help="also write failures to this CSV")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    from hpa_kit.prepare import prepare_images
    from hpa_kit.runner import cpu_cores

    workers = args.workers if args.workers is not None else cpu_cores()
    channels = tuple(c.strip() for c in args.channels.split(",") if c.strip())
    report = prepare_images(
        args.src,
        args.dst,
        size=args.size,
        workers=workers,
        channels=channels,
        progress=not args.quiet,
    )
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    if args.failures_csv:
        print(f"failures written to {report.write_failures(args.failures_csv)}")
    return report.exit_code

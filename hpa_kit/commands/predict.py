"""``hpa-kit predict``: segment, crop and classify every image of a folder into submission.csv.

Exit status: 0 when the CSV holds one row per sample id and every id was attempted, with at
most ``--max-failures`` failed images (they get placeholder rows and are listed on stderr);
1 when every attempted image failed or more than ``--max-failures`` did (the CSV is still
written), or when the work could not finish (a full disk: one line naming the file); 2 for bad
arguments, paths, devices or checkpoints found before the work (nothing written; see
:mod:`hpa_kit.predict` for the checks and what ``--resume`` refuses); 3 when ``--max-images``
stopped the run before every id was attempted (the CSV is written, with placeholders for the
rest: run again with the same ``--resume`` file to finish).
"""

from __future__ import annotations

import argparse
import math
import sys

__all__ = ["register"]

_DESCRIPTION = """\
Predict per-cell classes for every id of the sample CSV: read the four channels from --images,
segment cells (hpacellseg networks with --seg-weights, or the weights-free classical
segmenter), crop each cell, classify the crops with the ensemble of --models checkpoints
(mean over test-time augmentation views, then over checkpoints), optionally blend with the
whole-image prediction (p = (1 - w) p_cell + w p_image, w = --image-weight) and write
submission.csv. With --resume FILE, finished images are appended to FILE and a restarted run
skips them; a FILE that another run (or another program) wrote is refused, never
overwritten. Failed images get a placeholder row and are listed at the end. Exit status: 0;
1 when every image failed or more than --max-failures did (the CSV is still written) or the
run could not finish; 2 for bad arguments or paths (nothing written); 3 when --max-images
stopped the run early.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict per-cell classes for a folder of images into submission.csv",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--images", required=True, help="folder of {id}_{red,green,blue,yellow}.png"
    )
    parser.add_argument("--sample", required=True, help="sample_submission.csv (ids and sizes)")
    parser.add_argument(
        "--models", required=True, nargs="+", metavar="CKPT", help="checkpoint directories"
    )
    parser.add_argument("--out", required=True, help="submission CSV to write")
    parser.add_argument(
        "--resume", metavar="FILE", help="JSON-lines file of finished images (resumable)"
    )
    _add_segmenter_options(parser)
    _add_model_options(parser)
    _add_run_options(parser)
    parser.set_defaults(func=_run)


def _add_segmenter_options(parser: argparse.ArgumentParser) -> None:
    seg = parser.add_mutually_exclusive_group()
    seg.add_argument(
        "--seg-weights",
        metavar="DIR",
        help="folder with hpacellseg's dpn_unet_nuclei_v1.pth and dpn_unet_cell_3ch_v1.pth",
    )
    seg.add_argument(
        "--classical",
        action="store_true",
        help="weights-free classical segmentation (used when --seg-weights is not given; "
        "without either, a note says so)",
    )
    parser.add_argument(
        "--seg-scale", type=float, default=0.25, help="segmentation scale (default 0.25)"
    )
    parser.add_argument(
        "--pixel-size",
        type=float,
        default=1.0,
        help=(
            "full-resolution HPA pixels per image pixel, e.g. 2 for a 1024 px cache of 2048 px "
            "images"
            " (default 1; segmentation sizes scale by seg-scale / pixel-size)"
        ),
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta", default="seed", choices=("none", "seed", "d4"), help="TTA set (default seed)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="crops per forward pass (default 32)"
    )
    parser.add_argument(
        "--image-weight", type=float, default=0.0, help="w of the whole-image blend (default 0)"
    )
    parser.add_argument(
        "--floor",
        type=float,
        default=0.0,
        help="emit (cell, class) with probability >= floor (default 0: all)",
    )
    parser.add_argument(
        "--margin", type=float, default=0.1, help="crop margin, fraction of the cell's side"
    )
    parser.add_argument(
        "--no-mask-others", action="store_true", help="keep background and other cells in crops"
    )
    parser.add_argument("--no-amp", action="store_true", help="no float16 autocast on CUDA")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, default=2, help="CPU worker processes, 0 = none (default 2)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for classifying in the main process (default: CPU cores minus "
        "--workers, at least 1; each worker uses one thread)",
    )
    parser.add_argument("--prefetch", type=int, default=4, help="images prepared ahead (default 4)")
    parser.add_argument(
        "--device", default=None, help="cuda, cpu, cuda:1 ... (default: cuda if available)"
    )
    parser.add_argument(
        "--max-failures",
        type=_failure_limit,
        default=0.05,
        metavar="N|F|P%",
        help="failed images allowed before the exit status is 1: a count (3), a fraction of "
        "the sample's ids (0.05) or a percentage (5%%); default 5%%. A run in which every "
        "image failed always exits 1",
    )
    parser.add_argument(
        "--max-images", type=int, default=None, help="stop after this many images (exit 3)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _failure_limit(text: str) -> float:
    """``--max-failures``: ``"3"`` (count), ``"0.05"`` (fraction) or ``"5%"``; checked later."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count, fraction or percentage: {text!r}") from None
    whole = math.isfinite(value) and value >= 1 and value == int(value)
    return int(value) if whole else value  # a count stays an int; the range is checked later


def _options(args: argparse.Namespace):
    from hpa_kit.predict import PredictOptions

    return PredictOptions(
        tta=args.tta,
        batch_size=args.batch_size,
        margin=args.margin,
        mask_others=not args.no_mask_others,
        image_weight=args.image_weight,
        floor=args.floor,
        num_workers=args.workers,
        prefetch=args.prefetch,
        device=args.device,
        amp=not args.no_amp,
        max_images=args.max_images,
        max_failures=args.max_failures,
        threads=args.threads,
        progress=not args.quiet,
    )


def _segmenter(args: argparse.Namespace, device: str):
    """The segmenter the options ask for (bad sizes or missing weights: UsageError)."""
    from hpa_kit.segment import make_segmenter

    if not (args.seg_weights or args.classical):
        print(
            "predict: no segmenter chosen, using the weights-free classical segmenter "
            "(--classical says so; --seg-weights DIR uses hpacellseg's networks)",
            file=sys.stderr,
        )
    return make_segmenter(
        args.seg_weights, device=device, scale=args.seg_scale, pixel_size=args.pixel_size
    )


def _run(args: argparse.Namespace) -> int:
    from hpa_kit.errors import UsageError, describe
    from hpa_kit.predict import (
        TooManyFailuresError,
        check_inputs,
        load_ensemble,
        predict_folder,
        resolve_device,
    )

    options = _options(args)
    check_inputs(args.images, args.sample, out=args.out, resume=args.resume, floor=args.floor)
    device = resolve_device(args.device)  # both before anything is loaded
    try:
        classifiers = load_ensemble(args.models, device)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the checkpoints: {describe(exc)}") from exc
    segmenter = _segmenter(args, device)
    print(
        f"predict: {len(classifiers)} checkpoint(s) on {device}, segmenter {segmenter!r}, "
        f"tta {args.tta}, {options.classify_threads()} classifier thread(s)",
        file=sys.stderr,
    )
    try:
        report = predict_folder(
            args.images,
            args.sample,
            classifiers,
            out=args.out,
            segmenter=segmenter,
            options=options,
            resume=args.resume,
        )
    except TooManyFailuresError as exc:
        print(exc.report.summary(), file=sys.stderr)
        raise
    print(report.summary(), file=sys.stderr)
    return 0 if report.complete else 3

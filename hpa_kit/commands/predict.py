"""``hpa-kit predict``: segment, crop and classify every image of a folder into submission.csv.

Exit status: 0 when the CSV holds one row per sample id and every id was attempted, even if
some images failed (they get placeholder rows and are listed on stderr); 3 when
``--max-images`` stopped the run before every id was attempted (the CSV is written, with
placeholders for the rest: run again with the same ``--resume`` file to finish); 2 for bad
arguments or checkpoints that cannot be loaded (nothing written).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]

_DESCRIPTION = """\
Predict per-cell classes for every id of the sample CSV: read the four channels from --images,
segment cells (hpacellseg networks with --seg-weights, or the weights-free classical
segmenter), crop each cell, classify the crops with the ensemble of --models checkpoints
(mean over test-time augmentation views, then over checkpoints), optionally blend with the
whole-image prediction (p = (1 - w) p_cell + w p_image, w = --image-weight) and write
submission.csv. With --resume FILE, finished images are appended to FILE and a restarted run
skips them. Failed images get a placeholder row and are listed at the end (exit status 0;
3 when --max-images stopped the run early).
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
    seg = parser.add_mutually_exclusive_group()
    seg.add_argument(
        "--seg-weights",
        metavar="DIR",
        help="folder with hpacellseg's dpn_unet_nuclei_v1.pth and dpn_unet_cell_3ch_v1.pth",
    )
    seg.add_argument(
        "--classical", action="store_true", help="weights-free classical segmentation (the default)"
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
    parser.add_argument(
        "--tta", default="seed", choices=("none", "seed", "d4"), help="TTA set (default seed)"
    )
    parser.add_argument(
        "--resume", metavar="FILE", help="JSON-lines file of finished images (resumable)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="crops per forward pass (default 32)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="CPU worker processes, 0 = none (default 2)"
    )
    parser.add_argument("--prefetch", type=int, default=4, help="images prepared ahead (default 4)")
    parser.add_argument(
        "--device", default=None, help="cuda, cpu, cuda:1 ... (default: cuda if available)"
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
    parser.add_argument(
        "--max-images", type=int, default=None, help="stop after this many images (exit 3)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hpa_kit.predict import PredictOptions, ResumeMismatchError, load_ensemble, predict_folder
    from hpa_kit.submission import SubmissionError

    try:
        options = PredictOptions(
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
            progress=not args.quiet,
        )
    except ValueError as exc:
        print(f"hpa-kit predict: {exc}", file=sys.stderr)
        return 2
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        classifiers = load_ensemble(args.models, device)
        if args.seg_weights:
            from hpa_kit.segment import NetworkSegmenter

            segmenter = NetworkSegmenter.from_dir(
                args.seg_weights, device, scale=args.seg_scale, pixel_size=args.pixel_size
            )
        else:
            from hpa_kit.segment import ClassicalSegmenter

            segmenter = ClassicalSegmenter(scale=args.seg_scale, pixel_size=args.pixel_size)
    except (OSError, ValueError) as exc:
        print(f"hpa-kit predict: {exc}", file=sys.stderr)
        return 2
    print(
        f"predict: {len(classifiers)} checkpoint(s) on {device}, segmenter {segmenter!r}, "
        f"tta {args.tta}",
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
    except (ResumeMismatchError, SubmissionError, FileNotFoundError) as exc:
        print(f"hpa-kit predict: {exc}", file=sys.stderr)
        return 2
    print(report.summary(), file=sys.stderr)
    return 0 if report.complete else 3

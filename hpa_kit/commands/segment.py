"""``hpa-kit segment IMAGES_DIR --out DIR``: full-resolution cell label images for a folder."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment every image of a folder into 16-bit cell label PNGs",
        description=(
            "Segment each image IMAGES_DIR/{id}_{red,green,blue,yellow}.png and write "
            "OUT/{id}_cells.png (and OUT/{id}_nuclei.png with --nuclei): 16-bit label images, "
            "0 = background, 1..N = cells, at the image's full size. Uses HPA-Cell-Segmentation's "
            "networks from --weights-dir (dpn_unet_nuclei_v1.pth and dpn_unet_cell_3ch_v1.pth "
            "or dpn_unet_cell_v2.pth; needs the pytorch_zoo package) or, by default "
            "(--classical), the weights-free classical predictor. Ids are found from any of "
            "their channel files; an id that lacks a channel, cannot be read or segmented is "
            "reported by id with its cause and the others go on. Exit status: 0; 1 if any id "
            "failed; 2 for bad arguments or folders (nothing written)."
        ),
    )
    parser.add_argument("images_dir", metavar="IMAGES_DIR", help="folder of channel PNGs")
    parser.add_argument("--out", required=True, help="output folder (created)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights-dir", help="folder with hpacellseg's .pth weight files")
    source.add_argument(
        "--classical",
        action="store_true",
        help="weights-free classical segmentation (the default without --weights-dir)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=0.25,
        help="scale of the maps and the labelling relative to the image (default 0.25)",
    )
    parser.add_argument(
        "--pixel-size",
        type=float,
        default=1.0,
        help=(
            "full-resolution HPA pixels per image pixel, e.g. 2 for a 1024 px cache of 2048 px "
            "images"
            " (default 1; sizes scale by scale / pixel-size)"
        ),
    )
    parser.add_argument("--nuclei", action="store_true", help="also write {id}_nuclei.png")
    parser.add_argument(
        "--device", default=None, help="torch device for the networks (default: cuda if available)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes for reading, labelling and writing (default 0: this process)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, help="images per network batch (default 4)"
    )
    parser.add_argument("--ext", default=".png", help="channel file extension (default .png)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _segmenter(args: argparse.Namespace):
    """The segmenter the options ask for (bad sizes or missing weights: UsageError)."""
    from hpa_kit.runner import check_number
    from hpa_kit.segment import make_segmenter

    if not (args.weights_dir or args.classical):
        print(
            "segment: no segmenter chosen, using the weights-free classical segmenter "
            "(--classical says so; --weights-dir DIR uses hpacellseg's networks)",
            file=sys.stderr,
        )
    device = "cpu"
    if args.weights_dir:
        from hpa_kit.predict import resolve_device

        check_number("--batch-size", args.batch_size, low=1, integer=True)
        device = resolve_device(args.device)
    return make_segmenter(
        args.weights_dir,
        device=device,
        scale=args.scale,
        pixel_size=args.pixel_size,
        batch_size=args.batch_size,
    )


def _run(args: argparse.Namespace) -> int:
    from hpa_kit.segment import segment_folder

    segmenter = _segmenter(args)
    print(f"segmenting {args.images_dir} with {segmenter!r} -> {args.out}", file=sys.stderr)
    report = segment_folder(
        args.images_dir,
        args.out,
        segmenter=segmenter,
        nuclei=args.nuclei,
        ext=args.ext,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(
        f"wrote {len(report.done)} of {report.total} label images to {args.out}\n"
        + report.summary(),
        file=sys.stderr,
    )
    return report.exit_code

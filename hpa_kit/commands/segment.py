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
            "(--classical), the weights-free classical predictor. An image that cannot be read "
            "or segmented is reported by id and skipped; the exit code is 1 if any failed."
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
    parser.add_argument("--device", default="cpu", help="torch device for the networks")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="images per network batch (default 4)"
    )
    parser.add_argument("--ext", default=".png", help="channel file extension (default .png)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from hpa_kit.io import ImageError, list_image_ids, read_image, write_label_image
    from hpa_kit.progress import progress_bar
    from hpa_kit.segment import ClassicalSegmenter, NetworkSegmenter

    images_dir, out = Path(args.images_dir), Path(args.out)
    if not images_dir.is_dir():
        print(f"error: {images_dir} is not a folder", file=sys.stderr)
        return 2
    if not 0 < args.scale <= 1:
        print(f"error: --scale must be in (0, 1], got {args.scale}", file=sys.stderr)
        return 2
    if not (math.isfinite(args.pixel_size) and args.pixel_size > 0):
        print(f"error: --pixel-size must be > 0, got {args.pixel_size}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if args.weights_dir:
        try:
            segmenter = NetworkSegmenter.from_dir(
                args.weights_dir,
                args.device,
                scale=args.scale,
                batch_size=args.batch_size,
                pixel_size=args.pixel_size,
            )
        except (FileNotFoundError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        batch_size = args.batch_size
    else:
        segmenter = ClassicalSegmenter(scale=args.scale, pixel_size=args.pixel_size)
        batch_size = 1
    ids = list_image_ids(images_dir, ext=args.ext)
    if not ids:
        print(f"error: no images ({{id}}_red{args.ext}) in {images_dir}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    print(f"segmenting {len(ids)} images with {segmenter!r} -> {out}", file=sys.stderr)

    failures: dict[str, str] = {}
    written = 0

    def _write(image_id: str, labels: tuple) -> None:
        nonlocal written
        nuclei, cells = labels
        write_label_image(out / f"{image_id}_cells.png", cells)
        if args.nuclei:
            write_label_image(out / f"{image_id}_nuclei.png", nuclei)
        written += 1

    def _flush(batch: list) -> None:
        """Segment a batch; if it fails, retry its images one by one to name the failing ids."""
        try:
            results = segmenter.segment([image for _, image in batch])
        except Exception as exc:  # noqa: BLE001 - a batch job records the failure and goes on
            if len(batch) > 1:
                for item in batch:
                    _flush([item])
            else:
                failures[batch[0][0]] = f"{type(exc).__name__}: {exc}"
            return
        for (image_id, _), labels in zip(batch, results, strict=True):
            try:
                _write(image_id, labels)
            except (OSError, ValueError) as exc:
                failures[image_id] = f"{type(exc).__name__}: {exc}"

    batch: list = []
    for image_id in progress_bar(ids, desc="segment", unit="image"):
        try:
            batch.append((image_id, read_image(images_dir, image_id, ext=args.ext)))
        except (ImageError, OSError) as exc:
            failures[image_id] = f"{type(exc).__name__}: {exc}"
        if len(batch) >= batch_size:
            _flush(batch)
            batch = []
    if batch:
        _flush(batch)

    print(f"wrote {written} of {len(ids)} label images to {out}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} image(s) failed:", file=sys.stderr)
        for image_id, reason in sorted(failures.items()):
            print(f"  {image_id}: {reason}", file=sys.stderr)
        return 1
    return 0

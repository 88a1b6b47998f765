"""``hpa-kit synth OUT --n N --size S --seed K``: write a synthetic dataset with cell truth."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from hpa_kit.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from hpa_kit.synth import SynthConfig, SynthDataset, SynthImage

__all__ = ["register"]


def _size(text: str) -> int | tuple[int, int]:
    """``"2048"`` -> 2048; ``"1024x2048"`` -> (1024, 2048) (height x width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must be N or HEIGHTxWIDTH (e.g. 2048 or 1024x2048), got {text!r}"
        ) from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"size must be N or HEIGHTxWIDTH, got {text!r}")


def _classes(text: str) -> tuple[int, ...]:
    """``"0,16"`` (or ``"0|16"``) -> (0, 16); each class written plainly
    (:func:`hpa_kit.labels.class_index`: ``01``, ``+1`` or ``1_0`` are refused)."""
    from hpa_kit.labels import class_index

    values = [class_index(p.strip()) for p in text.replace("|", ",").split(",") if p.strip()]
    if not values or None in values:
        raise argparse.ArgumentTypeError(
            f"classes must be comma-separated classes 0..18 (e.g. 0,16), got {text!r}"
        )
    return tuple(values)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write synthetic HPA-like images with known cells and per-cell classes",
        description=(
            "Generate N seeded synthetic four-channel images in the competition layout: "
            "OUT/images/{id}_{red,green,blue,yellow}.png, OUT/masks/{id}_cells.png and "
            "{id}_nuclei.png (16-bit label images), OUT/train.csv (image-level labels), "
            "OUT/sample_submission.csv (placeholder rows) and OUT/truth.csv (every true cell "
            "and class, for `hpa-kit score`). Image k uses seed (SEED, k): the same command "
            "writes the same bytes. Exits 1 if any image failed (listed), 2 for a bad option."
        ),
    )
    parser.add_argument("out", metavar="OUT", help="output folder (created)")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument(
        "--size",
        type=_size,
        default=2048,
        help="image size: N (square) or HEIGHTxWIDTH, e.g. 1024x2048 (default 2048)",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument(
        "--id-prefix",
        default="synth",
        help="image ids are PREFIX_00000, ...; the ids must follow the ID rule of submissions "
        "(printable ASCII without spaces, commas, quotes, '/', '\\' or '..'), checked before "
        "anything is written (default synth)",
    )
    parser.add_argument(
        "--classes",
        type=_classes,
        default=None,
        help="comma-separated classes to draw from (default 0,1,2,4,13,14,16,17; 7 also works)",
    )
    parser.add_argument(
        "--negative-fraction",
        type=float,
        default=None,
        help="fraction of all-negative (class 18) images (default 0.05)",
    )
    parser.add_argument(
        "--previews",
        type=int,
        default=0,
        metavar="K",
        help="also write OUT/previews/{id}.png overlays (outlines, cell ids, true classes by short "
        "name) for K images",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from hpa_kit.synth import SynthConfig, class_counts, write_dataset

    config = SynthConfig()
    try:
        if args.classes is not None:
            config = replace(config, classes=args.classes)
        if args.negative_fraction is not None:
            config = replace(config, negative_fraction=args.negative_fraction)
        dataset = write_dataset(
            args.out,
            n=args.n,
            size=args.size,
            seed=args.seed,
            config=config,
            id_prefix=args.id_prefix,
        )
    except ValueError as exc:  # a bad option: found before any image is drawn
        raise UsageError(str(exc)) from exc
    print(
        f"wrote {len(dataset.ids)} images ({dataset.num_cells} cells) to {dataset.out}: "
        f"{dataset.train_csv.name}, {dataset.sample_submission.name}, {dataset.truth.name}"
    )
    if args.previews > 0:
        shown = _write_previews(
            dataset, args.previews, size=args.size, seed=args.seed, config=config
        )
        counts = class_counts(shown)
        print(
            f"wrote {len(shown)} previews to {dataset.out / 'previews'}; cells per class there: "
            + ", ".join(f"{c}:{int(n)}" for c, n in enumerate(counts) if n)
        )
    if dataset.failures:
        print(f"{len(dataset.failures)} images failed:", file=sys.stderr)
        for image_id, cause in dataset.failures.items():
            print(f"  {image_id}: {cause}", file=sys.stderr)
        return 1
    return 0


def _write_previews(
    dataset: SynthDataset,
    count: int,
    *,
    size: int | tuple[int, int],
    seed: int,
    config: SynthConfig,
) -> list[SynthImage]:
    """``previews/{id}.png`` of the first ``count`` images of ``dataset`` (at most 1024 px):
    the composite, true outlines, and each cell's id and classes (short names). Returns the
    images drawn."""
    import cv2
    import numpy as np

    from hpa_kit.labels import SHORT_NAMES
    from hpa_kit.synth import generate_image
    from hpa_kit.viz import annotate_cells, composite, draw_outlines, save_png

    shown = []
    for image_id in dataset.ids[:count]:
        index = int(image_id.rsplit("_", 1)[1])
        synth = generate_image(size=size, seed=(seed, index), config=config)
        shown.append(synth)
        rgb = composite(synth.image)
        labels = synth.cell_labels
        factor = max(rgb.shape[:2]) / 1024
        if factor > 1:  # previews at most 1024 px
            shape = (round(rgb.shape[1] / factor), round(rgb.shape[0] / factor))
            rgb = cv2.resize(rgb, shape, interpolation=cv2.INTER_AREA)
            labels = cv2.resize(labels, shape, interpolation=cv2.INTER_NEAREST)
        texts = {
            cell: "\n".join([str(cell)] + [SHORT_NAMES[c] for c in classes])
            for cell, classes in synth.cell_classes.items()
            if np.any(labels == cell)
        }
        rgb = annotate_cells(draw_outlines(rgb, labels), labels, texts)
        save_png(dataset.out / "previews" / f"{image_id}.png", rgb)
    return shown

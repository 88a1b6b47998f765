"""``hpa-kit demo --out DIR``: the whole pipeline on synthetic data, on the CPU, in minutes."""

from __future__ import annotations

import argparse

__all__ = ["register"]

_DESCRIPTION = """\
Generate a synthetic training set (image-level labels only) and test set (with per-cell
truth), segment the training images with the weights-free classical segmenter and train a
small timm classifier on their cell crops with their image's labels, predict every test cell
with TTA, write and validate DIR/submission.csv, and score it against the cell-level truth
with the competition metric, beside two baselines on the same cells (every cell given its
image's confidence: from the whole image, and the mean of its cells). Also writes overlays of
a few test images and DIR/summary.json (mAPs, segmentation F1, seconds per stage).
--cell-learning chooses how the crops learn from image labels (refined: soft labels the
model gives, kept inside the image's labels; oracle: the synthetic truth, a measurement);
--preset weak-labels is the setting where that matters (BENCHMARKS.md).
Exits 0 when the submission is valid and all three scores were computed, 1 when the run
failed or its submission is invalid, 2 for bad options or a DIR that is not new, empty, or an
earlier demo's folder (whose outputs are replaced); nothing is written then.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="end-to-end demo on synthetic data (train, segment, predict, score) on the CPU",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a reduced run (tiny images, one short epoch, no TTA): checks the plumbing in seconds",
    )
    parser.add_argument("--n-train", type=int, default=None, help="training images (default 120)")
    parser.add_argument("--n-test", type=int, default=None, help="test images (default 144)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 8)")
    parser.add_argument(
        "--tta", choices=("none", "seed", "d4"), default=None, help="TTA set (default seed)"
    )
    parser.add_argument("--seed", type=int, default=None, help="base seed (default 0)")
    parser.add_argument(
        "--cell-learning",
        choices=("image-labels", "bags", "refined", "oracle"),
        default=None,
        help="how the crops learn from their image's labels (default image-labels); oracle "
        "trains them on the synthetic truth, to measure what better labels give",
    )
    parser.add_argument(
        "--preset",
        choices=("weak-labels",),
        default=None,
        help="weak-labels: 64 px crops, 16 epochs, where the labels limit the score (a few "
        "minutes more than the default)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hpa_kit.demo import DemoConfig, format_summary, preset_config, quick_config, run_demo

    changes = {
        name: value
        for name, value in (
            ("n_train", args.n_train),
            ("n_test", args.n_test),
            ("epochs", args.epochs),
            ("tta", args.tta),
            ("seed", args.seed),
            ("cell_learning", args.cell_learning),
        )
        if value is not None
    }
    if args.no_progress:
        changes["progress"] = False
    if args.quick:
        config = quick_config(**changes)
    elif args.preset:
        config = preset_config(args.preset, **changes)
    else:
        config = DemoConfig(**changes)
    result = run_demo(args.out, config)
    print()
    print(format_summary(result.summary))
    scores = result.summary["scores"]
    ok = result.summary["submission_valid"] and all(
        scores[name].get("map") is not None for name in ("cells", "baseline", "baseline_cell_mean")
    )
    return 0 if ok else 1

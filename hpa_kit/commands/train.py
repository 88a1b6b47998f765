"""``hpa-kit train --config FILE [--set key=value ...] [--resume]``: train one fold."""

from __future__ import annotations

import argparse

__all__ = ["register"]

_DESCRIPTION = """\
Train one fold of a classifier (the seed's recipe: timm efficientnet_b0, AdamW, cosine
schedule, focal/BCE loss, the seed's augmentations). FILE is YAML or JSON holding
TrainConfig fields; train_csv, images_dir and out_dir are required. Writes out_dir/best and
out_dir/last (checkpoints hpa-kit predict loads), out_dir/log.jsonl (one line per epoch) and
out_dir/train_config.json.
Rows are whole images, or cell crops of a table with an `image` column; then
cell_learning chooses how crops learn from their image's labels: image-labels (each crop its
Label), bags (an image's crops pooled into image logits: pooling max, lse or mean) or refined
(refine_from first, then refine_rounds rounds of crop training on soft labels kept inside the
image's labels, in out_dir/stage0, out_dir/round1, ...). Every mode writes the same
per-cell checkpoint.
Exit status: 0 done; 2 a bad config, table, missing or empty image file, or an out_dir that
already holds a run (pass --resume to continue it); 1 the training failed (an image that
does not decode, a truncated last/train_state.pt).
For several GPUs:
  torchrun --nproc_per_node N -m hpa_kit.cli train --config FILE
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a classifier on one fold",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", required=True, metavar="FILE", help="YAML or JSON file of TrainConfig fields"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field (value read as YAML, e.g. --set lr=3e-4 --set fold=1); repeatable",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in out_dir from out_dir/last (same as --set resume=true)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as JSON and exit without training",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import json
    import os

    from hpa_kit._train_config import TrainConfig

    overrides = list(args.overrides)
    if args.resume:
        overrides.append("resume=true")
    config = TrainConfig.from_file(args.config, overrides=overrides)  # UsageError: exit 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0

    from hpa_kit.train import fit

    result = fit(config)
    if os.environ.get("RANK", "0") != "0":
        return 0
    status = "finished" if result.finished else "stopped early (resume to continue)"
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    print(
        f"hpa-kit train: {status} after {result.epochs_done} epochs; best {config.monitor} "
        f"{score} at epoch {result.best_epoch}; checkpoints in {result.best_dir} and "
        f"{result.last_dir}"
    )
    return 0

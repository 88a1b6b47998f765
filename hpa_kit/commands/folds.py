"""``hpa-kit folds``: add a multi-label stratified ``fold`` column to a training CSV."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "folds",
        help="assign multi-label stratified folds to a training CSV",
        description=(
            "Read a CSV with an image id column and a label column of '8|5|0' strings, assign "
            "each row to a fold with MultilabelStratifiedKFold (seeded shuffle), then even out "
            "the fold sizes (floor or ceil of rows / folds) with the least change to the "
            "class balance, and write the table with an int column 'fold' (atomically: a "
            "failed write leaves an existing --out as it was)."
        ),
    )
    parser.add_argument("csv", help="training table, e.g. train.csv (ID,Label)")
    parser.add_argument("--out", required=True, help="output CSV (the input plus 'fold')")
    parser.add_argument("--n-splits", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    parser.add_argument("--label-col", default="Label", help="label column (default Label)")
    parser.add_argument(
        "--no-balance",
        action="store_true",
        help="keep the raw MultilabelStratifiedKFold folds (sizes may differ by a few %%)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from hpa_kit.errors import UsageError, describe
    from hpa_kit.folds import make_folds
    from hpa_kit.outputs import atomic_write_text, check_distinct_files

    check_distinct_files({"CSV": args.csv, "--out": args.out})  # never overwrite the input
    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; give the path of a CSV file to write")
    try:
        table = pd.read_csv(args.csv, dtype={args.label_col: str}, keep_default_na=False)
        out = make_folds(
            table,
            n_splits=args.n_splits,
            seed=args.seed,
            label_col=args.label_col,
            balance=not args.no_balance,
        )
    except (OSError, ValueError) as exc:  # missing file, bad column, bad label (LabelError)
        raise UsageError(f"{args.csv}: {describe(exc)}") from exc
    _check_replaceable(Path(args.out), list(out.columns))
    path = atomic_write_text(args.out, out.to_csv(index=False))
    sizes = out["fold"].value_counts().sort_index()
    print(f"wrote {path}: {len(out)} rows, fold sizes " + ", ".join(map(str, sizes.tolist())))
    return 0


def _check_replaceable(out, columns: list[str]) -> None:
    """An existing ``--out`` is replaced only when it is a folds table of the same columns (a
    previous run's output); any other file is refused, so nothing the user wrote is lost."""
    import csv

    from hpa_kit.errors import UsageError

    if not out.exists():
        return
    try:
        with out.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        header = []
    if header != columns:
        raise UsageError(
            f"--out {out} exists and is not a folds table of this CSV (columns "
            f"{','.join(columns)}); remove it or choose another --out"
        )

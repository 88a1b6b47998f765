"""Weak labels on synthetic data: per-cell mAP of each way to learn cell labels from image labels.

Usage (from the repository root; torch runs one thread, as the demo does):

    .venv/bin/python benchmarks/bench_weak_labels.py run --out /tmp/weak --setting weak-labels \
        --seeds 0 1 2
    .venv/bin/python benchmarks/bench_weak_labels.py table --out /tmp/weak

``run`` does, per seed, what ``hpa-kit demo`` does (synthetic train and test sets, classical
segmentation, 48-64 px cell crops, folds per image, a timm classifier from scratch, seed TTA,
``predict_folder``, the competition metric at mask IoU 0.6), once for the data and then once
per variant on the very same crops:

- ``image-labels``: every crop trained on its image's labels (the demo's default);
- ``bags``: one sample per image, its crops' logits pooled (``cell_learning: bags``);
- ``pseudo``: image-labels, then rounds of crop training on soft labels (``refined`` from
  ``image-labels``);
- ``bags+pseudo``: bags, then the same rounds (``refined`` from ``bags``);
- ``oracle``: every crop trained on the true classes of the synthetic cell it overlaps (IoU
  >= 0.5; crops without a match keep their image's labels), :mod:`hpa_kit.oracle`.

Wall seconds on a shared machine are inflated by other work; ``cpu_seconds`` (the process's
CPU time, one torch thread) is close to the wall time the same work takes alone. Per variant
it records the mAP on all test images and on the test images whose cells all
carry the image's full label set (there weak labels are exact: the subset where a method
must lose nothing), the wall seconds of training and prediction, and, for ``image-labels``,
the demo's two baselines (every cell given the whole-image prediction, or its image's mean
cell prediction). Lines go to ``OUT/results.jsonl`` (appended; the data of a (setting, seed)
is reused by later runs). ``table`` prints the Markdown tables of BENCHMARKS.md from it.

Settings (``--setting``): ``demo`` (the default demo), ``weak-labels`` (the demo's
``--preset weak-labels``) and ``harder`` (the preset's training on data where image labels
mislead more: 6 classes instead of 8, every image 2 or 3 of them, no cell with two, so a
crop's image labels name about 1.6 classes it does not show, against about 1.1 by default).
``--set key=value`` changes a ``DemoConfig`` field (``--set epochs=12``, ``--set
pooling=max``), ``--train key=value`` a ``TrainConfig`` field of every variant.

``soft`` scores the soft labels a variant's model gives its own training crops against the
oracle labels (mean AP and mean absolute error over the (crop, class) pairs inside each
image's labels), for the image labels, the model's probabilities and each step of
:func:`hpa_kit.pseudo.refine_labels`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "image-labels": {"cell_learning": "image-labels"},
    "bags": {"cell_learning": "bags"},
    "pseudo": {"cell_learning": "refined", "refine_from": "image-labels"},
    "bags+pseudo": {"cell_learning": "refined", "refine_from": "bags"},
    "oracle": {"cell_learning": "oracle"},
}
"""Variant -> the ``DemoConfig`` changes that make it (``hpa-kit demo --cell-learning``)."""


def _settings() -> dict[str, Any]:
    from hpa_kit.demo import DemoConfig, preset_config
    from hpa_kit.synth import SynthConfig

    harder = SynthConfig(
        classes=(0, 2, 4, 13, 14, 16),
        classes_per_image=(0.0, 0.4, 0.6),
        double_class_fraction=0.0,
    )
    return {
        "demo": DemoConfig(progress=False),
        "weak-labels": preset_config("weak-labels", progress=False),
        "harder": preset_config("weak-labels", progress=False, synth=harder),
    }


# ---------------------------------------------------------------- data (once per seed)


def _data_key(config) -> str:
    """A folder name for the data of ``config`` (what the data depends on, hashed)."""
    import hashlib

    fields = ("n_train", "size", "seg_scale", "input_size", "channels", "margin")
    key = {name: getattr(config, name) for name in fields}
    key |= {"n_folds": config.n_folds, "seed": config.seed, "synth": repr(config.synth)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return f"seed{config.seed}-{digest[:10]}"


def _data(folder: Path, config) -> dict[str, Any]:
    """Synthetic sets, crops, folds and oracle labels in ``folder`` (reused when done)."""
    import pandas as pd

    from hpa_kit.crop import write_cell_crops
    from hpa_kit.folds import make_folds
    from hpa_kit.oracle import oracle_labels
    from hpa_kit.segment import ClassicalSegmenter
    from hpa_kit.synth import write_dataset

    done = folder / "data.json"
    if done.is_file():
        return json.loads(done.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    start, cpu = time.perf_counter(), time.process_time()
    segmenter = ClassicalSegmenter(config.seg_scale, pixel_size=config.pixel_size)
    kwargs = {"size": config.size, "config": config.synth, "progress": False}
    train = write_dataset(
        folder / "train", n=config.n_train, seed=config.seed, id_prefix="train", **kwargs
    )
    table = make_folds(
        pd.read_csv(train.train_csv, dtype={"ID": str}), n_splits=config.n_folds, seed=config.seed
    )
    crops, failures = write_cell_crops(
        folder / "train" / "images",
        table,
        folder / "crops" / "images",
        segmenter=segmenter,
        size=config.input_size,
        margin=config.margin,
        channels=config.channels,
    )
    crops.to_csv(folder / "crops" / "crops.csv", index=False)
    labels, counts = oracle_labels(crops, folder / "train", segmenter=segmenter)
    crops.assign(Label=labels).to_csv(folder / "crops" / "crops_oracle.csv", index=False)
    info = {
        "crops": len(crops),
        "oracle": counts,
        "failures": failures,
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
    }
    done.write_text(json.dumps(info))
    return info


def _test_set(folder: Path, config) -> Path:
    """The test set of ``config`` (``n_test`` images, seed ``seed + 1``) under ``folder``."""
    from hpa_kit.synth import write_dataset

    test = folder / f"test{config.n_test}"
    if not (test / "truth.csv").is_file():
        kwargs = {"size": config.size, "config": config.synth, "progress": False}
        write_dataset(test, n=config.n_test, seed=config.seed + 1, id_prefix="test", **kwargs)
    return test


def _full_label_images(truth_csv: Path) -> list[str]:
    """Test ids whose every true cell carries all of the image's classes."""
    from hpa_kit.submission import read_submission, submission_cells

    ids = []
    for row in read_submission(truth_csv).itertuples(index=False):
        _, probs = submission_cells(row.PredictionString)
        cells = probs > 0
        if cells.size and (cells == cells.any(axis=0)).all():
            ids.append(row.ID)
    return ids


# ---------------------------------------------------------------- one variant


def _train_config(folder: Path, out: Path, config, extra: dict[str, Any]):
    """The demo's training config of ``config`` (``hpa_kit.demo.demo_train_config``) on the
    crops of ``folder``, writing to ``out``; ``extra`` changes TrainConfig fields."""
    from hpa_kit.demo import demo_train_config

    crops = folder / "crops"
    paths = {"crops": crops, "crops_oracle": crops / "crops_oracle.csv", "model": out}
    return demo_train_config(config.replace(progress=False), paths).replace(**extra)


def _share_stage0(out: Path, config, stage0_dir: Path | None = None) -> str | None:
    """A refined variant starts from the same seed's finished ``refine_from`` variant (the
    same training: copied into ``model/stage0``, which the run resumes as finished), so only
    the rounds train. Its seconds then cover the rounds only; the table adds stage 0's."""
    if config.cell_learning != "refined":
        return None
    source = (stage0_dir or out.parent) / config.refine_from / "model"
    if not (source / "last" / "train_state.pt").is_file():
        return None
    shutil.copytree(source, out / "model" / "stage0")
    return config.refine_from


def _score(submission: Path, truth: Path, subset: list[str]) -> tuple[float, float | None]:
    from hpa_kit.metric import score_submission
    from hpa_kit.submission import read_submission

    full = score_submission(submission, truth).map
    if not subset:
        return full, None
    sub, tru = read_submission(submission), read_submission(truth)
    part = score_submission(sub[sub["ID"].isin(subset)], tru[tru["ID"].isin(subset)]).map
    return full, part


def _baselines(test: Path, out: Path, checkpoint: Path, config, subset) -> dict[str, Any]:
    """The demo's two baselines on the cells of ``out/submission{n_test}.csv``."""
    from hpa_kit.baselines import cell_mean_baseline, image_baseline, whole_image_probs
    from hpa_kit.model import load_classifier
    from hpa_kit.submission import read_sample, read_submission, write_submission

    model, model_config = load_classifier(checkpoint, device="cpu")
    submission = read_submission(out / f"submission{config.n_test}.csv")
    image_probs = whole_image_probs(
        test / "images", list(submission["ID"]), model, model_config, tta=config.tta
    )
    sample = read_sample(test / "sample_submission.csv")
    scores = {}
    for name, rows in (
        ("baseline", image_baseline(submission, image_probs)),
        ("baseline_cell_mean", cell_mean_baseline(submission)),
    ):
        path = out / f"{name}{config.n_test}.csv"
        write_submission(path, rows, sample)
        scores[name] = _score(path, test / "truth.csv", subset)
    return scores


def _trained_before(out: Path, train_config) -> bool:
    """``out/model`` holds a finished run of the same settings: the data key already
    matched (paths are free), fields the mode does not use are free, fields added to
    TrainConfig since take their defaults."""
    from hpa_kit.train import TrainConfig

    record = out / "model" / "train_config.json"
    if not record.is_file() or not (out / "model" / "best" / "model.pt").is_file():
        return False
    free = {"train_csv", "images_dir", "out_dir", "progress"} | train_config.unused_fields()
    before = TrainConfig.from_dict(json.loads(record.read_text())).to_dict()
    now = train_config.to_dict()
    return all(before[k] == now[k] for k in now if k not in free)


def _predict(test: Path, out: Path, config) -> tuple[Path, float, float]:
    """``out/submission{n_test}.csv`` of the variant's best model, wall and CPU seconds."""
    from hpa_kit.predict import PredictOptions, predict_folder
    from hpa_kit.segment import ClassicalSegmenter

    start, cpu = time.perf_counter(), time.process_time()
    options = PredictOptions(
        tta=config.tta,
        num_workers=0,
        device="cpu",
        amp=False,
        threads=config.torch_threads,
        progress=False,
    )
    path = out / f"submission{config.n_test}.csv"
    predict_folder(
        test / "images",
        test / "sample_submission.csv",
        [out / "model" / "best"],
        out=path,
        segmenter=ClassicalSegmenter(config.seg_scale, pixel_size=config.pixel_size),
        options=options,
    )
    return path, time.perf_counter() - start, time.process_time() - cpu


def _variant(
    folder: Path,
    out: Path,
    config,
    variant: str,
    extra: dict[str, Any],
    *,
    reuse: bool,
    stage0_dir: Path | None = None,
) -> dict[str, Any]:
    """Train (or reuse) one variant, predict the test set, score; the result row."""
    from hpa_kit.train import fit

    train_config = _train_config(folder, out / "model", config, extra)
    reused = reuse and _trained_before(out, train_config)
    if not reused and out.exists():
        shutil.rmtree(out)
    shared = None if reused else _share_stage0(out, train_config, stage0_dir)
    start, cpu = time.perf_counter(), time.process_time()
    if not reused:
        fit(train_config.replace(resume=shared is not None))
    train_s, train_cpu = time.perf_counter() - start, time.process_time() - cpu
    test = _test_set(folder, config)
    submission, predict_s, predict_cpu = _predict(test, out, config)
    subset = _full_label_images(test / "truth.csv")
    full, part = _score(submission, test / "truth.csv", subset)
    log = (out / "model" / "log.jsonl").read_text().splitlines()
    row = {
        "map": full,
        "map_full_label_images": part,
        "full_label_images": len(subset),
        "n_test": config.n_test,
        "epochs": len(log),
        "reused_model": reused,
        "stage0_from": shared,
        "seconds": {"train": None if reused else round(train_s, 1), "predict": round(predict_s, 1)},
        "cpu_seconds": {
            "train": None if reused else round(train_cpu, 1),
            "predict": round(predict_cpu, 1),
        },
    }
    if variant == "image-labels":
        row["baselines"] = _baselines(test, out, out / "model" / "best", config, subset)
    return row


# ---------------------------------------------------------------- commands


def _parse_sets(items: list[str]) -> dict[str, Any]:
    from hpa_kit.train import parse_override

    return dict(parse_override(item) for item in items)


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    settings = _settings()[args.setting].replace(**_parse_sets(args.set))
    extra = _parse_sets(args.train)
    tag = args.tag or args.setting
    for seed in args.seeds:
        data_dir = (args.out / "data" / _data_key(settings.replace(seed=seed))).resolve()
        data = _data(data_dir, settings.replace(seed=seed))
        for variant in args.variants:
            config = settings.replace(seed=seed, **VARIANTS[variant])
            out = args.out / tag / f"seed{seed}" / variant
            stage0_dir = args.out / args.stage0_tag / f"seed{seed}" if args.stage0_tag else None
            row = _variant(
                data_dir, out, config, variant, extra, reuse=args.reuse, stage0_dir=stage0_dir
            )
            row.update(
                setting=args.setting,
                tag=tag,
                seed=seed,
                variant=variant,
                sets=args.set,
                train=args.train,
                data=data,
                aten_cpu_capability=os.environ.get("ATEN_CPU_CAPABILITY"),
                cpu_capability=torch.backends.cpu.get_cpu_capability(),
                torch=torch.__version__,
                machine=platform.machine(),
                load=os.getloadavg()[0],
            )
            with open(args.out / "results.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(
                json.dumps(
                    {
                        k: row[k]
                        for k in (
                            "tag",
                            "seed",
                            "variant",
                            "map",
                            "map_full_label_images",
                            "seconds",
                        )
                    }
                ),
                flush=True,
            )


def soft(args: argparse.Namespace) -> None:
    """How good are soft labels, against the oracle? For each seed's ``--variant`` model:
    over the (crop, class) pairs inside each image's labels (the only ones refinement can
    change), the mean absolute error against the oracle labels and the mean over classes of
    the average precision with which the labels rank the truly present pairs first."""
    import numpy as np
    import pandas as pd
    import torch
    from sklearn.metrics import average_precision_score

    from hpa_kit.dataset import bag_groups
    from hpa_kit.labels import parse_labels
    from hpa_kit.pseudo import refine_labels, row_probabilities

    torch.set_num_threads(1)
    settings = _settings()[args.setting].replace(**_parse_sets(args.set))
    for seed in args.seeds:
        config = settings.replace(seed=seed)
        data = (args.out / "data" / _data_key(config)).resolve() / "crops"
        crops = pd.read_csv(data / "crops.csv", dtype={"ID": str, "Label": str})
        oracle = pd.read_csv(data / "crops_oracle.csv", dtype={"ID": str, "Label": str})
        model = args.out / (args.tag or args.setting) / f"seed{seed}" / args.variant / "model"
        train_config = _train_config(data.parent, model, config, {})
        probs = row_probabilities(model / "best", train_config, crops, device="cpu")
        bags = np.zeros(len(crops), dtype=np.int64)
        for b, rows in enumerate(bag_groups(crops["image"].tolist())):
            bags[rows] = b
        given = np.stack([parse_labels(t) for t in crops["Label"]])
        truth = np.stack([parse_labels(t) for t in oracle["Label"]])
        images = np.zeros((bags.max() + 1, given.shape[1]), np.float32)
        np.maximum.at(images, bags, given)
        inside = images[bags] > 0
        peak = _peak(probs, bags)
        ratio = np.divide(probs, peak, out=np.ones_like(probs), where=peak > 0)
        rules = {
            "image labels": given,
            "probabilities inside the labels": probs * inside,
            "per class over the image (step 2)": np.clip(ratio, 0, 1) * inside,
            "+ per cell over the classes (the rule)": refine_labels(probs, images, bags),
            "the rule, floor 0.2": refine_labels(probs, images, bags, floor=0.2),
        }
        for name, labels in rules.items():
            aps = [
                average_precision_score(truth[inside[:, c], c], labels[inside[:, c], c])
                for c in range(truth.shape[1])
                if inside[:, c].any() and 0 < truth[inside[:, c], c].sum() < inside[:, c].sum()
            ]
            error = float(np.abs(labels - truth)[inside].mean())
            print(
                json.dumps(
                    {
                        "seed": seed,
                        "labels": name,
                        "mean_abs_error": round(error, 3),
                        "mean_ap": round(float(np.mean(aps)), 3),
                    }
                ),
                flush=True,
            )


def _peak(probs, bags):
    import numpy as np

    peak = np.zeros((bags.max() + 1, probs.shape[1]))
    np.maximum.at(peak, bags, probs)
    return peak[bags]


def table(args: argparse.Namespace) -> None:
    """Markdown tables per tag: mAP per seed and variant (the last row of each), the
    baselines, the share of the oracle's gap over image-labels each method recovers, and the
    mAP on the test images whose cells all carry their image's labels."""
    rows = [json.loads(line) for line in (args.out / "results.jsonl").read_text().splitlines()]
    for tag in dict.fromkeys(r["tag"] for r in rows):
        last = {(r["seed"], r["variant"]): r for r in rows if r["tag"] == tag}
        seeds = sorted({seed for seed, _ in last})
        variants = [v for v in VARIANTS if any((s, v) in last for s in seeds)]
        print(f"\n### {tag}\n")
        head = " | ".join(f"seed {s}" for s in seeds)
        print(f"| per-cell mAP | {head} | mean |\n|---" + "|---" * (len(seeds) + 1) + "|")
        for variant in variants:
            _table_row(variant, [last.get((s, variant)) for s in seeds], lambda r: r["map"])
        for name in ("baseline", "baseline_cell_mean"):
            cells = [last.get((s, "image-labels")) for s in seeds]
            _table_row(
                f"{name} (image-labels model)", cells, lambda r, n=name: r["baselines"][n][0]
            )
        print(
            f"\n| share of the oracle's gap recovered | {head} |\n|---" + "|---" * len(seeds) + "|"
        )
        for variant in variants:
            if variant in ("image-labels", "oracle"):
                continue
            shares = []
            for s in seeds:
                got = [last.get((s, v)) for v in (variant, "image-labels", "oracle")]
                gap = got[2]["map"] - got[1]["map"] if got[1] and got[2] else None
                shares.append(
                    f"{(got[0]['map'] - got[1]['map']) / gap:+.2f}" if got[0] and gap else "-"
                )
            print(f"| {variant} | " + " | ".join(shares) + " |")
        print(f"\n| mAP, images whose cells all carry the image's labels | {head} |")
        print("|---" + "|---" * len(seeds) + "|")
        for variant in variants:
            _table_row(
                variant,
                [last.get((s, variant)) for s in seeds],
                lambda r: r["map_full_label_images"],
                mean=False,
            )


def _table_row(name: str, cells: list, value, *, mean: bool = True) -> None:
    values = [value(c) if c else None for c in cells]
    text = " | ".join(f"{v:.4f}" if v is not None else "-" for v in values)
    known = [v for v in values if v is not None]
    tail = f" | {sum(known) / len(known):.4f}" if mean and known else ""
    print(f"| {name} | {text}{tail} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--out", type=Path, required=True)
    run_parser.add_argument(
        "--setting", choices=("demo", "weak-labels", "harder"), default="weak-labels"
    )
    run_parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run_parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    run_parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run_parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE")
    run_parser.add_argument("--tag", default=None, help="name of this configuration in the results")
    run_parser.add_argument(
        "--stage0-tag",
        default=None,
        help="refined variants copy their stage 0 from this tag's image-labels / bags run "
        "(default: this tag's)",
    )
    run_parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep a variant's trained model when its training config is unchanged (e.g. to "
        "score it on another test set size)",
    )
    table_parser = sub.add_parser("table")
    table_parser.add_argument("--out", type=Path, required=True)
    soft_parser = sub.add_parser("soft", help="quality of the soft labels against the oracle")
    soft_parser.add_argument("--out", type=Path, required=True)
    soft_parser.add_argument(
        "--setting", choices=("demo", "weak-labels", "harder"), default="weak-labels"
    )
    soft_parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    soft_parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    soft_parser.add_argument("--tag", default=None)
    soft_parser.add_argument("--variant", default="image-labels", choices=list(VARIANTS))
    args = parser.parse_args()
    if args.what == "run":
        args.out.mkdir(parents=True, exist_ok=True)
        run(args)
    elif args.what == "soft":
        soft(args)
    else:
        table(args)


if __name__ == "__main__":
    main()

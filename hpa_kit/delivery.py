"""Kaggle delivery: render kernel and dataset folders, push them, and fail loudly.

The Makefile targets ``kernel``, ``push-kernel`` and ``push-dataset`` call this module
(``python -m hpa_kit.delivery ...``). It does three things:

- **Render metadata.** ``kernel_metadata/*.json`` are templates with ``${NAME}``
  placeholders (owner, slugs, titles). :func:`render_template` fills them from a mapping,
  refuses unknown or missing names and checks the fields Kaggle's client would reject
  (slug and title lengths, ``owner/slug`` references, booleans).
- **Stage folders.** :func:`render_kernel` writes ``kernel-metadata.json`` and the
  ``.ipynb`` made from a jupytext ``py:percent`` notebook (kernelspec set, outputs empty).
  :func:`stage_dataset` makes a clean folder holding only the wheels and
  ``dataset-metadata.json`` (the Kaggle client uploads every top-level file, dotfiles too).
- **Push with error detection.** The ``kaggle`` command exits 0 on errors the server reports
  in a successful reply (a kernel push answered with ``error``, a dataset status other than
  ``ok``, a slug already in use). :func:`push_kernel` and :func:`push_dataset` call the
  Python API instead and raise :class:`DeliveryError` on those replies, on HTTP errors and on
  client-side validation errors.

Credentials come from the environment or ``kaggle.json`` as the Kaggle client reads them;
this module never prints them, forces the client's verbose mode (which prints request
headers) off and removes the key from any error text it shows.

Nothing here holds a path: folders and templates are arguments (paths at the edge).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COMPETITION",
    "DATASET_METADATA_FILE",
    "KERNELSPEC",
    "KERNEL_METADATA_FILE",
    "DeliveryError",
    "PushResult",
    "main",
    "push_dataset",
    "push_kernel",
    "render_kernel",
    "render_template",
    "stage_dataset",
]

COMPETITION = "hpa-single-cell-image-classification"
KERNEL_METADATA_FILE = "kernel-metadata.json"
DATASET_METADATA_FILE = "dataset-metadata.json"
# The kernelspec of Kaggle's Python notebooks.
KERNELSPEC: dict[str, str] = {"display_name": "Python 3", "language": "python", "name": "python3"}

_REF = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_SECRET_VARS = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")
_PUSH_MODES = ("auto", "create", "version")


class DeliveryError(RuntimeError):
    """A render, stage or push step failed; the message says which and why."""


@dataclass(frozen=True)
class PushResult:
    """What Kaggle accepted: ``action`` is "pushed", "created" or "versioned"."""

    ref: str
    action: str
    url: str = ""
    version: int | None = None

    def summary(self) -> str:
        version = f" (version {self.version})" if self.version else ""
        where = f": {self.url}" if self.url else ""
        return f"{self.ref} {self.action}{version}{where}"


# --------------------------------------------------------------------------- rendering


def render_template(text: str, values: Mapping[str, str], *, source: str = "template") -> Any:
    """Fill ``${NAME}`` placeholders of a JSON template and parse the result.

    Every placeholder must have a non-empty value and every value must be used, so a typo on
    either side is an error rather than a silently wrong file.

    >>> render_template('{"id": "${OWNER}/${SLUG}"}', {"OWNER": "ann", "SLUG": "hpa-x"})
    {'id': 'ann/hpa-x'}
    >>> render_template('{"id": "${OWNER}"}', {"OWNER": ""})
    Traceback (most recent call last):
    ...
    hpa_kit.delivery.DeliveryError: template: no value for ${OWNER} (set it, e.g. make ... OWNER=...)
    """
    template = string.Template(text)
    names = {m.group("named") or m.group("braced") for m in template.pattern.finditer(text)}
    names.discard(None)
    missing = sorted(n for n in names if not values.get(n))
    if missing:
        wanted = ", ".join(f"${{{n}}}" for n in missing)
        hint = " ".join(f"{n}=..." for n in missing)
        raise DeliveryError(f"{source}: no value for {wanted} (set it, e.g. make ... {hint})")
    unused = sorted(set(values) - names)
    if unused:
        raise DeliveryError(f"{source}: values {unused} match no placeholder")
    try:
        rendered = template.substitute({k: _json_fragment(v) for k, v in values.items()})
    except ValueError as exc:
        raise DeliveryError(f"{source}: bad placeholder syntax: {exc}") from exc
    try:
        return json.loads(rendered)
    except json.JSONDecodeError as exc:
        raise DeliveryError(f"{source}: not valid JSON once rendered: {exc}") from exc


def _json_fragment(value: str) -> str:
    """Escape a value for use inside a JSON string literal."""
    return json.dumps(str(value))[1:-1]


def _check_kernel_metadata(meta: Mapping[str, Any], source: str) -> None:
    problems = []
    ref = str(meta.get("id", ""))
    if not _REF.match(ref) or len(ref.split("/")[1]) < 5:
        problems.append(f"id {ref!r} must be 'owner/slug' with a slug of >= 5 characters")
    if len(str(meta.get("title", ""))) < 5:
        problems.append("title must have >= 5 characters")
    for key in ("is_private", "enable_gpu", "enable_internet"):
        if not isinstance(meta.get(key), bool):
            problems.append(f"{key} must be set explicitly to true or false")
    for ref in meta.get("dataset_sources", []):
        if not _REF.match(str(ref)):
            problems.append(f"dataset source {ref!r} is not 'owner/slug'")
    if meta.get("kernel_type") != "notebook" or not str(meta.get("code_file", "")).endswith(
        ".ipynb"
    ):
        problems.append("kernel_type must be 'notebook' with an .ipynb code_file")
    if problems:
        raise DeliveryError(f"{source}: " + "; ".join(problems))


def _check_dataset_metadata(meta: Mapping[str, Any], source: str) -> None:
    problems = []
    ref = str(meta.get("id", ""))
    if not _REF.match(ref) or not 6 <= len(ref.split("/")[1]) <= 50:
        problems.append(f"id {ref!r} must be 'owner/slug' with a slug of 6 to 50 characters")
    if not 6 <= len(str(meta.get("title", ""))) <= 50:
        problems.append("title must have 6 to 50 characters")
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or len(licenses) != 1 or "name" not in licenses[0]:
        problems.append("licenses must hold exactly one {'name': ...}")
    if problems:
        raise DeliveryError(f"{source}: " + "; ".join(problems))


def render_kernel(
    notebook: str | Path,
    out: str | Path,
    *,
    template: str | Path,
    values: Mapping[str, str],
) -> Path:
    """Write a pushable kernel folder: ``kernel-metadata.json`` and the notebook as ``.ipynb``.

    ``notebook`` is a jupytext ``py:percent`` file (or an ``.ipynb``); the written notebook
    gets Kaggle's Python kernelspec, empty outputs and no jupytext pairing metadata, and is
    named by the template's ``code_file``. ``out`` is emptied first. Returns ``out``.
    """
    notebook, out, template = Path(notebook), Path(out), Path(template)
    meta = render_template(_read_text(template), values, source=str(template))
    _check_kernel_metadata(meta, str(template))
    try:
        import jupytext
    except ImportError as exc:  # pragma: no cover - jupytext is a dev dependency
        raise ImportError("rendering a kernel needs jupytext: pip install jupytext") from exc
    if not notebook.is_file():
        raise DeliveryError(f"notebook not found: {notebook}")
    nb = jupytext.read(notebook)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    _reset_dir(out)
    jupytext.write(nb, out / meta["code_file"], fmt="ipynb")
    _write_json(out / KERNEL_METADATA_FILE, meta)
    return out


def stage_dataset(
    wheels: str | Path,
    out: str | Path,
    *,
    template: str | Path,
    values: Mapping[str, str],
    require: Sequence[str] = ("hpa_kit",),
) -> list[Path]:
    """Make ``out`` hold only copies of ``wheels/*.whl`` plus ``dataset-metadata.json``.

    ``out`` is emptied first (Kaggle uploads every top-level file, dotfiles included).
    ``require`` names distributions (``"hpa_kit"``, ``"iterative-stratification"``, a version
    after ``==`` is ignored) that must have a wheel there. Returns the staged wheel paths,
    sorted.
    """
    wheels, out, template = Path(wheels), Path(out), Path(template)
    meta = render_template(_read_text(template), values, source=str(template))
    _check_dataset_metadata(meta, str(template))
    found = sorted(p for p in wheels.glob("*.whl") if p.is_file() and not p.name.startswith("."))
    have = {_wheel_project(p.name) for p in found}
    absent = sorted(name for name in require if _normalize(name.split("==")[0]) not in have)
    if absent:
        raise DeliveryError(
            f"{wheels}: no wheel of {absent} (run `make wheels` first); "
            f"found {[p.name for p in found]}"
        )
    _reset_dir(out)
    staged = [Path(shutil.copy2(p, out / p.name)) for p in found]
    _write_json(out / DATASET_METADATA_FILE, meta)
    return staged


def _normalize(name: str) -> str:
    """A project name as wheel file names spell it (PEP 427/503: lower case, runs of
    ``-_.`` as ``_``).

    >>> _normalize("Iterative-Stratification"), _wheel_project("PyYAML-6.0.4-cp312-cp312-x.whl")
    ('iterative_stratification', 'pyyaml')
    """
    return re.sub(r"[-_.]+", "_", name.strip()).lower()


def _wheel_project(filename: str) -> str:
    return _normalize(filename.split("-", 1)[0])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeliveryError(f"template not found: {path}") from None


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _reset_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


# --------------------------------------------------------------------------- pushing


def _redact(text: str) -> str:
    """Remove credential values from text meant for a terminal or a log."""
    for name in _SECRET_VARS:
        secret = os.environ.get(name, "")
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _kaggle_api() -> Any:
    """An authenticated ``KaggleApi`` with its verbose (header-printing) mode off."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise ImportError(
            "pushing to Kaggle needs the kaggle client: pip install 'hpa_kit[kaggle]'"
        ) from exc
    import requests

    api = KaggleApi()
    # Verbose mode prints request headers, including the Authorization header.
    api.args = [a for a in KaggleApi.args if a not in ("--verbose", "-v")]
    try:
        api.authenticate()
    except SystemExit:
        raise DeliveryError(
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), "
            "or put kaggle.json in KAGGLE_CONFIG_DIR"
        ) from None
    except requests.RequestException as exc:  # an access token is checked online
        raise DeliveryError(
            _redact(f"Kaggle authentication failed: {_describe_http_error(exc)}")
        ) from None
    return api


def _describe_http_error(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return f"HTTP {status}: {exc}" if status is not None else f"{type(exc).__name__}: {exc}"


def _call(what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one Kaggle API call; turn every failure into a DeliveryError naming ``what``."""
    import requests

    try:
        return func(*args, **kwargs)
    except requests.RequestException as exc:
        raise DeliveryError(_redact(f"{what} failed: {_describe_http_error(exc)}")) from None
    except (ValueError, OSError) as exc:
        raise DeliveryError(_redact(f"{what} failed: {exc}")) from None


def _read_metadata(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeliveryError(f"{path} not found (render the folder first)") from None
    except json.JSONDecodeError as exc:
        raise DeliveryError(f"{path}: invalid JSON: {exc}") from None


def push_kernel(folder: str | Path) -> PushResult:
    """Push a rendered kernel folder; raise :class:`DeliveryError` on any refusal.

    Refusals include the ones the ``kaggle`` command exits 0 on: a reply with ``error`` set
    and a reply listing invalid dataset, competition, kernel or model sources.
    """
    folder = Path(folder)
    meta = _read_metadata(folder, KERNEL_METADATA_FILE)
    _check_kernel_metadata(meta, str(folder / KERNEL_METADATA_FILE))
    ref = meta["id"]
    api = _kaggle_api()
    reply = _call(f"kernel push of {ref}", api.kernels_push, str(folder))
    if reply is None:
        raise DeliveryError(f"kernel push of {ref}: no reply from Kaggle")
    if reply.error:
        raise DeliveryError(_redact(f"Kaggle refused the kernel push of {ref}: {reply.error}"))
    invalid = {
        "dataset": reply.invalid_dataset_sources,
        "competition": reply.invalid_competition_sources,
        "kernel": reply.invalid_kernel_sources,
        "model": reply.invalid_model_sources,
    }
    bad = "; ".join(f"{kind} sources {list(v)}" for kind, v in invalid.items() if v)
    if bad:
        raise DeliveryError(f"kernel {ref} pushed, but Kaggle rejected its invalid {bad}")
    return PushResult(ref=ref, action="pushed", url=reply.url or "", version=reply.version_number)


def push_dataset(folder: str | Path, *, mode: str = "auto", notes: str = "") -> PushResult:
    """Create or version the dataset staged in ``folder``; raise on any refusal.

    ``mode``: "create", "version", or "auto" (version when Kaggle knows the dataset, create
    when it answers 404). ``notes`` are the version notes. The folder must hold no dotfiles
    and no sub-folders (they would be uploaded or silently skipped).
    """
    if mode not in _PUSH_MODES:
        raise ValueError(f"mode must be one of {_PUSH_MODES}, got {mode!r}")
    folder = Path(folder)
    meta = _read_metadata(folder, DATASET_METADATA_FILE)
    _check_dataset_metadata(meta, str(folder / DATASET_METADATA_FILE))
    stray = sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.is_dir())
    if stray:
        raise DeliveryError(f"{folder}: not a clean staging folder, holds {stray}")
    ref = meta["id"]
    api = _kaggle_api()
    if mode == "auto":
        mode = "version" if _dataset_exists(api, ref) else "create"
    if mode == "create":
        reply = _call(f"dataset create of {ref}", api.dataset_create_new, str(folder))
        action = "created"
    else:
        reply = _call(
            f"dataset version of {ref}",
            api.dataset_create_version,
            str(folder),
            notes or "new version",
        )
        action = "versioned"
    if reply is None:
        raise DeliveryError(f"dataset {mode} of {ref}: no reply from Kaggle")
    status = (reply.status or "").lower()
    if status != "ok":
        reason = reply.error or f"status {reply.status!r}"
        raise DeliveryError(_redact(f"Kaggle refused the dataset {mode} of {ref}: {reason}"))
    return PushResult(ref=ref, action=action, url=reply.url or "")


def _dataset_exists(api: Any, ref: str) -> bool:
    import requests

    try:
        api.dataset_status(ref)
    except requests.HTTPError as exc:
        if getattr(exc.response, "status_code", None) == 404:
            return False
        raise DeliveryError(
            _redact(f"dataset status of {ref}: {_describe_http_error(exc)}")
        ) from None
    except requests.RequestException as exc:
        raise DeliveryError(
            _redact(f"dataset status of {ref}: {_describe_http_error(exc)}")
        ) from None
    return True


# --------------------------------------------------------------------------- command line


def _parse_values(pairs: Sequence[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise DeliveryError(f"--set wants NAME=VALUE, got {pair!r}")
        values[name] = value
    return values


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hpa_kit.delivery",
        description="Render and push the Kaggle kernel and the wheels dataset.",
    )
    sub = parser.add_subparsers(dest="step", required=True)

    p = sub.add_parser("render-kernel", help="write a kernel folder from a notebook")
    p.add_argument("notebook", type=Path, help="py:percent notebook (or .ipynb)")
    p.add_argument("--template", type=Path, required=True, help="kernel-metadata template")
    p.add_argument("--out", type=Path, required=True, help="folder to (re)create")
    p.add_argument("--set", dest="values", action="append", default=[], metavar="NAME=VALUE")

    p = sub.add_parser("stage-dataset", help="stage wheels + dataset-metadata.json")
    p.add_argument("wheels", type=Path, help="folder of .whl files")
    p.add_argument(
        "--require",
        action="append",
        default=["hpa_kit"],
        metavar="NAME",
        help="a distribution that must have a wheel in the folder (hpa_kit always)",
    )
    p.add_argument("--template", type=Path, required=True, help="dataset-metadata template")
    p.add_argument("--out", type=Path, required=True, help="folder to (re)create")
    p.add_argument("--set", dest="values", action="append", default=[], metavar="NAME=VALUE")

    p = sub.add_parser("push-kernel", help="push a rendered kernel folder")
    p.add_argument("folder", type=Path)

    p = sub.add_parser("push-dataset", help="create or version a staged dataset folder")
    p.add_argument("folder", type=Path)
    p.add_argument("--mode", choices=_PUSH_MODES, default="auto")
    p.add_argument("--notes", default="", help="version notes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the Makefile's delivery targets; returns the exit code."""
    args = _build_parser().parse_args(argv)
    try:
        if args.step == "render-kernel":
            out = render_kernel(
                args.notebook, args.out, template=args.template, values=_parse_values(args.values)
            )
            print(f"kernel folder ready: {out}")
        elif args.step == "stage-dataset":
            staged = stage_dataset(
                args.wheels,
                args.out,
                template=args.template,
                values=_parse_values(args.values),
                require=args.require,
            )
            print(f"dataset folder ready: {args.out} ({len(staged)} wheel files)")
            for path in staged:
                print(f"  {path.name}")
        elif args.step == "push-kernel":
            print("kernel " + push_kernel(args.folder).summary())
        else:
            result = push_dataset(args.folder, mode=args.mode, notes=args.notes)
            print("dataset " + result.summary())
    except DeliveryError as exc:
        print(f"error: {_redact(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

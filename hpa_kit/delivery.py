"""Kaggle delivery: render kernel and dataset folders, push them, and fail loudly.

The Makefile targets ``kernel``, ``push-kernel`` and ``push-dataset`` call this module
(``python -m hpa_kit.delivery ...``). It does four things:

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
- **Check the wheel set for Kaggle's Python.** :func:`check_wheel_set` asks pip, offline,
  whether a folder holds a wheel of each required distribution that a given CPython and
  platform (Kaggle's notebook image: 3.12, manylinux x86_64) can install.

Every request to Kaggle has a timeout (:class:`KaggleTimeouts`: 60 s per API call and 300 s
per upload by default, or ``HPA_KIT_KAGGLE_TIMEOUT`` / ``HPA_KIT_KAGGLE_UPLOAD_TIMEOUT``);
a request that times out ends the step with one line naming it, without retries.

Credentials come from the environment or ``kaggle.json`` as the Kaggle client reads them.
This module asks the client where it found them, removes them (the key, the access token)
from every message it prints or raises and from what the client prints while it runs, and
forces the client's verbose mode (which prints request headers) off.

Exit status of ``python -m hpa_kit.delivery``: 0 done; 2 a usage problem found before any
upload (:class:`DeliveryUsageError`: a bad template, metadata, folder, option or missing
credentials); 1 Kaggle refused, an HTTP error or a timeout (:class:`DeliveryError`).

Nothing here holds a path: folders and templates are arguments (paths at the edge).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import re
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from hpa_kit.errors import DEBUG_ENV, RunError, UsageError, describe
from hpa_kit.outputs import atomic_write_text
from hpa_kit.progress import interactive

__all__ = [
    "COMPETITION",
    "DATASET_METADATA_FILE",
    "KERNELSPEC",
    "KERNEL_METADATA_FILE",
    "TIMEOUT_ENV",
    "UPLOAD_TIMEOUT_ENV",
    "DeliveryError",
    "DeliveryUsageError",
    "KaggleTimeouts",
    "PushResult",
    "check_wheel_set",
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
TIMEOUT_ENV = "HPA_KIT_KAGGLE_TIMEOUT"
"""Environment variable: seconds to wait for each Kaggle API call (default 60)."""
UPLOAD_TIMEOUT_ENV = "HPA_KIT_KAGGLE_UPLOAD_TIMEOUT"
"""Environment variable: seconds an upload may stall (default 300)."""

_REF = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_PUSH_MODES = ("auto", "create", "version")


class DeliveryError(RunError):
    """A push or check failed (Kaggle refused, an HTTP error, a timeout); exit status 1.

    The message says which step and why; credentials are removed from it when it is made.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_redact(message))


class DeliveryUsageError(DeliveryError, UsageError):
    """A template, metadata file, folder, option or credential is wrong or missing, found
    before anything was sent; exit status 2."""

    exit_code = 2


@dataclass(frozen=True)
class KaggleTimeouts:
    """Seconds to wait for the Kaggle service: ``api`` for an API call, ``upload`` for a file
    upload. Each bounds every wait of one request (connecting, sending a block, receiving),
    so an upload that keeps moving is never cut, and one that stalls ends after ``upload``.

    >>> KaggleTimeouts.from_env({"HPA_KIT_KAGGLE_TIMEOUT": "5"})
    KaggleTimeouts(api=5.0, upload=300.0)
    >>> KaggleTimeouts(api=0)
    Traceback (most recent call last):
    ...
    hpa_kit.delivery.DeliveryUsageError: api timeout must be a positive number of seconds, got 0
    """

    api: float = 60.0
    upload: float = 300.0

    def __post_init__(self) -> None:
        for name in ("api", "upload"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise DeliveryUsageError(
                    f"{name} timeout must be a positive number of seconds, got {value!r}"
                )
            object.__setattr__(self, name, float(value))

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        api: float | None = None,
        upload: float | None = None,
    ) -> KaggleTimeouts:
        """``api``/``upload`` when given, else ``HPA_KIT_KAGGLE_TIMEOUT`` /
        ``HPA_KIT_KAGGLE_UPLOAD_TIMEOUT`` from ``environ`` (default ``os.environ``), else
        the defaults."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, given, var in (("api", api, TIMEOUT_ENV), ("upload", upload, UPLOAD_TIMEOUT_ENV)):
            text = environ.get(var, "").strip()
            if given is not None:
                values[name] = given
            elif text:
                try:
                    values[name] = float(text)
                except ValueError:
                    raise DeliveryUsageError(f"{var}={text!r} is not a number of seconds") from None
        return cls(**values)


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
    hpa_kit.delivery.DeliveryUsageError: template: no value for ${OWNER} (set it, e.g. make ... OWNER=...)
    """
    template = string.Template(text)
    names = {m.group("named") or m.group("braced") for m in template.pattern.finditer(text)}
    names.discard(None)
    missing = sorted(n for n in names if not values.get(n))
    if missing:
        wanted = ", ".join(f"${{{n}}}" for n in missing)
        hint = " ".join(f"{n}=..." for n in missing)
        raise DeliveryUsageError(f"{source}: no value for {wanted} (set it, e.g. make ... {hint})")
    unused = sorted(set(values) - names)
    if unused:
        raise DeliveryUsageError(f"{source}: values {unused} match no placeholder")
    try:
        rendered = template.substitute({k: _json_fragment(v) for k, v in values.items()})
    except ValueError as exc:
        raise DeliveryUsageError(f"{source}: bad placeholder syntax: {exc}") from exc
    try:
        return json.loads(rendered)
    except json.JSONDecodeError as exc:
        raise DeliveryUsageError(f"{source}: not valid JSON once rendered: {exc}") from exc


def _json_fragment(value: str) -> str:
    """Escape a value for use inside a JSON string literal."""
    return json.dumps(str(value))[1:-1]


def _check_kernel_metadata(meta: Any, source: str) -> None:
    if not isinstance(meta, dict):
        raise DeliveryUsageError(f"{source}: must hold a JSON object, not {type(meta).__name__}")
    problems = []
    ref = str(meta.get("id", ""))
    if not _REF.match(ref) or len(ref.split("/")[1]) < 5:
        problems.append(f"id {ref!r} must be 'owner/slug' with a slug of >= 5 characters")
    if len(str(meta.get("title", ""))) < 5:
        problems.append("title must have >= 5 characters")
    for key in ("is_private", "enable_gpu", "enable_internet"):
        if not isinstance(meta.get(key), bool):
            problems.append(f"{key} must be set explicitly to true or false")
    sources = meta.get("dataset_sources", [])
    if not isinstance(sources, list):
        problems.append("dataset_sources must be a list of 'owner/slug'")
    else:
        bad = [r for r in sources if not (isinstance(r, str) and _REF.match(r))]
        problems += [f"dataset source {r!r} is not 'owner/slug'" for r in bad]
    code_file = meta.get("code_file")
    if meta.get("kernel_type") != "notebook" or not str(code_file or "").endswith(".ipynb"):
        problems.append("kernel_type must be 'notebook' with an .ipynb code_file")
    elif not _is_plain_name(code_file):
        # The client uploads the text of code_file: it must be the folder's own notebook.
        problems.append(f"code_file {code_file!r} must be a file name inside the kernel folder")
    if problems:
        raise DeliveryUsageError(f"{source}: " + "; ".join(problems))


def _is_plain_name(name: Any) -> bool:
    """A bare file name: no folder part, not ``.``/``..``, not hidden.

    >>> [_is_plain_name(n) for n in ("a.ipynb", "../a.ipynb", "/etc/a.ipynb", ".a.ipynb")]
    [True, False, False, False]
    """
    return (
        isinstance(name, str)
        and name == Path(name).name
        and "\\" not in name
        and not name.startswith(".")
    )


def _check_dataset_metadata(meta: Any, source: str) -> None:
    if not isinstance(meta, dict):
        raise DeliveryUsageError(f"{source}: must hold a JSON object, not {type(meta).__name__}")
    problems = []
    ref = str(meta.get("id", ""))
    if not _REF.match(ref) or not 6 <= len(ref.split("/")[1]) <= 50:
        problems.append(f"id {ref!r} must be 'owner/slug' with a slug of 6 to 50 characters")
    if not 6 <= len(str(meta.get("title", ""))) <= 50:
        problems.append("title must have 6 to 50 characters")
    licenses = meta.get("licenses")
    if (
        not isinstance(licenses, list)
        or len(licenses) != 1
        or not isinstance(licenses[0], dict)
        or "name" not in licenses[0]
    ):
        problems.append("licenses must hold exactly one {'name': ...}")
    if problems:
        raise DeliveryUsageError(f"{source}: " + "; ".join(problems))


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
    named by the template's ``code_file``. ``out`` is emptied first (refused when it holds
    files but no ``kernel-metadata.json``: not a folder this function wrote). Returns ``out``.
    """
    notebook, out, template = Path(notebook), Path(out), Path(template)
    meta = render_template(_read_text(template), values, source=str(template))
    _check_kernel_metadata(meta, str(template))
    try:
        import jupytext
    except ImportError as exc:  # pragma: no cover - jupytext is a dev dependency
        raise ImportError("rendering a kernel needs jupytext: pip install jupytext") from exc
    if not notebook.is_file():
        raise DeliveryUsageError(f"notebook not found: {notebook}")
    nb = jupytext.read(notebook)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    _reset_dir(out, marker=KERNEL_METADATA_FILE)
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

    ``out`` is emptied first (Kaggle uploads every top-level file, dotfiles included); it is
    refused when it holds files but no ``dataset-metadata.json`` (not a folder staged here).
    ``require`` names distributions (``"hpa_kit"``, ``"iterative-stratification"``, a version
    after ``==`` is ignored) that must have a wheel there. Dotfiles, folders and other files
    are left out; a ``.whl`` that is a link or not a wheel archive is refused. Returns the
    staged wheel paths, sorted.
    """
    wheels, out, template = Path(wheels), Path(out), Path(template)
    meta = render_template(_read_text(template), values, source=str(template))
    _check_dataset_metadata(meta, str(template))
    found = sorted(p for p in wheels.glob("*.whl") if not p.name.startswith("."))
    for path in found:
        _check_wheel_file(path)
    have = {_wheel_project(p.name) for p in found}
    absent = sorted(name for name in require if _normalize(name.split("==")[0]) not in have)
    if absent:
        raise DeliveryUsageError(
            f"{wheels}: no wheel of {absent} (run `make wheels` first); "
            f"found {[p.name for p in found]}"
        )
    _reset_dir(out, marker=DATASET_METADATA_FILE)
    staged = [Path(shutil.copy2(p, out / p.name)) for p in found]
    _write_json(out / DATASET_METADATA_FILE, meta)
    return staged


def _check_wheel_file(path: Path) -> None:
    """Refuse a ``.whl`` that is a link (it could point at any file, a key included), not a
    regular file, or not a zip archive holding a ``.dist-info/WHEEL``."""
    if path.is_symlink() or not path.is_file():
        raise DeliveryUsageError(f"{path}: not a regular file (links are not staged)")
    try:
        with zipfile.ZipFile(path) as archive:
            ok = any(n.endswith(".dist-info/WHEEL") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise DeliveryUsageError(f"{path}: not a wheel archive ({exc})") from None
    if not ok:
        raise DeliveryUsageError(f"{path}: not a wheel archive (no .dist-info/WHEEL inside)")


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
        raise DeliveryUsageError(f"template not found: {path}") from None


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _reset_dir(path: Path, *, marker: str) -> None:
    """Empty ``path`` (or create it). A folder is emptied only when it is empty or holds
    ``marker``, the metadata file this module writes there: anything else is not ours."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise DeliveryUsageError(f"--out {path} is not a folder")
    if path.exists() and any(path.iterdir()) and not (path / marker).is_file():
        raise DeliveryUsageError(
            f"--out {path} holds files hpa_kit did not write (no {marker}): "
            "choose an empty or new folder"
        )
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


# --------------------------------------------------------------------------- wheel set


def check_wheel_set(
    folder: str | Path,
    *,
    requirements: Sequence[str],
    python_version: str,
    platforms: Sequence[str],
) -> list[str]:
    """Check, offline, that pip finds in ``folder`` a wheel of each requirement that CPython
    ``python_version`` on one of ``platforms`` can install; return the file names it picks.

    The rule for Kaggle (the Makefile's ``check-wheels``, with ``KAGGLE_PYTHON`` 3.12 and
    ``KAGGLE_PLATFORMS`` manylinux x86_64): the set is hpa_kit plus the distributions
    Kaggle's image lacks (``KAGGLE_EXTRA_WHEELS``); hpa_kit's other dependencies (torch,
    timm, ...) come with the image. So each requirement is resolved alone (``--no-deps``), from the
    folder only (``--no-index``, no pip configuration), binary wheels only. Raises
    :class:`DeliveryUsageError` naming every requirement without such a wheel.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DeliveryUsageError(f"wheels folder not found: {folder} (run `make wheels` first)")
    if not requirements or any(not r.strip() or r.lstrip().startswith("-") for r in requirements):
        raise DeliveryUsageError(f"requirements must be names or NAME==VERSION, got {requirements}")
    remaining, failed, errors = list(requirements), [], []
    while remaining:
        picked, error = _pip_download(folder, remaining, python_version, platforms)
        if not error:
            break
        # pip stops at the first requirement it cannot meet and names it: set it aside and
        # try the others, so that the message names every missing wheel.
        culprit = next((r for r in remaining if error.endswith(f" for {r}")), None)
        errors.append(error)
        failed += [culprit] if culprit else remaining
        remaining = [r for r in remaining if culprit and r != culprit]
    if failed:
        found = sorted(p.name for p in folder.glob("*.whl"))
        raise DeliveryUsageError(
            f"{folder}: no wheel of {', '.join(failed)} that CPython {python_version} on "
            f"{' / '.join(platforms)} can install (pip, offline: {errors[0]}); found {found}"
        )
    return picked


def _pip_download(
    folder: Path, requirements: Sequence[str], python_version: str, platforms: Sequence[str]
) -> tuple[list[str], str]:
    """``pip download`` from ``folder`` alone: (file names picked, "") or ([], pip's error)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index, find-links or constraints from config
    with tempfile.TemporaryDirectory(prefix="hpa_kit-wheel-check-") as out:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-index", "--no-deps",
            "--disable-pip-version-check", "--only-binary=:all:", "--find-links", str(folder),
            "--python-version", python_version, "--implementation", "cp",
            *[arg for p in platforms for arg in ("--platform", p)],
            "--dest", out, *requirements,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            lines = (result.stderr + result.stdout).strip().splitlines()
            return [], lines[-1] if lines else f"pip exited with {result.returncode}"
        return sorted(p.name for p in Path(out).iterdir()), ""


# --------------------------------------------------------------------------- guarding the client
# The kaggle client (kaggle 2.2.5, kagglesdk 0.1.38) makes its own ``requests`` sessions (one
# per API client, one per file upload) and gives them no timeout, so a server that accepts
# the connection and never answers blocks it forever. It also retries a lot: urllib3 retries
# an upload PUT up to 10 times, ``with_retry`` retries connect errors 10 times with back-off,
# and an upload that raises anything is resumed up to 10 times. While :func:`_guarded` is
# active:
# - every request sent by a ``requests.Session`` gets a socket timeout when its caller gave
#   none: ``upload`` seconds for a PUT (the file uploads), ``api`` seconds for the rest. It
#   bounds each wait of the request (connecting, sending one block, receiving), not the
#   whole transfer, so a large upload that keeps moving is never cut;
# - a request that times out is not retried: :class:`_RequestTimedOut` ends the whole step.
#   It derives from BaseException so that the client's ``except Exception`` retry loops let
#   it through (the reason KeyboardInterrupt does);
# - sys.stdout and sys.stderr pass, line by line, through :func:`_redact`, so what the client
#   prints (progress, retry messages that quote a server reply) shows no credential.
# :func:`_remember_secret` adds a credential; :func:`_redact` replaces each one remembered,
# and the current values of KAGGLE_KEY and KAGGLE_API_TOKEN, by ``***``.

_SECRET_ENV_VARS = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")
_MIN_SECRET_LEN = 4  # shorter values would blank out ordinary words
_secrets: set[str] = set()
_guard_lock = threading.Lock()


def _remember_secret(value: object) -> None:
    """Add a credential to those :func:`_redact` removes (non-strings and short values are
    ignored)."""
    if isinstance(value, str) and len(value.strip()) >= _MIN_SECRET_LEN:
        _secrets.add(value.strip())


def _redact(text: str) -> str:
    """``text`` with every remembered credential, and those in the environment, as ``***``.

    >>> _remember_secret("0123-doc-example-key")
    >>> _redact("HTTP 401: unknown key 0123-doc-example-key")
    'HTTP 401: unknown key ***'
    """
    values = set(_secrets)
    for name in _SECRET_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if len(value) >= _MIN_SECRET_LEN:
            values.add(value)
    for value in sorted(values, key=len, reverse=True):  # longest first: one may contain another
        text = text.replace(value, "***")
    return text


class _RequestTimedOut(BaseException):  # noqa: N818 - named like KeyboardInterrupt
    """A request to the Kaggle service got no answer in time; ends the step without retries.

    ``request`` is the method and URL (without its query, which may hold a signed token);
    ``seconds`` the limit; ``upload`` whether it was a file upload.
    """

    def __init__(self, request: str, seconds: float, *, upload: bool) -> None:
        super().__init__(f"no answer to {request} within {seconds:g} s")
        self.request, self.seconds, self.upload = request, seconds, upload


@contextmanager
def _guarded(*, api_timeout: float, upload_timeout: float) -> Iterator[None]:
    """Timeouts on every request and redacted ``stdout``/``stderr`` for the block's duration.

    Process-wide while active (it patches ``requests.Session.send``); one block at a time.
    """
    with _guard_lock:
        out, err = _RedactingStream(sys.stdout), _RedactingStream(sys.stderr)
        try:
            with (
                redirect_stdout(out),
                redirect_stderr(err),
                _request_timeouts(api_timeout, upload_timeout),
            ):
                yield
        finally:
            out.finish()
            err.finish()


@contextmanager
def _request_timeouts(api: float, upload: float) -> Iterator[None]:
    import requests
    from urllib3.util.retry import Retry

    original = requests.Session.send

    def send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        is_upload = request.method == "PUT"
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = upload if is_upload else api
        limit = kwargs["timeout"]
        adapter = self.get_adapter(url=request.url)
        retries = getattr(adapter, "max_retries", None)
        if isinstance(retries, Retry):  # no silent retry of a timed-out connect or read
            adapter.max_retries = retries.new(connect=0, read=False)
        try:
            return original(self, request, **kwargs)
        except Exception as exc:
            if _is_timeout(exc):
                where = f"{request.method} {_without_query(request.url)}"
                seconds = limit if isinstance(limit, (int, float)) else max(limit)
                raise _RequestTimedOut(where, seconds, upload=is_upload) from None
            raise
        finally:
            if isinstance(retries, Retry):
                adapter.max_retries = retries

    requests.Session.send = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        requests.Session.send = original  # type: ignore[method-assign]


def _is_timeout(exc: BaseException) -> bool:
    """Whether a timeout is at the root of ``exc`` (requests wraps urllib3's, which wraps the
    socket's, in several ways: a read timeout while reading a body is a ConnectionError)."""
    import requests
    import urllib3

    kinds = (TimeoutError, requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kinds):
            return True
        linked = [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
        stack.extend(x for x in linked if isinstance(x, BaseException))
    return False


def _without_query(url: str) -> str:
    """
    >>> _without_query("https://storage.example/upload/b1?X-Goog-Signature=abc")
    'https://storage.example/upload/b1'
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class _RedactingStream(io.TextIOBase):
    """A text stream that writes whole lines (ended by ``\\n`` or ``\\r``) to ``target``,
    redacted; a credential split over two writes is still caught."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self._target = target
        self._pending = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(getattr(self._target, "isatty", lambda: False)())

    def write(self, text: str) -> int:
        self._pending += text
        cut = max(self._pending.rfind("\n"), self._pending.rfind("\r")) + 1
        if cut:
            self._target.write(_redact(self._pending[:cut]))
            self._pending = self._pending[cut:]
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def finish(self) -> None:
        """Write what is left (an unterminated last line)."""
        if self._pending:
            self._target.write(_redact(self._pending))
            self._pending = ""
        self._target.flush()


# --------------------------------------------------------------------------- pushing


def _timed_out(what: str, exc: _RequestTimedOut) -> DeliveryError:
    option, var = (
        ("--upload-timeout", UPLOAD_TIMEOUT_ENV) if exc.upload else ("--timeout", TIMEOUT_ENV)
    )
    return DeliveryError(f"{what} timed out: {exc} (to wait longer: {option} or {var})")


def _call(what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one kaggle client call; turn every failure into a DeliveryError naming ``what``."""
    import requests

    try:
        return func(*args, **kwargs)
    except _RequestTimedOut as exc:
        raise _timed_out(what, exc) from None
    except requests.RequestException as exc:
        raise DeliveryError(f"{what} failed: {_describe_http_error(exc)}") from None
    except Exception as exc:  # the client raises ValueError, Exception, ... on refusals
        raise DeliveryError(f"{what} failed: {describe(exc)}") from None


def _describe_http_error(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return f"HTTP {status}: {exc}" if status is not None else f"{type(exc).__name__}: {exc}"


@contextmanager
def _kaggle_api(timeouts: KaggleTimeouts | None) -> Iterator[Any]:
    """An authenticated ``KaggleApi``, used inside :func:`_guarded`
    (timeouts, redacted output); its verbose (header-printing) mode is off."""
    timeouts = KaggleTimeouts.from_env() if timeouts is None else timeouts
    with _guarded(api_timeout=timeouts.api, upload_timeout=timeouts.upload):
        try:
            yield _authenticated_api()
        except _RequestTimedOut as exc:  # a request made outside _call
            raise _timed_out("a Kaggle request", exc) from None


def _authenticated_api() -> Any:
    # The client prints its sign-in help when it finds no credentials (at import, too):
    # hold its output back, show it (once per line) only when authentication worked.
    held = io.StringIO()
    with redirect_stdout(held), redirect_stderr(held):
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi
        except ImportError as exc:
            raise ImportError(
                "pushing to Kaggle needs the kaggle client: pip install 'hpa_kit[kaggle]'"
            ) from exc
        except _RequestTimedOut as exc:  # `import kaggle` authenticates (an access token online)
            raise _timed_out("Kaggle authentication", exc) from None
        api = KaggleApi()
        _remember_credentials(api)
        # Verbose mode prints request headers, including the Authorization header.
        api.args = [a for a in KaggleApi.args if a not in ("--verbose", "-v")]
        signed_in = _call("Kaggle authentication", _authenticate, api)
    if not signed_in:
        raise DeliveryUsageError(
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), "
            f"or put kaggle.json in KAGGLE_CONFIG_DIR (the client looked in {api.config_dir})"
        )
    lines = held.getvalue().splitlines()
    for line in dict.fromkeys(x for x in lines if x.strip()):
        print(line)
    _remember_secret(api.config_values.get("token"))
    return api


def _authenticate(api: Any) -> bool:
    try:
        api.authenticate()
    except SystemExit:  # the client exits when it finds no credentials
        return False
    return True


def _remember_credentials(api: Any) -> None:
    """Remember every credential the client would use, wherever it read it from: the key
    in ``kaggle.json`` or the environment, an access token (variable or file), and the
    basic-auth header value made of them."""
    from kagglesdk import get_access_token_from_env

    config = api.read_config_file(quiet=True)
    if not isinstance(config, dict):
        raise DeliveryUsageError(f"{api.config}: must hold a JSON object with username and key")
    config = api.read_config_environment(config)
    for name in ("key", "token", "api_token"):
        _remember_secret(config.get(name))
    _remember_secret(get_access_token_from_env()[0])
    user, key = config.get("username"), config.get("key")
    if isinstance(user, str) and isinstance(key, str) and key:
        _remember_secret(base64.b64encode(f"{user}:{key}".encode()).decode())


def _read_metadata(folder: Path, name: str) -> Any:
    path = folder / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeliveryUsageError(f"{path} not found (render the folder first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeliveryUsageError(f"{path}: invalid JSON: {exc}") from None


def push_kernel(folder: str | Path, *, timeouts: KaggleTimeouts | None = None) -> PushResult:
    """Push a rendered kernel folder; raise :class:`DeliveryError` on any refusal.

    Refusals include the ones the ``kaggle`` command exits 0 on: a reply with ``error`` set
    and a reply listing invalid dataset, competition, kernel or model sources. ``timeouts``
    default to :meth:`KaggleTimeouts.from_env`.
    """
    folder = Path(folder)
    meta = _read_metadata(folder, KERNEL_METADATA_FILE)
    _check_kernel_metadata(meta, str(folder / KERNEL_METADATA_FILE))
    _check_notebook_file(folder / meta["code_file"])
    ref = meta["id"]
    with _kaggle_api(timeouts) as api:
        reply = _call(f"kernel push of {ref}", api.kernels_push, str(folder))
    if reply is None:
        raise DeliveryError(f"kernel push of {ref}: no reply from Kaggle")
    if reply.error:
        raise DeliveryError(f"Kaggle refused the kernel push of {ref}: {reply.error}")
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


def _check_notebook_file(path: Path) -> None:
    """The kernel's notebook: a regular file (not a link) holding notebook JSON."""
    if path.is_symlink() or not path.is_file():
        raise DeliveryUsageError(f"{path}: not found or not a regular file (render it first)")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeliveryUsageError(f"{path}: not a notebook: {exc}") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise DeliveryUsageError(f"{path}: not a notebook (no list of cells)")


def push_dataset(
    folder: str | Path,
    *,
    mode: str = "auto",
    notes: str = "",
    timeouts: KaggleTimeouts | None = None,
) -> PushResult:
    """Create or version the dataset staged in ``folder``; raise on any refusal.

    ``mode``: "create", "version", or "auto" (version when Kaggle knows the dataset, create
    when it answers 404). ``notes`` are the version notes. The folder must hold no dotfiles,
    no sub-folders and no links (they would be uploaded, silently skipped, or upload a file
    from elsewhere). ``timeouts`` default to :meth:`KaggleTimeouts.from_env`.
    """
    if mode not in _PUSH_MODES:
        raise DeliveryUsageError(f"mode must be one of {_PUSH_MODES}, got {mode!r}")
    folder = Path(folder)
    meta = _read_metadata(folder, DATASET_METADATA_FILE)
    _check_dataset_metadata(meta, str(folder / DATASET_METADATA_FILE))
    stray = sorted(
        p.name for p in folder.iterdir() if p.name.startswith(".") or p.is_symlink() or p.is_dir()
    )
    if stray:
        raise DeliveryUsageError(f"{folder}: not a clean staging folder, holds {stray}")
    ref = meta["id"]
    quiet = not interactive()  # the client's upload bars and notes, only where they are seen
    with _kaggle_api(timeouts) as api:
        if mode == "auto":
            mode = "version" if _dataset_exists(api, ref) else "create"
        if mode == "create":
            what, action = f"dataset create of {ref}", "created"
            reply = _call(what, api.dataset_create_new, str(folder), quiet=quiet)
        else:
            what, action = f"dataset version of {ref}", "versioned"
            notes = notes or "new version"
            reply = _call(what, api.dataset_create_version, str(folder), notes, quiet=quiet)
    if reply is None:
        raise DeliveryError(f"dataset {mode} of {ref}: no reply from Kaggle")
    status = (reply.status or "").lower()
    if status != "ok":
        reason = reply.error or f"status {reply.status!r}"
        raise DeliveryError(f"Kaggle refused the dataset {mode} of {ref}: {reason}")
    return PushResult(ref=ref, action=action, url=reply.url or "")


def _dataset_exists(api: Any, ref: str) -> bool:
    return _call(f"dataset status of {ref}", _status_unless_absent, api, ref)


def _status_unless_absent(api: Any, ref: str) -> bool:
    """True when Kaggle knows the dataset, False when it answers 404; other errors raise."""
    import requests

    try:
        api.dataset_status(ref)
    except requests.HTTPError as exc:
        if getattr(exc.response, "status_code", None) == 404:
            return False
        raise
    return True


# --------------------------------------------------------------------------- command line


def _parse_values(pairs: Sequence[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise DeliveryUsageError(f"--set wants NAME=VALUE, got {pair!r}")
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

    p = sub.add_parser("check-wheels", help="check a wheels folder installs on Kaggle's Python")
    p.add_argument("wheels", type=Path, help="folder of .whl files")
    p.add_argument(
        "--require",
        action="append",
        required=True,
        metavar="SPEC",
        help="a requirement (NAME or NAME==VERSION) that needs a wheel there (repeat)",
    )
    p.add_argument("--python-version", required=True, help="e.g. 3.12")
    p.add_argument(
        "--platform",
        dest="platforms",
        action="append",
        required=True,
        metavar="TAG",
        help="a platform tag, e.g. manylinux2014_x86_64 (repeat)",
    )

    timeout_help = f"seconds to wait for each API call (default: ${TIMEOUT_ENV} or 60)"
    upload_help = f"seconds an upload may stall (default: ${UPLOAD_TIMEOUT_ENV} or 300)"
    p = sub.add_parser("push-kernel", help="push a rendered kernel folder")
    p.add_argument("folder", type=Path)
    p.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)
    p.add_argument("--upload-timeout", type=float, metavar="SECONDS", help=upload_help)

    p = sub.add_parser("push-dataset", help="create or version a staged dataset folder")
    p.add_argument("folder", type=Path)
    p.add_argument("--mode", choices=_PUSH_MODES, default="auto")
    p.add_argument("--notes", default="", help="version notes")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)
    p.add_argument("--upload-timeout", type=float, metavar="SECONDS", help=upload_help)
    return parser


def _run_step(args: argparse.Namespace) -> int:
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
    elif args.step == "check-wheels":
        picked = check_wheel_set(
            args.wheels,
            requirements=args.require,
            python_version=args.python_version,
            platforms=args.platforms,
        )
        print(f"wheels for CPython {args.python_version}: {' '.join(picked)}")
    else:
        timeouts = KaggleTimeouts.from_env(api=args.timeout, upload=args.upload_timeout)
        if args.step == "push-kernel":
            print("kernel " + push_kernel(args.folder, timeouts=timeouts).summary())
        else:
            result = push_dataset(args.folder, mode=args.mode, notes=args.notes, timeouts=timeouts)
            print("dataset " + result.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the Makefile's delivery targets; returns the exit status (0 done,
    1 the push or check failed, 2 a usage problem found before anything was sent)."""
    from hpa_kit.cli import run_command

    args = _build_parser().parse_args(argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return run_command(_run_step, args, name=f"hpa_kit.delivery {args.step}", debug=debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

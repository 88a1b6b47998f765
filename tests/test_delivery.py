"""Kaggle delivery: metadata rendering, the Makefile push targets against a loopback fake
Kaggle (the real kaggle client on the wire), and an offline install from `make wheels`."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest
from fake_kaggle import FakeKaggle, client_env, run_delivery, write_wheel
from nbrun import make_kernelspec, outputs_text, run_notebook

from hpa_kit.delivery import (
    TIMEOUT_ENV,
    UPLOAD_TIMEOUT_ENV,
    DeliveryError,
    DeliveryUsageError,
    KaggleTimeouts,
    check_wheel_set,
    push_dataset,
    render_kernel,
    render_template,
    stage_dataset,
)

ROOT = Path(__file__).resolve().parents[1]
KERNEL_TEMPLATE = ROOT / "kernel_metadata" / "inference.kernel-metadata.json"
WHEELS_TEMPLATE = ROOT / "kernel_metadata" / "wheels.dataset-metadata.json"
NOTEBOOK = ROOT / "notebooks" / "hpa-inference.py"
KERNEL_VALUES = {
    "OWNER": "ann",
    "KERNEL_SLUG": "hpa-inference",
    "KERNEL_TITLE": "hpa-inference",
    "WHEELS_DATASET": "ann/hpa-kit-wheels",
    "SEG_WEIGHTS_DATASET": "bob/hpa-cellseg-weights",
    "CHECKPOINTS_DATASET": "ann/hpa-kit-checkpoints",
}


def _make(target: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), target, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@pytest.fixture
def fake():
    with FakeKaggle(username="tester", key="fake-key-5eb63bbbe01eeed0") as server:
        yield server


# --------------------------------------------------------------------------- rendering


def test_render_template_fills_and_escapes():
    meta = render_template(
        '{"id": "${A}/${B}", "title": "${T}"}', {"A": "x", "B": "y-slug", "T": 'say "hi"\\'}
    )
    assert meta == {"id": "x/y-slug", "title": 'say "hi"\\'}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"A": "x"}, r"no value for \$\{B\}"),
        ({"A": "x", "B": ""}, r"no value for \$\{B\}"),
        ({"A": "x", "B": "y", "C": "z"}, r"\['C'\] match no placeholder"),
    ],
)
def test_render_template_rejects_missing_and_unused_values(values, message):
    with pytest.raises(DeliveryError, match=message):
        render_template('{"id": "${A}/${B}"}', values)


def test_render_kernel_writes_notebook_and_metadata(tmp_path):
    out = render_kernel(NOTEBOOK, tmp_path / "k", template=KERNEL_TEMPLATE, values=KERNEL_VALUES)
    meta = json.loads((out / "kernel-metadata.json").read_text())
    assert meta["id"] == "ann/hpa-inference"
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["is_private"] is True
    assert meta["competition_sources"] == ["hpa-single-cell-image-classification"]
    assert meta["dataset_sources"] == [
        "ann/hpa-kit-wheels",
        "bob/hpa-cellseg-weights",
        "ann/hpa-kit-checkpoints",
    ]
    assert sorted(p.name for p in out.iterdir()) == ["hpa-inference.ipynb", "kernel-metadata.json"]
    nb = json.loads((out / meta["code_file"]).read_text())
    nbformat.validate(nbformat.reads(json.dumps(nb), as_version=4))
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "jupytext" not in nb["metadata"]
    source = jupytext.read(NOTEBOOK)
    assert [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
            for c in nb["cells"]] == [c.source for c in source.cells]  # fmt: skip
    assert all(c.get("outputs", []) == [] for c in nb["cells"])


def test_render_kernel_requires_explicit_booleans(tmp_path):
    # The kaggle client turns the internet ON when enable_internet is absent.
    meta = json.loads(KERNEL_TEMPLATE.read_text())
    del meta["enable_internet"]
    template = tmp_path / "kernel.json"
    template.write_text(json.dumps(meta))
    with pytest.raises(DeliveryError, match="enable_internet must be set explicitly"):
        render_kernel(NOTEBOOK, tmp_path / "k", template=template, values=KERNEL_VALUES)


def test_render_kernel_rejects_short_slug(tmp_path):
    values = dict(KERNEL_VALUES, KERNEL_SLUG="hpa")
    with pytest.raises(DeliveryError, match="slug of >= 5"):
        render_kernel(NOTEBOOK, tmp_path / "k", template=KERNEL_TEMPLATE, values=values)


def test_stage_dataset_copies_only_wheels(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    write_wheel(wheels, "hpa_kit-0.1.0-py3-none-any.whl")
    write_wheel(wheels, ".hidden-1.0-py3-none-any.whl")
    (wheels / "notes.txt").write_text("x")
    (wheels / "sub").mkdir()
    out = tmp_path / "stage"
    out.mkdir()
    (out / "stale.whl").write_bytes(b"old")  # left by an earlier staging:
    (out / "dataset-metadata.json").write_text("{}")
    values = {"WHEELS_DATASET": "ann/hpa-kit-wheels", "WHEELS_TITLE": "hpa_kit wheels"}
    staged = stage_dataset(wheels, out, template=WHEELS_TEMPLATE, values=values)
    assert [p.name for p in staged] == ["hpa_kit-0.1.0-py3-none-any.whl"]
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset-metadata.json",
        "hpa_kit-0.1.0-py3-none-any.whl",
    ]
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "ann/hpa-kit-wheels"


def test_stage_dataset_requires_the_hpa_kit_wheel(tmp_path):
    (tmp_path / "w").mkdir()
    write_wheel(tmp_path / "w", "other-1.0-py3-none-any.whl")
    values = {"WHEELS_DATASET": "ann/hpa-kit-wheels", "WHEELS_TITLE": "hpa_kit wheels"}
    with pytest.raises(DeliveryError, match=r"no wheel of \['hpa_kit'\].*make wheels"):
        stage_dataset(tmp_path / "w", tmp_path / "s", template=WHEELS_TEMPLATE, values=values)


def test_stage_dataset_requires_named_wheels_whatever_their_spelling(tmp_path):
    (tmp_path / "w").mkdir()
    for name in ("hpa_kit-0.1.0-py3-none-any.whl", "PyYAML-6.0.4-cp312-cp312-any.whl"):
        write_wheel(tmp_path / "w", name)
    values = {"WHEELS_DATASET": "ann/hpa-kit-wheels", "WHEELS_TITLE": "hpa_kit wheels"}
    staged = stage_dataset(
        tmp_path / "w", tmp_path / "s", template=WHEELS_TEMPLATE, values=values,
        require=["hpa_kit", "pyyaml==6.0.4"],
    )  # fmt: skip
    assert len(staged) == 2
    with pytest.raises(DeliveryError, match=r"no wheel of \['iterative-stratification==0.1.9'\]"):
        stage_dataset(
            tmp_path / "w", tmp_path / "s", template=WHEELS_TEMPLATE, values=values,
            require=["hpa_kit", "iterative-stratification==0.1.9", "PyYAML"],
        )  # fmt: skip


def test_make_push_dataset_refuses_a_folder_missing_an_extra_wheel(fake, tmp_path):
    _wheels_folder(tmp_path / "wheels")
    (tmp_path / "wheels" / "pyyaml-6.0.4-cp312-cp312-manylinux_2_17_x86_64.whl").unlink()
    env = client_env(fake, tmp_path / "client")
    result = _make(
        "push-dataset", env, "KAGGLE_USERNAME=tester", f"WHEELS_DIR={tmp_path}/wheels",
        f"DATASET_DIR={tmp_path}/stage",
    )  # fmt: skip
    assert result.returncode == 2
    assert "no wheel of PyYAML==6.0.4 that CPython 3.12 on manylinux2014_x86_64" in result.stderr
    assert fake.calls == []


def test_push_dataset_refuses_a_folder_with_dotfiles(tmp_path):
    (tmp_path / "dataset-metadata.json").write_text(
        json.dumps(
            {"id": "ann/hpa-kit-wheels", "title": "hpa_kit wheels", "licenses": [{"name": "other"}]}
        )  # fmt: skip
    )
    (tmp_path / ".git-credentials").write_text("secret")
    with pytest.raises(DeliveryError, match="not a clean staging folder"):
        push_dataset(tmp_path)


# --------------------------------------------------------------------------- make + fake Kaggle


def test_make_push_kernel_sends_the_rendered_notebook(fake, tmp_path):
    env = client_env(fake, tmp_path / "client")
    result = _make("push-kernel", env, "KAGGLE_USERNAME=tester", f"KERNEL_DIR={tmp_path}/k")
    assert result.returncode == 0, _output(result)
    assert "tester/hpa-inference pushed (version 1)" in result.stdout
    assert fake.key not in _output(result)

    (call,) = fake.calls_to("SaveKernel")
    assert call.auth_user == "tester" and call.auth_secret_ok
    body = call.body
    assert body["slug"] == "tester/hpa-inference"
    assert body["enableInternet"] is False
    assert body["enableGpu"] is True
    assert body["isPrivate"] is True
    assert body["kernelType"] == "notebook" and body["language"] == "python"
    assert body["competitionDataSources"] == ["hpa-single-cell-image-classification"]
    assert body["datasetDataSources"] == [
        "tester/hpa-kit-wheels",
        "tester/hpa-cellseg-weights",
        "tester/hpa-kit-checkpoints",
    ]
    sent = json.loads(body["text"])
    assert sent["metadata"]["kernelspec"]["name"] == "python3"
    assert [c["source"] for c in sent["cells"]] == [c.source for c in jupytext.read(NOTEBOOK).cells]
    assert _files_holding(tmp_path / "k", fake.key) == []


def test_make_push_kernel_fails_on_an_error_reply(fake, tmp_path):
    fake.kernel_error = "Notebook slug already in use by another user"
    env = client_env(fake, tmp_path / "client")
    result = _make("push-kernel", env, "KAGGLE_USERNAME=tester", f"KERNEL_DIR={tmp_path}/k")
    assert result.returncode != 0
    assert "Kaggle refused the kernel push of tester/hpa-inference" in result.stderr
    assert "slug already in use" in result.stderr
    assert fake.key not in _output(result)

    # Why the target does not just run the kaggle CLI: it exits 0 on the same reply.
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "kaggle"), "kernels", "push", "-p", f"{tmp_path}/k"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert len(fake.calls_to("SaveKernel")) == 2
    assert cli.returncode == 0, _output(cli)


def test_make_push_kernel_fails_when_kaggle_rejects_a_data_source(fake, tmp_path):
    fake.invalid_dataset_sources = ["tester/hpa-kit-checkpoints"]
    env = client_env(fake, tmp_path / "client")
    result = _make("push-kernel", env, "KAGGLE_USERNAME=tester", f"KERNEL_DIR={tmp_path}/k")
    assert result.returncode != 0
    assert "invalid dataset sources ['tester/hpa-kit-checkpoints']" in result.stderr


def test_make_push_kernel_fails_on_an_http_error(fake, tmp_path):
    env = client_env(fake, tmp_path / "client")
    env["KAGGLE_KEY"] = "wrong-key-ffffffffffff"
    result = _make("push-kernel", env, "KAGGLE_USERNAME=tester", f"KERNEL_DIR={tmp_path}/k")
    assert result.returncode != 0
    assert "HTTP 401" in result.stderr
    assert "wrong-key-ffffffffffff" not in _output(result)


def test_make_targets_need_a_username(fake, tmp_path):
    env = client_env(fake, tmp_path / "client")
    del env["KAGGLE_USERNAME"]
    result = _make("push-kernel", env, f"KERNEL_DIR={tmp_path}/k")
    assert result.returncode != 0
    assert "KAGGLE_USERNAME is not set" in result.stderr
    assert fake.calls == []


def _files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def _wheels_folder(path: Path) -> dict[str, bytes]:
    """A folder like `make wheels` leaves for Kaggle (small valid wheels), plus a dotfile and
    a sub-folder that must not be uploaded. Returns file name -> bytes of the wheels."""
    path.mkdir()
    payloads = {
        "hpa_kit-0.1.0-py3-none-any.whl": os.urandom(70_001),
        "iterative_stratification-0.1.9-py3-none-any.whl": os.urandom(9_000),
        "pycocotools-2.0.11-cp312-abi3-manylinux_2_17_x86_64.whl": bytes(range(256)) * 50,
        "pyyaml-6.0.4-cp312-cp312-manylinux_2_17_x86_64.whl": os.urandom(1234),
    }
    files = {
        name: write_wheel(path, name, payload=data).read_bytes() for name, data in payloads.items()
    }
    (path / ".DS_Store").write_bytes(b"junk")
    (path / "cache").mkdir()
    return files


def test_make_push_dataset_creates_with_every_wheel_byte_exact(fake, tmp_path):
    files = _wheels_folder(tmp_path / "wheels")
    env = client_env(fake, tmp_path / "client")
    result = _make(
        "push-dataset",
        env,
        "KAGGLE_USERNAME=tester",
        f"WHEELS_DIR={tmp_path}/wheels",
        f"DATASET_DIR={tmp_path}/stage",
    )
    assert result.returncode == 0, _output(result)
    assert "tester/hpa-kit-wheels created" in result.stdout
    assert fake.key not in _output(result)
    assert fake.uploaded_files() == files  # no dotfile, no folder, bytes intact
    (create,) = fake.calls_to("CreateDataset")
    assert create.body["ownerSlug"] == "tester" and create.body["slug"] == "hpa-kit-wheels"
    assert create.body["isPrivate"] is True
    assert create.auth_secret_ok
    assert fake.calls_to("CreateDatasetVersion") == []
    assert _files_holding(tmp_path / "stage", fake.key) == []
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == sorted(
        [*files, "dataset-metadata.json"]
    )


def test_make_push_dataset_versions_an_existing_dataset(fake, tmp_path):
    files = _wheels_folder(tmp_path / "wheels")
    fake.existing_datasets.add("tester/hpa-kit-wheels")
    env = client_env(fake, tmp_path / "client")
    result = _make(
        "push-dataset",
        env,
        "KAGGLE_USERNAME=tester",
        f"WHEELS_DIR={tmp_path}/wheels",
        f"DATASET_DIR={tmp_path}/stage",
        "DATASET_NOTES=second build",
    )
    assert result.returncode == 0, _output(result)
    assert "tester/hpa-kit-wheels versioned" in result.stdout
    (version,) = fake.calls_to("CreateDatasetVersion")
    assert version.body["datasetSlug"] == "hpa-kit-wheels"
    assert version.body["body"]["versionNotes"] == "second build"
    assert fake.uploaded_files() == files
    assert fake.calls_to("CreateDataset") == []


@pytest.mark.parametrize("existing", [False, True])
def test_make_push_dataset_fails_on_an_error_status(fake, tmp_path, existing):
    _wheels_folder(tmp_path / "wheels")
    if existing:
        fake.existing_datasets.add("tester/hpa-kit-wheels")
    fake.dataset_error = "Dataset file limit exceeded"
    env = client_env(fake, tmp_path / "client")
    result = _make(
        "push-dataset",
        env,
        "KAGGLE_USERNAME=tester",
        f"WHEELS_DIR={tmp_path}/wheels",
        f"DATASET_DIR={tmp_path}/stage",
    )
    assert result.returncode != 0
    assert "Dataset file limit exceeded" in result.stderr
    assert fake.key not in _output(result)


def test_make_push_dataset_fails_on_a_failed_upload_and_a_rerun_restarts_it(fake, tmp_path):
    files = _wheels_folder(tmp_path / "wheels")
    fake.failing_puts = 1
    env = client_env(fake, tmp_path / "client")
    args = ("KAGGLE_USERNAME=tester", f"WHEELS_DIR={tmp_path}/wheels", f"DATASET_DIR={tmp_path}/s")
    result = _make("push-dataset", env, *args)
    assert result.returncode != 0
    assert "Upload unsuccessful" in result.stderr
    assert fake.calls_to("CreateDataset") == []
    # The client kept resumable-upload state in $TMPDIR; the rerun probes it (404: expired),
    # starts that upload again and creates the dataset with every file intact.
    rerun = _make("push-dataset", env, *args)
    assert rerun.returncode == 0, _output(rerun)
    probes = [c for c in fake.calls if c.method == "PUT" and c.body["bytes"] == 0]
    assert len(probes) == 1
    assert fake.uploaded_files() == files
    assert fake.key not in _output(result) + _output(rerun)


def test_make_push_dataset_create_mode_fails_when_the_slug_exists(fake, tmp_path):
    _wheels_folder(tmp_path / "wheels")
    fake.existing_datasets.add("tester/hpa-kit-wheels")
    env = client_env(fake, tmp_path / "client")
    result = _make(
        "push-dataset",
        env,
        "KAGGLE_USERNAME=tester",
        "PUSH_MODE=create",
        f"WHEELS_DIR={tmp_path}/wheels",
        f"DATASET_DIR={tmp_path}/stage",
    )
    assert result.returncode != 0
    assert "already in use" in result.stderr
    assert fake.calls_to("CreateDataset") == []


# --------------------------------------------------------------------------- timeouts, redaction


def test_make_push_kernel_times_out_on_a_server_that_never_answers(fake, tmp_path):
    fake.hang_on = "SaveKernel"  # accepts the connection, reads the request, never answers
    env = client_env(fake, tmp_path / "client")
    env[TIMEOUT_ENV] = "1"
    start = time.monotonic()
    result = _make("push-kernel", env, "KAGGLE_USERNAME=tester", f"KERNEL_DIR={tmp_path}/k")
    assert time.monotonic() - start < 30  # without a timeout: forever
    assert result.returncode != 0
    assert "Error 1" in result.stderr  # the push step's exit status
    (line,) = [x for x in result.stderr.splitlines() if "timed out" in x]
    assert "kernel push of tester/hpa-inference timed out: no answer to POST" in line
    assert "/api/v1/kernels.KernelsApiService/SaveKernel within 1 s" in line
    assert "HPA_KIT_KAGGLE_TIMEOUT" in line
    assert len(fake.calls_to("SaveKernel")) == 1  # not retried
    assert fake.key not in _output(result)


def test_push_dataset_upload_times_out_with_its_own_limit(fake, tmp_path):
    _wheels_folder(tmp_path / "wheels")
    stage = tmp_path / "stage"
    values = {"WHEELS_DATASET": "tester/hpa-kit-wheels", "WHEELS_TITLE": "hpa_kit wheels"}
    stage_dataset(tmp_path / "wheels", stage, template=WHEELS_TEMPLATE, values=values)
    fake.hang_on = "PUT"
    env = client_env(fake, tmp_path / "client")
    env[TIMEOUT_ENV] = "30"  # the API calls answer; only the upload limit may end this
    result = run_delivery(env, "push-dataset", str(stage), "--upload-timeout", "1")
    assert result.returncode == 1, _output(result)
    assert result.stderr.count("\n") == 1, result.stderr
    assert "dataset create of tester/hpa-kit-wheels timed out: no answer to PUT" in result.stderr
    assert "within 1 s (to wait longer: --upload-timeout or HPA_KIT_KAGGLE_UPLOAD_TIMEOUT)" in (
        result.stderr
    )
    assert len([c for c in fake.calls if c.method == "PUT"]) == 1  # no resume loop, no retry
    assert fake.calls_to("CreateDataset") == []


@pytest.mark.parametrize("credentials", ["env", "json", "token"])
def test_make_push_kernel_redacts_a_key_the_server_echoes(tmp_path, credentials):
    """The server's refusal quotes the credential the client sent; wherever the client found
    it (KAGGLE_KEY, kaggle.json, KAGGLE_API_TOKEN), no output shows it."""
    with FakeKaggle(key="fake-key-8d2c0e61b7a9", token="fake-token-41f9e3c07d55") as fake:
        fake.echo_credentials = True
        env = client_env(fake, tmp_path / "client", credentials=credentials)
        result = _make("push-kernel", env, "KAGGLE_USERNAME=tester", f"KERNEL_DIR={tmp_path}/k")
    assert result.returncode != 0
    assert "Kaggle refused the kernel push of tester/hpa-inference: credential '***'" in (
        result.stderr
    )
    assert len(fake.calls_to("SaveKernel")) == 1
    for secret in (fake.key, fake.token):
        assert secret not in _output(result)
    assert _files_holding(tmp_path / "k", fake.key) == []


def test_make_push_dataset_redacts_a_key_from_kaggle_json_in_an_http_error(tmp_path):
    files = _wheels_folder(tmp_path / "wheels")
    assert files
    with FakeKaggle(key="fake-key-3b7e19d04c8f") as fake:
        fake.echo_credentials = True
        env = client_env(fake, tmp_path / "client", credentials="json")
        assert "KAGGLE_KEY" not in env
        result = _make(
            "push-dataset",
            env,
            "KAGGLE_USERNAME=tester",
            f"WHEELS_DIR={tmp_path}/wheels",
            f"DATASET_DIR={tmp_path}/stage",
        )
    assert result.returncode != 0
    assert "dataset status of tester/hpa-kit-wheels failed: HTTP 403: credential '***'" in (
        result.stderr
    )
    assert fake.key not in _output(result)


@pytest.mark.parametrize(
    ("environ", "options", "expected"),
    [
        ({}, {}, (60.0, 300.0)),
        ({TIMEOUT_ENV: "2.5", UPLOAD_TIMEOUT_ENV: "900"}, {}, (2.5, 900.0)),
        ({TIMEOUT_ENV: "2.5"}, {"api": 7, "upload": 8}, (7.0, 8.0)),
        ({TIMEOUT_ENV: " "}, {}, (60.0, 300.0)),
    ],
)
def test_kaggle_timeouts_from_options_then_environment_then_defaults(environ, options, expected):
    timeouts = KaggleTimeouts.from_env(environ, **options)
    assert (timeouts.api, timeouts.upload) == expected


@pytest.mark.parametrize(
    ("environ", "options", "message"),
    [
        ({TIMEOUT_ENV: "soon"}, {}, "HPA_KIT_KAGGLE_TIMEOUT='soon' is not a number"),
        ({UPLOAD_TIMEOUT_ENV: "-1"}, {}, "upload timeout must be a positive number"),
        ({}, {"api": 0}, "api timeout must be a positive number of seconds, got 0"),
        ({}, {"api": float("inf")}, "api timeout must be a positive number"),
        ({}, {"upload": float("nan")}, "upload timeout must be a positive number"),
    ],
)
def test_kaggle_timeouts_refuse_what_is_not_a_positive_duration(environ, options, message):
    with pytest.raises(DeliveryUsageError, match=re.escape(message)):
        KaggleTimeouts.from_env(environ, **options)


# --------------------------------------------------------------------------- make install


def test_make_install_says_what_it_installs_how_big_how_long_and_the_result(tmp_path):
    """`make install` into a stand-in venv whose python records its arguments: the lines it
    prints before (versions from requirements-pinned.txt, size, time) and after."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/../calls.log"\n')
    python.chmod(0o755)
    result = _make("install", dict(os.environ), f"VENV={venv}")
    assert result.returncode == 0, _output(result)
    requirements = [
        line for line in (ROOT / "requirements-pinned.txt").read_text().splitlines()
        if re.match(r"^[A-Za-z]", line)
    ]  # fmt: skip
    pins = dict(line.split("==") for line in requirements if "==" in line)
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"installing into {venv}: torch {pins['torch']} + torchvision {pins['torchvision']} "
        f"(CUDA build, about 6.2 GB in {venv}, 4-7 min on a first install), the other "
        f"{len(requirements) - 2} pins of requirements-pinned.txt, then hpa_kit (editable) and "
        "its dev tools"
    ), result.stdout
    assert [x[:5] for x in lines[1:4]] == ["[2/4]", "[3/4]", "[4/4]"]
    assert re.fullmatch(rf"installed in \d+ s; {venv} holds \d+(\.\d+)?[KMG]", lines[4]), lines
    calls = (venv / "calls.log").read_text().splitlines()
    assert [c.split()[:3] for c in calls] == [["-m", "pip", "install"]] * 3
    assert "-r requirements-pinned.txt" in calls[1] and "-e .[dev]" in calls[2]
    again = _make("install", dict(os.environ), f"VENV={venv}")
    assert "installing" not in again.stdout  # up to date: silent
    assert len((venv / "calls.log").read_text().splitlines()) == 3


# --------------------------------------------------------------------------- Kaggle's Python

KAGGLE_PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
KAGGLE_SET = ["hpa_kit", "iterative-stratification==0.1.9", "pycocotools==2.0.11", "PyYAML==6.0.4"]


def _kaggle_set_folder(path: Path, *, pycocotools: str, pyyaml: str) -> Path:
    path.mkdir()
    for name in (
        "hpa_kit-0.1.0-py3-none-any.whl",
        "iterative_stratification-0.1.9-py3-none-any.whl",
        f"pycocotools-2.0.11-{pycocotools}.whl",
        f"pyyaml-6.0.4-{pyyaml}.whl",
    ):
        write_wheel(path, name)
    return path


def test_check_wheel_set_picks_a_wheel_for_cpython_312_of_each_requirement(tmp_path):
    folder = _kaggle_set_folder(
        tmp_path / "w",
        pycocotools="cp312-abi3-manylinux_2_17_x86_64",
        pyyaml="cp312-cp312-manylinux2014_x86_64",
    )
    write_wheel(folder, "pycocotools-2.0.11-cp311-cp311-manylinux_2_17_x86_64.whl")
    picked = check_wheel_set(
        folder, requirements=KAGGLE_SET, python_version="3.12", platforms=KAGGLE_PLATFORMS
    )
    assert picked == [
        "hpa_kit-0.1.0-py3-none-any.whl",
        "iterative_stratification-0.1.9-py3-none-any.whl",
        "pycocotools-2.0.11-cp312-abi3-manylinux_2_17_x86_64.whl",
        "pyyaml-6.0.4-cp312-cp312-manylinux2014_x86_64.whl",
    ]


def test_check_wheel_set_names_every_requirement_without_a_cp312_wheel(tmp_path):
    folder = _kaggle_set_folder(
        tmp_path / "w",
        pycocotools="cp311-cp311-manylinux_2_17_x86_64",  # this machine's Python only
        pyyaml="cp312-cp312-macosx_11_0_arm64",  # Kaggle's Python, another platform
    )
    with pytest.raises(DeliveryUsageError) as error:
        check_wheel_set(
            folder, requirements=KAGGLE_SET, python_version="3.12", platforms=KAGGLE_PLATFORMS
        )
    message = str(error.value)
    assert message.startswith(
        f"{folder}: no wheel of pycocotools==2.0.11, PyYAML==6.0.4 that CPython 3.12 on "
        "manylinux2014_x86_64 / manylinux_2_17_x86_64 / manylinux_2_28_x86_64 can install"
    ), message
    assert "pycocotools-2.0.11-cp311-cp311-manylinux_2_17_x86_64.whl" in message  # found


def test_check_wheel_set_reads_no_pip_configuration(tmp_path, monkeypatch):
    """A find-links folder from pip's configuration must not make a short set pass."""
    folder = _kaggle_set_folder(
        tmp_path / "w", pycocotools="cp311-cp311-manylinux_2_17_x86_64",
        pyyaml="cp312-cp312-manylinux2014_x86_64",
    )  # fmt: skip
    (tmp_path / "elsewhere").mkdir()
    write_wheel(tmp_path / "elsewhere", "pycocotools-2.0.11-cp312-abi3-manylinux_2_17_x86_64.whl")
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nfind-links = {tmp_path / 'elsewhere'}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "elsewhere"))
    with pytest.raises(DeliveryUsageError, match=r"no wheel of pycocotools==2\.0\.11 that"):
        check_wheel_set(
            folder, requirements=KAGGLE_SET, python_version="3.12", platforms=KAGGLE_PLATFORMS
        )


@pytest.fixture(scope="session")
def kaggle_wheel_cache() -> Path:
    """The wheels `make wheels` downloads (for Kaggle's Python and this one), fetched by
    `make test` before the tests (`make kaggle-wheel-cache`) so that the tests run offline."""
    value = os.environ.get("HPA_KIT_KAGGLE_WHEELS", "")
    if not value:
        pytest.skip("HPA_KIT_KAGGLE_WHEELS not set: run through `make test` (it fetches them)")
    path = Path(value)
    assert sorted(path.glob("pycocotools-*-cp312-*.whl")), (
        f"{path}: no cp312 wheels; run `make kaggle-wheel-cache`"
    )
    return path


def test_make_wheels_builds_a_set_kaggle_can_install(kaggle_wheel_cache, tmp_path):
    """The real set, resolved offline for CPython 3.12 on manylinux x86_64 (what `make wheels`
    and `make push-dataset` check); without its cp312 pycocotools wheel the check fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    wheels = tmp_path / "wheels"
    result = _make(
        "wheels", env, f"WHEELS_DIR={wheels}",
        f"WHEELS_PIP_ARGS=--no-index --find-links {kaggle_wheel_cache}",
    )  # fmt: skip
    assert result.returncode == 0, _output(result)
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("wheels for CPython 3.12: ")]
    picked = line.split(": ", 1)[1].split()
    manylinux = "manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64"
    assert [_wheel_tags(name) for name in picked] == [
        ("hpa_kit", "py3-none-any"),
        ("iterative_stratification", "py3-none-any"),
        ("pycocotools", f"cp312-abi3-{manylinux}"),
        ("pyyaml", f"cp312-cp312-{manylinux}"),
    ]
    assert sorted(wheels.glob("pycocotools-*-cp311-*.whl"))  # this Python's, for local installs
    for path in wheels.glob("pycocotools-*-cp312-*.whl"):
        path.unlink()
    check = _make("check-wheels", env, f"WHEELS_DIR={wheels}")
    assert check.returncode != 0
    assert "no wheel of pycocotools==2.0.11 that CPython 3.12" in check.stderr


def _wheel_tags(filename: str) -> tuple[str, str]:
    name, _version, tags = filename[: -len(".whl")].split("-", 2)
    return name, tags


# The notebooks' install cell, run alone by an interpreter that has no hpa_kit installed
# (`-S`: no site-packages; `-E`: no PYTHONPATH); its python is a stand-in recording pip's
# arguments.
NOTEBOOK_NAMES = ["hpa-explore", "hpa-inference", "hpa-train"]


def _run_install_cell(name: str, cwd: Path, tmp_path: Path) -> list[str]:
    (cell,) = [
        c.source for c in jupytext.read(ROOT / "notebooks" / f"{name}.py").cells
        if c.metadata.get("title", "").startswith("install")
    ]  # fmt: skip
    log = tmp_path / "pip-calls.log"
    stub = tmp_path / "python-stub"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    stub.chmod(0o755)
    config = (
        "import importlib.util, subprocess, sys\n"
        f"sys.executable = {str(stub)!r}\n"
        f"WHEELS, HPA_KIT_SPEC, SEG_WEIGHTS, CLASSICAL = {str(tmp_path)!r}, '', '', True\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-E", "-c", config + cell],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, _output(result)
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_install_cell_installs_over_a_bare_hpa_kit_folder(name, tmp_path):
    """A folder named hpa_kit in the working directory (a source checkout, an unzipped
    upload) makes `import hpa_kit` succeed as an empty namespace package: not an install."""
    work = tmp_path / "work"
    (work / "hpa_kit").mkdir(parents=True)
    calls = _run_install_cell(name, work, tmp_path)
    assert calls == [f"-m pip install --quiet --no-index --find-links {tmp_path} hpa_kit"]


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_install_cell_installs_when_missing_and_not_when_installed(name, tmp_path):
    (tmp_path / "empty").mkdir()
    calls = _run_install_cell(name, tmp_path / "empty", tmp_path)
    assert calls == [f"-m pip install --quiet --no-index --find-links {tmp_path} hpa_kit"]
    package = tmp_path / "installed" / "hpa_kit"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")  # a regular package: installed (or the source)
    assert _run_install_cell(name, tmp_path / "installed", tmp_path) == calls  # no new call


# --------------------------------------------------------------------------- offline install

_NOT_ON_KAGGLE = ("iterative_stratification", "iterstrat", "pycocotools", "hpa_kit")


def _repack_installed(dist_name: str, out: Path) -> Path:
    """A wheel of an installed distribution, rebuilt from its RECORD (test input only)."""
    dist = importlib.metadata.distribution(dist_name)
    tag = next(
        line.split(":", 1)[1].strip()
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    )
    name = dist.metadata["Name"].replace("-", "_")
    path = out / f"{name}-{dist.version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in dist.files or []:
            text = str(file)
            if text.startswith("..") or "__pycache__" in text:
                continue
            zf.write(dist.locate_file(file), text)
    return path


def _kaggle_like_site(path: Path) -> Path:
    """The build venv's packages minus those the Kaggle image lacks, as symlinks."""
    site = Path(importlib.metadata.distribution("numpy").locate_file(""))
    path.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if entry.suffix == ".pth" or name.startswith(("__editable__", *_NOT_ON_KAGGLE)):
            continue
        (path / entry.name).symlink_to(entry)
    return path


@pytest.fixture(scope="module")
def built_wheels(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """`make wheels` without the network: the extra wheels come from a local folder of
    wheels repacked from this venv. Returns the wheels folder and the environment for the
    Kaggle-like venvs (no pip configuration, no PYTHONPATH: they must not see the source)."""
    tmp = tmp_path_factory.mktemp("wheels")
    sources = tmp / "index"
    sources.mkdir()
    for dist in ("iterative-stratification", "pycocotools"):
        _repack_installed(dist, sources)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    wheels = tmp / "wheels"
    major_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    result = _make(
        "wheels",
        env,
        f"WHEELS_DIR={wheels}",
        f"WHEELS_PIP_ARGS=--no-index --find-links {sources}",
        f"KAGGLE_PYTHON={major_minor}",  # the repacked wheels are for this Python
        "KAGGLE_EXTRA_WHEELS=iterative-stratification==0.1.9 pycocotools==2.0.11",
    )
    assert result.returncode == 0, _output(result)
    return wheels, {k: v for k, v in env.items() if k != "PYTHONPATH"}


def _fresh_venv(tmp_path: Path, env: dict[str, str]) -> tuple[Path, str]:
    """A venv that sees a Kaggle-like set of packages (torch, timm, ipykernel, ... but not
    iterative-stratification, pycocotools or hpa_kit) when run with ``env``. Returns its
    python and purelib."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "kaggle_image.pth").write_text(f"{_kaggle_like_site(tmp_path / 'site')}\n")
    probe = "import importlib.util as u; print(u.find_spec('iterstrat'), u.find_spec('hpa_kit'))"
    before = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert before.stdout.split() == ["None", "None"], before.stdout + before.stderr
    return python, purelib


def _installed_from(python: Path, purelib: str, cwd: Path, env: dict[str, str]) -> None:
    check = subprocess.run(
        [str(python), "-c", "import hpa_kit, iterstrat, pycocotools.mask; "
         "print(hpa_kit.__file__); print(iterstrat.__file__); print(pycocotools.__file__)"],
        capture_output=True, text=True, cwd=cwd, timeout=60, env=env,
    )  # fmt: skip
    assert check.returncode == 0, _output(check)
    for line in check.stdout.split():
        assert line.startswith(purelib), check.stdout  # from the wheels, not the source tree


def test_make_wheels_then_offline_install_in_a_fresh_venv(built_wheels, tmp_path):
    wheels, env = built_wheels
    names = sorted(p.name for p in wheels.iterdir())
    assert len(names) == 3 and names[0].startswith("hpa_kit-"), names
    python, purelib = _fresh_venv(tmp_path, env)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "hpa_kit"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert install.returncode == 0, _output(install)
    _installed_from(python, purelib, tmp_path, env)
    cli = subprocess.run(
        [str(python.parent / "hpa-kit"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert cli.returncode == 0, _output(cli)
    assert "usage: hpa-kit" in cli.stdout


def test_inference_notebook_installs_from_an_attached_wheels_dataset(built_wheels, tmp_path):
    """The notebook's install cell, offline, in a Kaggle-like venv: it finds the wheels under
    HPA_INPUT, installs hpa_kit and its missing dependencies (even with a bare `hpa_kit`
    folder in the working directory), then predicts."""
    import torch

    from hpa_kit.model import ClassifierConfig, build_classifier, save_checkpoint
    from hpa_kit.synth import write_dataset

    wheels, env = built_wheels
    inputs = tmp_path / "input"
    shutil.copytree(wheels, inputs / "hpa-kit-wheels")
    synth = write_dataset(tmp_path / "synth", n=2, size=768, seed=3)
    torch.manual_seed(0)
    checkpoint = inputs / "hpa-kit-checkpoints" / "fold0"
    config = ClassifierConfig(arch="test_efficientnet", input_size=32)
    save_checkpoint(checkpoint, build_classifier("test_efficientnet", 3), config)
    python, purelib = _fresh_venv(tmp_path, env)
    # A bare folder named hpa_kit in the working directory is a namespace package, not an
    # install: the notebook installs the wheel anyway, and the wheel is what gets imported.
    (tmp_path / "hpa_kit").mkdir()
    settings = {
        "HPA_INPUT": str(inputs),  # wheels and checkpoints are found there
        "HPA_IMAGES": str(tmp_path / "synth" / "images"),
        "HPA_SAMPLE": str(tmp_path / "synth" / "sample_submission.csv"),
        "HPA_OUT": str(tmp_path / "out"),
        "HPA_CLASSICAL": "1",
        "HPA_TTA": "none",
        "HPA_NUM_WORKERS": "0",
        "HPA_DEVICE": "cpu",
    }
    jupyter = make_kernelspec(tmp_path / "jupyter", python, name="kaggle-like")
    nb = run_notebook(
        "hpa-inference", settings, jupyter, tmp_path, kernel_name="kaggle-like", base_env=env
    )
    _installed_from(python, purelib, tmp_path, env)
    text = outputs_text(nb)
    assert str(checkpoint) in text
    submission = tmp_path / "out" / "submission.csv"
    df = pd.read_csv(submission)
    assert sorted(df["ID"]) == sorted(synth.ids)
    # Cells were found and classified: 19 triplets per cell.
    triplets = [len(s.split()) // 3 for s in df["PredictionString"]]
    assert all(n >= 19 and n % 19 == 0 for n in triplets), triplets
    assert "OK:" in text  # the notebook's own validation
    validate = subprocess.run(
        [str(python.parent / "hpa-kit"), "validate", str(submission), "--sample",
         str(synth.sample_submission)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert validate.returncode == 0, _output(validate)

"""Delivery under hostile conditions: a Kaggle service that hangs, echoes the key or answers
garbage; missing or malformed credentials; crafted kernel and dataset folders; stray files.

Each case checks the exit status (1 the push failed, 2 a usage problem found before anything
was sent), that stderr is one line naming the cause, that no credential shows, and what was
sent or lost. Steps that reach the kaggle client run in a fresh process against the loopback
fake (tests/fake_kaggle.py); the rest run in this process. The table of these cases is in
RELIABILITY.md (delivery rows).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from fake_kaggle import FakeKaggle, client_env, run_delivery, write_wheel

from hpa_kit.delivery import (
    UPLOAD_TIMEOUT_ENV,
    DeliveryUsageError,
    main,
    push_dataset,
    render_kernel,
    stage_dataset,
)

ROOT = Path(__file__).resolve().parents[1]
KERNEL_TEMPLATE = ROOT / "kernel_metadata" / "inference.kernel-metadata.json"
WHEELS_TEMPLATE = ROOT / "kernel_metadata" / "wheels.dataset-metadata.json"
KERNEL_VALUES = {
    "OWNER": "tester",
    "KERNEL_SLUG": "hpa-inference",
    "KERNEL_TITLE": "hpa-inference",
    "WHEELS_DATASET": "tester/hpa-kit-wheels",
    "SEG_WEIGHTS_DATASET": "tester/hpa-cellseg-weights",
    "CHECKPOINTS_DATASET": "tester/hpa-kit-checkpoints",
}
WHEELS_VALUES = {"WHEELS_DATASET": "tester/hpa-kit-wheels", "WHEELS_TITLE": "hpa_kit wheels"}
WHEEL_NAMES = (
    "hpa_kit-0.1.0-py3-none-any.whl",
    "pycocotools-2.0.11-cp312-abi3-manylinux_2_17_x86_64.whl",
)
KEY = "fake-key-c0ffee5eed1234"
TOKEN = "fake-token-badc0de98765"


@pytest.fixture
def fake():
    with FakeKaggle(key=KEY, token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def rendered_kernel(tmp_path_factory) -> Path:
    return render_kernel(
        ROOT / "notebooks" / "hpa-inference.py",
        tmp_path_factory.mktemp("kernel") / "k",
        template=KERNEL_TEMPLATE,
        values=KERNEL_VALUES,
    )


@pytest.fixture
def kernel(rendered_kernel, tmp_path) -> Path:
    """A fresh copy of a rendered kernel folder, to be spoiled by the test."""
    return Path(shutil.copytree(rendered_kernel, tmp_path / "kernel"))


@pytest.fixture
def staged(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A staged dataset folder and its wheels' bytes."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, name in enumerate(WHEEL_NAMES):
        write_wheel(wheels, name, payload=os.urandom(4000 + i))
    stage = tmp_path / "stage"
    stage_dataset(wheels, stage, template=WHEELS_TEMPLATE, values=WHEELS_VALUES)
    return stage, {name: (stage / name).read_bytes() for name in WHEEL_NAMES}


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def _no_secret(result, *secrets: str) -> None:
    text = result.stdout + result.stderr
    for secret in secrets or (KEY, TOKEN):
        assert secret not in text, text


# --------------------------------------------------------------------------- a hanging server


@pytest.mark.parametrize(
    ("hang_on", "what"),
    [
        (
            "GetDatasetStatus",
            "dataset status of tester/hpa-kit-wheels timed out: no answer to POST",
        ),
        ("StartBlobUpload", "dataset create of tester/hpa-kit-wheels timed out: no answer to POST"),
        ("PUT", "dataset create of tester/hpa-kit-wheels timed out: no answer to PUT"),
        ("CreateDataset", "dataset create of tester/hpa-kit-wheels timed out: no answer to POST"),
    ],
)
def test_push_dataset_ends_on_the_first_request_that_hangs(fake, staged, tmp_path, hang_on, what):
    stage, _ = staged
    fake.hang_on = hang_on
    env = client_env(fake, tmp_path / "client")
    start = time.monotonic()
    result = run_delivery(
        env, "push-dataset", str(stage), "--timeout", "1", "--upload-timeout", "1"
    )
    assert time.monotonic() - start < 30
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert what in line and "within 1 s" in line, line
    hung = [c for c in fake.calls if c.path.endswith(hang_on) or c.method == hang_on]
    assert len(hung) == 1  # no retry, no resume loop
    if hang_on != "CreateDataset":
        assert fake.calls_to("CreateDataset") == []
    _no_secret(result)


def test_push_dataset_rerun_after_a_hung_upload_sends_every_file(fake, staged, tmp_path):
    """Data lost: none. The hung upload left the client's resumable-upload state in $TMPDIR;
    the rerun probes it (404: expired), uploads again and creates the dataset byte-exact."""
    stage, files = staged
    fake.hang_on = "PUT"
    env = client_env(fake, tmp_path / "client")
    env[UPLOAD_TIMEOUT_ENV] = "1"
    first = run_delivery(env, "push-dataset", str(stage))
    assert first.returncode == 1, first.stderr
    fake.hang_on = None
    rerun = run_delivery(env, "push-dataset", str(stage))
    assert rerun.returncode == 0, rerun.stderr
    assert "tester/hpa-kit-wheels created" in rerun.stdout
    assert fake.uploaded_files() == files


def test_token_check_that_hangs_is_named(fake, kernel, tmp_path):
    fake.hang_on = "IntrospectToken"  # the client checks an access token online
    env = client_env(fake, tmp_path / "client", credentials="token")
    result = run_delivery(env, "push-kernel", str(kernel), "--timeout", "1")
    assert result.returncode == 1
    line = _one_line(result.stderr)
    assert "Kaggle authentication timed out: no answer to POST" in line, line
    assert "security.OAuthService/IntrospectToken within 1 s" in line
    assert fake.calls_to("SaveKernel") == []
    _no_secret(result)


def test_a_server_answering_html_is_a_named_failure(fake, kernel, tmp_path):
    fake.garbage_on = "SaveKernel"
    result = run_delivery(env := client_env(fake, tmp_path / "client"), "push-kernel", str(kernel))
    assert env["KAGGLE_KEY"] == KEY
    assert result.returncode == 1
    assert _one_line(result.stderr).startswith(
        "hpa_kit.delivery push-kernel: kernel push of tester/hpa-inference failed: "
    )
    _no_secret(result)


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize("source", ["env", "json", "token", "token-file", "home-token-file"])
def test_an_echoed_credential_is_redacted_wherever_it_came_from(fake, kernel, tmp_path, source):
    fake.echo_credentials = True
    credentials = source if source in ("env", "json", "token") else "none"
    env = client_env(fake, tmp_path / "client", credentials=credentials)
    if source == "token-file":  # KAGGLE_API_TOKEN may name a file holding the token
        (tmp_path / "token.txt").write_text(TOKEN)
        env["KAGGLE_API_TOKEN"] = str(tmp_path / "token.txt")
    elif source == "home-token-file":  # or the client finds ~/.kaggle/access_token
        (Path(env["HOME"]) / ".kaggle").mkdir()
        (Path(env["HOME"]) / ".kaggle" / "access_token").write_text(TOKEN)
    result = run_delivery(env, "push-kernel", str(kernel))
    assert result.returncode == 1, result.stderr
    line = _one_line(result.stderr)
    assert "Kaggle refused the kernel push of tester/hpa-inference: credential '***'" in line
    _no_secret(result)


def test_missing_credentials_exit_2_before_anything_is_sent(fake, kernel, tmp_path):
    env = client_env(fake, tmp_path / "client", credentials="none")
    result = run_delivery(env, "push-kernel", str(kernel))
    assert result.returncode == 2
    assert "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY" in _one_line(result.stderr)
    assert result.stdout == ""  # the client's sign-in help is held back
    assert fake.calls == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('["tester", "key"]', "kaggle.json: must hold a JSON object with username and key"),
        ('{"username": "tester", "key": ', "no Kaggle credentials"),  # the client ignores it
        ('{"key": "fake-key-c0ffee5eed1234"}', "no Kaggle credentials"),  # no user name
    ],
)
def test_a_malformed_kaggle_json_exits_2(fake, kernel, tmp_path, content, message):
    env = client_env(fake, tmp_path / "client", credentials="none")
    config = Path(env["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    config.write_text(content)
    config.chmod(0o600)
    result = run_delivery(env, "push-kernel", str(kernel))
    assert result.returncode == 2, result.stderr
    assert message in _one_line(result.stderr)
    assert fake.calls == []
    _no_secret(result)


# --------------------------------------------------------------------------- crafted kernel folders


def _spoil_metadata(kernel: Path, **changes) -> None:
    path = kernel / "kernel-metadata.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (dict(code_file="../stolen.ipynb"), "must be a file name inside the kernel folder"),
        (dict(code_file="/etc/stolen.ipynb"), "must be a file name inside the kernel folder"),
        (dict(code_file=".hidden.ipynb"), "must be a file name inside the kernel folder"),
        (dict(enable_internet="false"), "enable_internet must be set explicitly"),
        (dict(dataset_sources="tester/hpa-kit-wheels"), "dataset_sources must be a list"),
        (dict(dataset_sources=[{"id": 1}]), "dataset source {'id': 1} is not 'owner/slug'"),
        (dict(id="tester/../../x"), "must be 'owner/slug'"),
        (dict(kernel_type="script"), "kernel_type must be 'notebook'"),
    ],
)
def test_crafted_kernel_metadata_exits_2_before_anything_is_sent(
    fake, kernel, tmp_path, spoil, message
):
    (tmp_path / "stolen.ipynb").write_text(json.dumps({"cells": [], "secret": KEY}))
    _spoil_metadata(kernel, **spoil)
    result = run_delivery(client_env(fake, tmp_path / "client"), "push-kernel", str(kernel))
    assert result.returncode == 2, result.stderr
    assert message in _one_line(result.stderr)
    assert fake.calls == []


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("metadata-list", "must hold a JSON object, not list"),
        ("metadata-garbage", "invalid JSON"),
        ("metadata-missing", "kernel-metadata.json not found (render the folder first)"),
        ("notebook-missing", "not found or not a regular file"),
        ("notebook-garbage", "not a notebook"),
        ("notebook-link", "not found or not a regular file"),
    ],
)
def test_a_spoiled_kernel_folder_exits_2_before_anything_is_sent(
    fake, kernel, tmp_path, spoil, message
):
    meta, notebook = kernel / "kernel-metadata.json", kernel / "hpa-inference.ipynb"
    if spoil == "metadata-list":
        meta.write_text("[]")
    elif spoil == "metadata-garbage":
        meta.write_bytes(b"\xff\xfe{not json")
    elif spoil == "metadata-missing":
        meta.unlink()
    elif spoil == "notebook-missing":
        notebook.unlink()
    elif spoil == "notebook-garbage":
        notebook.write_bytes(os.urandom(64))
    else:  # a link could make the client upload any file as the kernel's source
        secret = tmp_path / "secret.ipynb"
        secret.write_text(json.dumps({"cells": [], "key": KEY}))
        notebook.unlink()
        notebook.symlink_to(secret)
    result = run_delivery(client_env(fake, tmp_path / "client"), "push-kernel", str(kernel))
    assert result.returncode == 2, result.stderr
    assert message in _one_line(result.stderr)
    assert fake.calls == []


def test_dotfiles_in_a_kernel_folder_are_not_sent(fake, kernel, tmp_path):
    (kernel / ".env").write_text(f"KAGGLE_KEY={KEY}\n")
    (kernel / ".ipynb_checkpoints").mkdir()
    result = run_delivery(client_env(fake, tmp_path / "client"), "push-kernel", str(kernel))
    assert result.returncode == 0, result.stderr
    (call,) = fake.calls_to("SaveKernel")
    assert KEY not in json.dumps(call.body)  # only code_file's text is sent


# --------------------------------------------------------------------------- wheels and staging


def _wheels(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in WHEEL_NAMES:
        write_wheel(wheels, name)
    return wheels


def test_stray_files_in_the_wheels_folder_are_left_out(tmp_path):
    wheels = _wheels(tmp_path)
    (wheels / ".DS_Store").write_bytes(b"junk")
    write_wheel(wheels, ".hidden-1.0-py3-none-any.whl")
    (wheels / "notes.txt").write_text("x")
    (wheels / "pip-download.whl.part").write_bytes(b"partial")
    (wheels / "cache").mkdir()
    staged = stage_dataset(wheels, tmp_path / "s", template=WHEELS_TEMPLATE, values=WHEELS_VALUES)
    assert sorted(p.name for p in staged) == sorted(WHEEL_NAMES)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        [*WHEEL_NAMES, "dataset-metadata.json"]
    )


@pytest.mark.parametrize(
    ("stray", "message"),
    [
        ("link", "not a regular file (links are not staged)"),
        ("truncated", "not a wheel archive"),
        ("zip-without-wheel-metadata", "no .dist-info/WHEEL inside"),
        ("folder", "not a regular file"),
    ],
)
def test_a_whl_that_is_not_a_wheel_is_refused_and_nothing_is_staged(tmp_path, stray, message):
    wheels = _wheels(tmp_path)
    bad = wheels / "pyyaml-6.0.4-cp312-cp312-manylinux2014_x86_64.whl"
    if stray == "link":  # would upload the file it points at (here: a key)
        (tmp_path / "kaggle.json").write_text(json.dumps({"username": "tester", "key": KEY}))
        bad.symlink_to(tmp_path / "kaggle.json")
    elif stray == "truncated":
        bad.write_bytes((wheels / WHEEL_NAMES[0]).read_bytes()[:100])
    elif stray == "zip-without-wheel-metadata":
        shutil.make_archive(str(tmp_path / "plain"), "zip", root_dir=tmp_path, base_dir="wheels")
        shutil.move(tmp_path / "plain.zip", bad)
    else:
        bad.mkdir()
    previous = tmp_path / "s"
    previous.mkdir()
    (previous / "dataset-metadata.json").write_text("{}")
    with pytest.raises(DeliveryUsageError, match=re.escape(message)):
        stage_dataset(wheels, previous, template=WHEELS_TEMPLATE, values=WHEELS_VALUES)
    assert sorted(p.name for p in previous.iterdir()) == ["dataset-metadata.json"]  # untouched


@pytest.mark.parametrize("step", ["render-kernel", "stage-dataset"])
def test_out_holding_files_hpa_kit_did_not_write_is_refused_and_kept(tmp_path, capsys, step):
    out = tmp_path / "project"
    out.mkdir()
    (out / "train.py").write_text("my work")
    if step == "render-kernel":
        args = [str(ROOT / "notebooks" / "hpa-inference.py"), "--template", str(KERNEL_TEMPLATE)]
        values = KERNEL_VALUES
    else:
        args = [str(_wheels(tmp_path)), "--template", str(WHEELS_TEMPLATE)]
        values = WHEELS_VALUES
    sets = [x for k, v in values.items() for x in ("--set", f"{k}={v}")]
    assert main([step, *args, "--out", str(out), *sets]) == 2
    assert "holds files hpa_kit did not write" in _one_line(capsys.readouterr().err)
    assert (out / "train.py").read_text() == "my work"


@pytest.mark.parametrize("stray", [".netrc", "link", "folder"])
def test_a_staged_folder_with_a_dotfile_link_or_folder_is_refused(fake, staged, tmp_path, stray):
    stage, _ = staged
    if stray == ".netrc":
        (stage / ".netrc").write_text(f"password {KEY}")
    elif stray == "link":
        (tmp_path / "secret").write_text(KEY)
        (stage / "notes.txt").symlink_to(tmp_path / "secret")
    else:
        (stage / "extra").mkdir()
    result = run_delivery(client_env(fake, tmp_path / "client"), "push-dataset", str(stage))
    assert result.returncode == 2
    assert "not a clean staging folder" in _one_line(result.stderr)
    assert fake.calls == []


def test_push_dataset_refuses_a_crafted_metadata_file(tmp_path):
    (tmp_path / "dataset-metadata.json").write_text(
        json.dumps({"id": "tester/hpa-kit-wheels", "title": "hpa_kit wheels", "licenses": ["x"]})
    )
    with pytest.raises(DeliveryUsageError, match=r"licenses must hold exactly one"):
        push_dataset(tmp_path)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "environ", "message"),
    [
        (["--timeout", "0"], {}, "api timeout must be a positive number of seconds, got 0.0"),
        (["--timeout", "nan"], {}, "api timeout must be a positive number"),
        (["--upload-timeout", "inf"], {}, "upload timeout must be a positive number"),
        ([], {"HPA_KIT_KAGGLE_TIMEOUT": "1m"}, "HPA_KIT_KAGGLE_TIMEOUT='1m' is not a number"),
    ],
)
def test_bad_timeouts_exit_2_before_anything_is_sent(
    fake, kernel, tmp_path, options, environ, message
):
    env = client_env(fake, tmp_path / "client") | environ
    result = run_delivery(env, "push-kernel", str(kernel), *options)
    assert result.returncode == 2
    assert message in _one_line(result.stderr)
    assert fake.calls == []

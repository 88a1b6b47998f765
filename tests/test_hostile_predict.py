"""``hpa-kit predict`` under misuse and hostile input: named errors, right exit codes, no data lost.

Each case states what a user did; the rows of the reliability table (RELIABILITY.md) come from
here. Exit status: 2 for usage (found before the work, nothing written), 1 for runtime (the
CSV is still written when the work ran), 0 success.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from job_helpers import GatedSegmenter

from hpa_kit.cli import main
from hpa_kit.io import read_channel, write_channels
from hpa_kit.predict import PredictOptions, predict_folder
from hpa_kit.submission import validate_submission

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _argv(synth, checkpoints, out, *extra, images=None, sample=None):
    return [
        "predict",
        "--images", str(images or synth.out / "images"),
        "--sample", str(sample or synth.sample_submission),
        "--models", str(checkpoints[0]),
        "--out", str(out),
        "--classical", "--tta", "none", "--workers", "0", "--threads", "1",
        "--device", "cpu", "--quiet", "--seg-scale", "0.5", "--pixel-size", "8",
        *extra,
    ]  # fmt: skip


def _one_line(err: str) -> str:
    """The ``hpa-kit predict: ...`` line of stderr (exactly one)."""
    lines = [line for line in err.splitlines() if line.startswith("hpa-kit predict: ")]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- wrong input


def test_images_folder_that_does_not_exist(synth, checkpoints, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(_argv(synth, checkpoints, out, images=tmp_path / "nowhere")) == 2
    assert "images folder not found" in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_folder_of_the_wrong_images(synth, checkpoints, tmp_path, capsys):
    other = tmp_path / "other"
    write_channels(other, "not-in-the-sample", np.zeros((8, 8, 4), np.uint8))
    out = tmp_path / "s.csv"
    assert main(_argv(synth, checkpoints, out, images=other)) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(other) in line and f"{synth.ids[0]}_red.png" in line and "none of" in line
    assert not out.exists()


def test_truncated_png_fails_its_image_only(synth, checkpoints, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(synth.out / "images", images)
    broken = images / f"{synth.ids[1]}_blue.png"
    broken.write_bytes(broken.read_bytes()[:200])
    out = tmp_path / "s.csv"
    assert main(_argv(synth, checkpoints, out, "--max-failures", "1", images=images)) == 0
    err = capsys.readouterr().err
    assert f"{synth.ids[1]}: CorruptImageError" in err and str(broken) in err
    assert validate_submission(out, synth.sample_submission).ok
    # Default --max-failures (5 %): 1 of 3 is too many: exit 1, the CSV written all the same.
    out.unlink()
    assert main(_argv(synth, checkpoints, out, images=images)) == 1
    err = capsys.readouterr().err
    assert "1 of 3 images failed" in _one_line(err) and str(out) in _one_line(err)
    assert validate_submission(out, synth.sample_submission).ok


def test_disk_without_room_for_the_csv(synth, checkpoints, tmp_path, capsys, monkeypatch):
    """A disk with less free space than the CSV's low estimate (the free space is reported
    small through the public shutil.disk_usage): refused before the work."""
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    out = tmp_path / "s.csv"
    assert main(_argv(synth, checkpoints, out)) == 2
    line = _one_line(capsys.readouterr().err)
    assert "not enough free space for --out" in line and "0.0 MB free" in line
    assert not out.exists()


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "content",
    [
        "ID,ImageWidth,ImageHeight,PredictionString\na,1,1,\n",  # the sample CSV
        '{"hpa_kit_resume": 1, "fingerprint": "abc"}\n{"id": "a", "prediction": "p"}\n',  # v1
        '{"format": "hpa_kit.predict", "version": 2, "sample": "0", "images": 3}\n',  # other run
        "\x89PNG\r\n\x1a\n binary",
    ],
)
def test_unrelated_resume_file_is_refused_untouched(synth, checkpoints, tmp_path, capsys, content):
    resume = tmp_path / "resume.jsonl"
    resume.write_bytes(content.encode("latin-1"))
    out = tmp_path / "s.csv"
    assert main(_argv(synth, checkpoints, out, "--resume", str(resume))) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(resume) in line and "left untouched" in line
    assert resume.read_bytes() == content.encode("latin-1") and not out.exists()


def test_resume_of_another_run_names_the_difference(synth, checkpoints, tmp_path, capsys):
    resume = tmp_path / "resume.jsonl"
    out = tmp_path / "s.csv"
    assert main(_argv(synth, checkpoints, out, "--resume", str(resume))) == 0
    before = resume.read_bytes()
    assert main(_argv(synth, checkpoints, out, "--resume", str(resume), "--margin", "0.3")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "options.margin is 0.1, this run's is 0.3" in line
    assert main(_argv(synth, checkpoints, out, "--resume", str(resume), "--models",
                      str(checkpoints[1]))) == 2  # fmt: skip
    assert "other checkpoints" in _one_line(capsys.readouterr().err)
    assert resume.read_bytes() == before


def test_record_of_an_image_whose_size_changed_is_not_reused(synth, checkpoints, tmp_path):
    resume = tmp_path / "resume.jsonl"
    options = PredictOptions(tta="none", num_workers=0, progress=False, threads=1)
    args = (synth.out / "images", synth.sample_submission, checkpoints[:1])
    predict_folder(*args, out=tmp_path / "a.csv", options=options, resume=resume)
    lines = resume.read_text().splitlines()
    record = json.loads(lines[2])
    record["height"] += 1  # as if the image had another size when it was predicted
    resume.write_text("\n".join([*lines[:2], json.dumps(record), *lines[3:]]) + "\n")
    again = predict_folder(*args, out=tmp_path / "b.csv", options=options, resume=resume)
    assert again.resumed == 2 and again.processed == 1
    assert again.batch.done == [record["id"]]


@pytest.mark.parametrize(
    ("same", "message"),
    [
        ({"--out", "--sample"}, "--out and --sample name the same file"),
        ({"--out", "--resume"}, "--out and --resume name the same file"),
        ({"--resume", "--sample"}, "--resume and --sample name the same file"),
    ],
)
def test_two_options_naming_the_same_file(synth, checkpoints, tmp_path, capsys, same, message):
    sample = tmp_path / "sample.csv"
    shutil.copy(synth.sample_submission, sample)
    before = sample.read_bytes()
    shared = sample if "--sample" in same else tmp_path / "shared"
    out = shared if "--out" in same else tmp_path / "s.csv"
    resume = shared if "--resume" in same else None
    extra = [] if resume is None else ["--resume", str(resume)]
    assert main(_argv(synth, checkpoints, out, *extra, sample=sample)) == 2
    assert message in _one_line(capsys.readouterr().err)
    assert sample.read_bytes() == before and not (tmp_path / "shared").exists()


@pytest.mark.parametrize("kind", ["folder", "foreign file", "device"])
def test_out_that_is_not_a_file_of_ours(synth, checkpoints, tmp_path, capsys, kind):
    out = {"folder": tmp_path, "foreign file": tmp_path / "notes.txt", "device": "/dev/null"}[kind]
    if kind == "foreign file":
        out.write_text("my notes\n")
    assert main(_argv(synth, checkpoints, out)) == 2
    line = _one_line(capsys.readouterr().err)
    assert {"folder": "is a folder", "foreign file": "is not a submission CSV",
            "device": "not a regular file"}[kind] in line  # fmt: skip
    if kind == "foreign file":
        assert out.read_text() == "my notes\n"


def test_read_only_out_folder(synth, checkpoints, tmp_path):
    """Found before the work (exit 2, one line naming the folder). Root ignores permission bits,
    so as root the command runs without the capability that lets it (setpriv)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    command = [sys.executable, "-m", "hpa_kit", *_argv(synth, checkpoints, folder / "s.csv")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a folder read-only")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    folder.chmod(0o755)
    assert result.returncode == 2, result.stderr
    line = _one_line(result.stderr)
    assert "cannot write in the folder of --out" in line and "Permission denied" in line
    assert list(folder.iterdir()) == []


def test_full_disk_when_writing_the_csv(synth, checkpoints, tmp_path, capsys, monkeypatch):
    """The disk fills up as the CSV is written (a real ENOSPC from /dev/full): exit 1, one line
    naming the file; the resume file keeps every image for the next run."""
    import hpa_kit.submission

    def write_to_a_full_disk(path, predictions, sample, **kwargs):
        with open("/dev/full", "w") as handle:
            handle.write("ID,ImageWidth,ImageHeight,PredictionString\n" * 1000)
            handle.flush()

    monkeypatch.setattr(hpa_kit.submission, "write_submission", write_to_a_full_disk)
    out, resume = tmp_path / "s.csv", tmp_path / "resume.jsonl"
    assert main(_argv(synth, checkpoints, out, "--resume", str(resume))) == 1
    line = _one_line(capsys.readouterr().err)
    assert f"cannot write {out}" in line and "No space left on device" in line
    monkeypatch.undo()
    assert main(_argv(synth, checkpoints, out, "--resume", str(resume))) == 0
    assert "3 resumed, 0 processed" in capsys.readouterr().err


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--margin", "inf", "margin must be a finite number in [0, 2], got inf"),
        ("--margin", "nan", "margin must be a finite number in [0, 2], got nan"),
        ("--margin", "-0.1", "margin must be"),
        ("--image-weight", "1.5", "image_weight must be a finite number in [0, 1]"),
        ("--floor", "-1", "floor must be"),
        ("--batch-size", "0", "batch_size must be an integer >= 1"),
        ("--workers", "-1", "num_workers must be an integer in [0, 256]"),
        ("--workers", "100000", "num_workers must be an integer in [0, 256]"),
        ("--prefetch", "0", "prefetch must be an integer >= 1"),
        ("--max-images", "-1", "max_images must be an integer >= 0"),
        ("--max-failures", "-1", "max_failures must be a fraction in [0, 1) or a whole count"),
        ("--max-failures", "2.5", "max_failures must be a fraction in [0, 1) or a whole count"),
        ("--max-failures", "inf", "max_failures must be"),
        ("--threads", "0", "threads must be an integer in [1, 1024]"),
        ("--seg-scale", "inf", "SegConfig.scale must be in (0, 4], got inf"),
        ("--pixel-size", "0", "pixel_size (full-resolution pixels per image pixel) must be"),
    ],
)
def test_absurd_numbers_exit_2_before_any_work(synth, checkpoints, tmp_path, capsys, option,
                                               value, message):  # fmt: skip
    out = tmp_path / "s.csv"
    assert main(_argv(synth, checkpoints, out, option, value)) == 2
    assert message in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_cuda_without_a_gpu_before_loading_anything(synth, tmp_path, capsys):
    import torch

    device = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: never there
    argv = _argv(synth, [tmp_path / "no-checkpoint"], tmp_path / "s.csv", "--device", device)
    assert main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert device in line and "CUDA" in line  # the device is checked before the checkpoints
    assert main([*argv[:-2], "--device", "cpu"]) == 2
    assert "cannot load the checkpoints" in _one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- kill -9


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


_PARENT = """
import sys
from job_helpers import GatedSegmenter
from hpa_kit.predict import PredictOptions, predict_folder

if __name__ == "__main__":
    images, sample, checkpoint, out, resume, gate = sys.argv[1:]
    options = PredictOptions(tta="none", num_workers=2, prefetch=2, progress=False, threads=1)
    predict_folder(images, sample, [checkpoint], out=out, segmenter=GatedSegmenter(gate),
                   options=options, resume=resume)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_sigkill_mid_run_leaves_no_process_and_resumes_to_the_same_csv(synth, checkpoints,
                                                                       tmp_path):  # fmt: skip
    """predict with 2 worker processes is killed with SIGKILL while both workers are busy: its
    workers and the resource tracker end within seconds; a rerun with the same resume file
    predicts the rest and writes the CSV of an uninterrupted run."""
    images = tmp_path / "images"
    shutil.copytree(synth.out / "images", images)
    for image_id, odd in zip(synth.ids, (0, 1, 1), strict=True):  # odd: waits at the gate
        red = read_channel(images / f"{image_id}_red.png")
        red[0, 0] = red[0, 0] // 2 * 2 + odd
        write_channels(images, image_id, red[:, :, None], channels=("red",))
    gate, resume, script = tmp_path / "gate", tmp_path / "resume.jsonl", tmp_path / "parent.py"
    gate.touch()
    script.write_text(_PARENT)
    args = [images, synth.sample_submission, checkpoints[0], tmp_path / "killed.csv", resume, gate]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    parent = subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env,
                              stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and parent.poll() is None:
            workers = [p for p, cmd in _children(parent.pid) if "spawn_main" in cmd]
            records = resume.read_text().count("\n") - 1 if resume.exists() else 0
            if len(workers) == 2 and records >= 1:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"predict did not reach its workers: {parent.stderr.read()[-2000:]!r}")
        children = _children(parent.pid)
        assert any("resource_tracker" in cmd for _, cmd in children), children
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p, _ in children):
            time.sleep(0.1)
        assert [cmd for p, cmd in children if _alive(p)] == []
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stderr.close()
    assert not (tmp_path / "killed.csv").exists()

    gate.unlink()
    options = PredictOptions(tta="none", num_workers=0, progress=False, threads=1)
    segmenter = GatedSegmenter(str(gate))
    args = [images, synth.sample_submission, [checkpoints[0]]]
    resumed = predict_folder(*args, out=tmp_path / "resumed.csv", segmenter=segmenter,
                             options=options, resume=resume)  # fmt: skip
    assert resumed.resumed == 1 and resumed.processed == 2
    predict_folder(*args, out=tmp_path / "whole.csv", segmenter=segmenter, options=options)
    assert (tmp_path / "resumed.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert pd.read_csv(tmp_path / "resumed.csv").shape[0] == 3

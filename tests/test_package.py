"""Package-level promises: a cheap import, a working CLI entry point, labels."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from hpa_kit import labels
from hpa_kit.cli import COMMANDS, build_parser, main
from hpa_kit.errors import RunError, UsageError

HEAVY = ("torch", "timm", "pycocotools", "albumentations", "hpacellseg", "kaggle")


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    return set(filter(None, out.split(",")))


def test_import_hpa_kit_does_not_import_heavy_dependencies():
    assert _imported_after("import hpa_kit") == set()


def test_cli_help_does_not_import_heavy_dependencies():
    code = "from hpa_kit.cli import build_parser\nbuild_parser().format_help()"
    assert _imported_after(code) == set()


def test_every_command_module_is_registered():
    help_text = build_parser().format_help()
    for name in COMMANDS:
        assert name.replace("_", "-") in help_text, name


def test_console_script_help_runs():
    result = subprocess.run(
        [sys.executable, "-m", "hpa_kit", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "usage: hpa-kit" in result.stdout


def test_main_without_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    assert "usage: hpa-kit" in capsys.readouterr().out


def test_class_names_are_the_competitions():
    assert labels.NUM_CLASSES == 19
    assert labels.CLASS_NAMES[0] == "Nucleoplasm"
    assert labels.CLASS_NAMES[11] == "Mitotic spindle"
    assert labels.CLASS_NAMES[labels.NEGATIVE] == "Negative"


def test_parse_and_format_labels_round_trip():
    vector = labels.parse_labels("8|5|0")
    assert vector.dtype == np.float32 and vector.shape == (19,)
    assert np.flatnonzero(vector).tolist() == [0, 5, 8]
    assert labels.format_labels(vector) == "0|5|8"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("19", "out of range"),
        ("1|x", "bad class"),
        ("-1", "bad class"),
        ("1||2", "bad class"),
    ],
)
def test_bad_label_strings_raise_clear_errors(text, message):
    with pytest.raises(labels.LabelError, match=message):
        labels.parse_labels(text)


def test_repeated_classes_count_once():
    # The real train.csv holds rows such as "13|0|13".
    assert labels.parse_label_list("13|0|13") == [13, 0]
    assert labels.format_labels(labels.parse_labels("13|0|13")) == "0|13"


def test_format_labels_rejects_wrong_length_and_empty_vector():
    with pytest.raises(labels.LabelError, match="shape"):
        labels.format_labels([1.0, 0.0])
    with pytest.raises(labels.LabelError, match="threshold"):
        labels.format_labels(np.zeros(19))


def test_top_level_api_is_lazy_and_complete():
    import hpa_kit

    assert sorted(hpa_kit.__all__) == sorted(["__version__", *hpa_kit._LAZY])
    probe = "import hpa_kit\nhpa_kit.read_image\nhpa_kit.validate_submission"
    assert _imported_after(probe) == set()  # the light names stay light
    for name in hpa_kit._LAZY:
        assert callable(getattr(hpa_kit, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hpa_kit.nope  # noqa: B018


def _failing(exc: BaseException):
    def func(args):
        raise exc

    return func


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (UsageError("folder x/ does not exist"), 2, "hpa-kit t: folder x/ does not exist"),
        (RunError("every image failed"), 1, "hpa-kit t: every image failed"),
        (OSError(28, "No space left on device", "out.csv"), 1, "No space left on device"),
        (KeyError("id"), 1, "unexpected error: KeyError: 'id' (run with --debug"),
        (KeyboardInterrupt(), 130, "hpa-kit t: interrupted"),
    ],
)
def test_run_command_turns_failures_into_one_line(capsys, exc, code, text):
    from hpa_kit.cli import run_command

    assert run_command(_failing(exc), None, name="hpa-kit t") == code
    err = capsys.readouterr().err
    assert text in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(type(exc)):
        run_command(_failing(exc), None, name="hpa-kit t", debug=True)


def test_debug_flag_is_accepted_before_and_after_the_command(tmp_path):
    missing = os.fspath(tmp_path / "missing.csv")
    for argv in (["--debug", "validate", missing], ["validate", missing, "--debug"]):
        run = subprocess.run(
            [sys.executable, "-m", "hpa_kit", *argv, "--sample", missing],
            capture_output=True,
            text=True,
        )
        # --debug shows the traceback of the expected failure (exit 1, as Python's own).
        assert run.returncode == 1 and "SubmissionError: sample file not found" in run.stderr
        assert "unrecognized arguments" not in run.stderr


def test_output_pipe_closed_by_the_reader_is_not_an_error(tmp_path):
    from hpa_kit.rle import empty_mask_string

    truth = tmp_path / "truth.csv"
    rows = [f"id{i},64,64,0 1 {empty_mask_string(64, 64)}" for i in range(3)]
    truth.write_text("ID,ImageWidth,ImageHeight,PredictionString\n" + "\n".join(rows) + "\n")
    # `true` exits at once without reading: the score's JSON meets a closed pipe.
    cmd = f"{sys.executable} -m hpa_kit score {truth} --truth {truth} | true"
    run = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert run.stderr == ""

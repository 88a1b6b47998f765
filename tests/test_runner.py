"""hpa_kit.runner (the job runner) and hpa_kit.outputs (checks, resume logs; atomic writes are in
tests/test_outputs.py)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time

import pytest
from job_helpers import exit_on, thread_limits, worker_pid

from hpa_kit.batch import BatchReport, allowed_failures
from hpa_kit.errors import RunError, UsageError
from hpa_kit.outputs import (
    ResumeLog,
    ResumeMismatchError,
    check_distinct_files,
    check_output_file,
)
from hpa_kit.runner import WORKER_DIED, JobResult, RunnerOptions, Stage, check_number, run_jobs

THREADS = RunnerOptions(workers=3, executor="thread")


def _sleep_then_echo(image_id, seconds):
    time.sleep(seconds)
    return image_id


# --------------------------------------------------------------------------- runner


def test_ordered_and_as_completed():
    inputs = {"slow": 0.3, "mid": 0.15, "fast": 0.0}
    stages = [Stage(_sleep_then_echo)]
    ordered = list(run_jobs(inputs, stages, THREADS))
    assert [r.id for r in ordered] == ["slow", "mid", "fast"]
    assert all(isinstance(r, JobResult) and r.ok and r.value == r.id for r in ordered)
    assert ordered[0].seconds >= 0.3
    completed = list(run_jobs(inputs, stages, THREADS.__class__(workers=3, executor="thread",
                                                                ordered=False)))  # fmt: skip
    assert [r.id for r in completed] == ["fast", "mid", "slow"]


def test_a_failing_stage_ends_only_its_id():
    def first(image_id, value):
        return value * 2

    def second(image_id, value):
        if image_id == "b":
            raise OSError(f"cannot write {image_id}.png")
        return value + 1

    results = list(run_jobs({"a": 1, "b": 2, "c": 3}, [Stage(first), Stage(second)]))
    assert [(r.id, r.value, r.error) for r in results] == [
        ("a", 3, None),
        ("b", None, "OSError: cannot write b.png"),
        ("c", 7, None),
    ]
    report = BatchReport()
    for result in results:
        report.add_result(result.id, result.error)
    assert report.done == ["a", "c"] and report.failed == {"b": "OSError: cannot write b.png"}


def test_main_stage_batches_and_retries_a_failed_batch_one_id_at_a_time():
    calls = []

    def main(ids, values):
        calls.append(list(ids))
        if "bad" in ids:
            raise ValueError("a bad image in the batch")
        return [v.upper() for v in values]

    ids = ["a", "b", "bad", "c", "d"]
    stages = [
        Stage(lambda i, v: i),
        Stage(main, where="main", batch=2),
        Stage(lambda i, v: v + "!"),
    ]
    results = list(run_jobs(ids, stages, RunnerOptions(prefetch=5)))
    assert [(r.id, r.value) for r in results if r.ok] == [("a", "A!"), ("b", "B!"), ("c", "C!"),
                                                          ("d", "D!")]  # fmt: skip
    assert [r.error for r in results if not r.ok] == ["ValueError: a bad image in the batch"]
    # [a, b] then [bad, c] fails and is retried as [bad], [c]; then [d] alone (nothing can join).
    assert calls == [["a", "b"], ["bad", "c"], ["bad"], ["c"], ["d"]]


def test_prefetch_bounds_the_ids_in_flight():
    lock, started, taken, peak = threading.Lock(), [0], [0], [0]

    def job(image_id, value):
        with lock:
            started[0] += 1
            peak[0] = max(peak[0], started[0] - taken[0])
        time.sleep(0.01)
        return image_id

    options = RunnerOptions(workers=4, executor="thread", prefetch=2)
    for _ in run_jobs([str(i) for i in range(12)], [Stage(job)], options):
        time.sleep(0.02)  # a slow consumer: the workers must not run ahead
        with lock:
            taken[0] += 1
    assert peak[0] <= 2 and taken[0] == 12


def test_bad_jobs_and_options_are_refused():
    with pytest.raises(ValueError, match="given twice"):
        list(run_jobs(["a", "b", "a"], [Stage(worker_pid)]))
    with pytest.raises(ValueError, match="at least one stage"):
        list(run_jobs(["a"], []))
    with pytest.raises(ValueError, match="only main stages take a batch"):
        Stage(worker_pid, batch=2)
    with pytest.raises(ValueError, match="where"):
        Stage(worker_pid, where="gpu")
    for bad in ({"workers": -1}, {"workers": 10**6}, {"prefetch": 0}, {"executor": "fork"},
                {"worker_threads": 0}, {"workers": 1.5}):  # fmt: skip
        with pytest.raises(UsageError):
            RunnerOptions(**bad)


def test_worker_processes_limit_their_threads_and_one_death_fails_one_id():
    """A worker process that dies fails only the id it was working on; the others, in flight
    with it, are retried one at a time in a new pool. Workers run one thread each."""
    options = RunnerOptions(workers=2, prefetch=4)
    ids = ["a", "die", "b", "c"]
    results = {r.id: r for r in run_jobs(ids, [Stage(exit_on)], options)}
    assert [i for i, r in results.items() if r.ok] == ["a", "b", "c"]
    assert results["die"].error.startswith(WORKER_DIED)
    limits = [r.value for r in run_jobs(["x", "y"], [Stage(thread_limits)], options)]
    assert all(pid != os.getpid() and rest == ["1", 1] for pid, *rest in limits), limits
    _assert_no_worker_left()


def _assert_no_worker_left(timeout: float = 10.0) -> None:
    """Every worker process of the finished runs has ended (a live one hangs the interpreter's
    exit: the broken pool's manager thread waits for it)."""
    import multiprocessing

    deadline = time.monotonic() + timeout
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


def test_processes_that_cannot_start_fall_back_to_threads():
    """Spawned workers re-import __main__, which fails for a script read from stdin: the job
    must still run (in threads), with a warning."""
    script = """
import operator, warnings
from hpa_kit.runner import RunnerOptions, Stage, run_jobs
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    results = list(run_jobs({"a": "1", "b": "2"}, [Stage(operator.add)], RunnerOptions(workers=2)))
print("VALUES", [r.value for r in results], [r.error for r in results])
print("WARNED", any("threads instead" in str(w.message) for w in caught))
"""
    result = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "VALUES ['a1', 'b2'] [None, None]" in result.stdout
    assert "WARNED True" in result.stdout


def test_check_number_and_failure_limits():
    assert check_number("x", 3, low=1, integer=True) == 3
    for value in (float("nan"), float("inf"), -1, True, "2"):
        with pytest.raises(UsageError, match="x must be a finite number >= 0"):
            check_number("x", value, low=0)
    with pytest.raises(UsageError, match=r"in \(0, 1\]"):
        check_number("x", 0, low=0, high=1, above=True)
    assert [allowed_failures(0.05, n) for n in (19, 20, 100)] == [0, 1, 5]
    for bad in (-0.1, 2.5, float("nan"), float("inf")):
        with pytest.raises(UsageError, match="max_failures"):
            allowed_failures(bad, 10)


# --------------------------------------------------------------------------- outputs


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "a.csv") == tmp_path / "a.csv"
    with pytest.raises(UsageError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(UsageError, match="not a regular file"):
        check_output_file("/dev/null")
    with pytest.raises(UsageError, match="folder of --out .* does not exist"):
        check_output_file(tmp_path / "no" / "a.csv")
    with pytest.raises(UsageError, match="not enough free space"):
        check_output_file(tmp_path / "a.csv", need_bytes=1 << 62)
    with pytest.raises(UsageError, match="--out and --sample name the same file"):
        check_distinct_files({"--out": tmp_path / "s.csv", "--sample": f"{tmp_path}/./s.csv"})


def _log(path, **identity):
    return ResumeLog(path, kind="test.job", version=1, identity=identity or {"run": "r1"})


def test_resume_log_round_trip_and_cut_lines(tmp_path):
    path = tmp_path / "resume.jsonl"
    with _log(path) as log:
        assert log.open() == {}
        log.append({"id": "a", "x": 1})
        log.append({"id": "b", "x": 2})
    with open(path, "a") as handle:
        handle.write('{"id": "c", "x"')  # a kill while writing
    with _log(path) as log:
        assert log.open() == {"a": {"id": "a", "x": 1}, "b": {"id": "b", "x": 2}}
        log.append({"id": "a", "x": 3})
    header, records = ResumeLog.read(path)
    assert header == {"format": "test.job", "version": 1, "run": "r1"}
    assert records["a"]["x"] == 3 and "c" not in records
    # A header cut by a kill (a prefix of ours) is rewritten; an empty file too.
    path.write_bytes(path.read_bytes()[:12])
    with _log(path) as log:
        assert log.open() == {}
    assert ResumeLog.read(path)[0]["run"] == "r1"


@pytest.mark.parametrize(
    "content",
    [b"ID,ImageWidth\na,1\n", b'{"hpa_kit_resume": 1}\n', b"\x89PNG\r\n\x1a\n", b"x" * 70000],
)
def test_resume_log_refuses_a_file_it_did_not_write(tmp_path, content):
    path = tmp_path / "resume.jsonl"
    path.write_bytes(content)
    with pytest.raises(ResumeMismatchError, match="is not a resume file of test.job"):
        _log(path).open()
    assert path.read_bytes() == content


def test_resume_log_refuses_another_runs_file(tmp_path):
    path = tmp_path / "resume.jsonl"
    with _log(path, run="r1", options={"tta": "seed"}) as log:
        log.open()
        log.append({"id": "a"})
    before = path.read_bytes()
    with pytest.raises(ResumeMismatchError, match='options.tta is "seed", this run.s is "d4"'):
        _log(path, run="r1", options={"tta": "d4"}).open()
    with pytest.raises(UsageError, match="not a regular file"):
        _log(tmp_path).open()
    assert path.read_bytes() == before


def test_resume_log_write_failure_is_a_run_error(tmp_path):
    """A disk that refuses more bytes (here: the file size limit, EFBIG) ends the run with one
    line naming the file; the records written before stay readable."""
    path = tmp_path / "resume.jsonl"
    log = _log(path)
    log.open()
    log.append({"id": "a"})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 10, hard))
    try:
        with pytest.raises(RunError, match=r"cannot append to --resume .*resume.jsonl: .*large"):
            log.append({"id": "b", "prediction": "x" * 100})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        log.close()
    assert "a" in ResumeLog.read(path)[1]
    assert json.loads(path.read_text().splitlines()[0])["format"] == "test.job"

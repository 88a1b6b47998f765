"""Tests for hpa_kit.download and `hpa-kit download-public`, against a loopback HTTP server."""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pandas as pd
import pytest

from hpa_kit.cli import main
from hpa_kit.download import (
    CELL_LINES,
    DownloadError,
    RetryPolicy,
    decode_tif_gz,
    download_public,
    fetch_bytes,
    public_image_url,
    read_public_list,
    select_public_images,
)
from hpa_kit.errors import UsageError
from hpa_kit.io import (
    CHANNELS,
    CorruptImageError,
    ImageShapeError,
    read_channel,
    read_image,
    resize_area,
    to_uint8,
)
from hpa_kit.outputs import temp_path

HOST = "https://images.proteinatlas.org"
FAST = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.002, timeout=5.0)


class _Server:
    """Serves ``files`` (path -> bytes); ``fail_first[path] = n``: 503 for the first n requests;
    ``status[path] = code``: always that code. Every request path is logged."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_first: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with state._lock:
                    state.requests.append(self.path)
                    code = state.status.get(self.path)
                    if code is None and state.fail_first.get(self.path, 0) > 0:
                        state.fail_first[self.path] -= 1
                        code = 503
                    body = state.files.get(self.path)
                if code is None and body is None:
                    code = 404
                if code is not None:
                    self.send_error(code)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def count(self, fragment: str) -> int:
        return sum(fragment in path for path in self.requests)


@pytest.fixture()
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _tif_gz(plane: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".tif", plane)
    assert ok
    return gzip.compress(encoded.tobytes(), compresslevel=1)


def _planes(seed: int, shape=(48, 64)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 65535, size=shape, endpoint=True, dtype=np.uint16) for c in CHANNELS}


def _publish(srv: _Server, stem_path: str, planes: dict[str, np.ndarray]) -> None:
    for color, plane in planes.items():
        srv.files[f"{stem_path}_{color}.tif.gz"] = _tif_gz(plane)


def _write_list(path, rows, sep="\t"):
    columns = ["Image", "Gene", "Cellline", "Label", "Label_idx", "in_trainset"]
    pd.DataFrame(rows, columns=columns).to_csv(path, sep=sep, index=False)
    return path


# Three images to download and four rows the filter leaves out (never requested).
ROWS = [
    (f"{HOST}/10001/1_A1_1", "g1", "U-2 OS", "Cytosol,Nucleoplasm", "16,0", "False"),
    (f"{HOST}/10001/1_A2_1", "g2", "A-431", "Vesicles,Endosomes", "17|17", "False"),
    (f"{HOST}/10002/2_B1_1", "g3", "hTCEpi", "Mitotic spindle", "11", "False"),
    (f"{HOST}/10003/3_C1_1", "g4", "U-2 OS", "Nucleoli", "2", "True"),  # in train set
    (f"{HOST}/10003/3_C2_1", "g5", "U-2 OS", "Rods & Rings", "", "False"),  # no label
    (f"{HOST}/10003/3_C3_1", "g6", "HepG2", "Nucleoli", "2", "False"),  # other cell line
    (f"{HOST}/10001/1_A1_1", "g7", "U-2 OS", "Nucleoli", "2", "False"),  # same image, 2nd gene
]
KEPT = {"1_A1_1": "/10001/1_A1_1", "1_A2_1": "/10001/1_A2_1", "2_B1_1": "/10002/2_B1_1"}


@pytest.fixture()
def published(server, tmp_path):
    planes = {image_id: _planes(seed) for seed, image_id in enumerate(KEPT)}
    for image_id, stem_path in KEPT.items():
        _publish(server, stem_path, planes[image_id])
    return server, planes, _write_list(tmp_path / "kaggle_2021.tsv", ROWS)


def _run(list_path, dst, srv, **kwargs):
    options = {"size": 16, "workers": 3, "base_url": srv.url, "retry": FAST, "progress": False}
    return download_public(list_path, dst, **{**options, **kwargs})


# ---- the list ------------------------------------------------------------------------------


def test_read_public_list_tab_and_comma(tmp_path):
    tab = read_public_list(_write_list(tmp_path / "a.tsv", ROWS, sep="\t"))
    comma = read_public_list(_write_list(tmp_path / "b.csv", ROWS, sep=","))  # quoted "a,b"
    pd.testing.assert_frame_equal(tab, comma)
    assert tab.loc[0, "Label"] == "Cytosol,Nucleoplasm" and tab.loc[0, "Label_idx"] == "16,0"
    assert tab.loc[2, "Label_idx"] == "11"  # strings, not numbers
    (tmp_path / "c.tsv").write_text("Image\tLabel_idx\n")
    with pytest.raises(ValueError, match="missing column.*Cellline, in_trainset"):
        read_public_list(tmp_path / "c.tsv")


def test_select_public_images_rules(tmp_path):
    table = read_public_list(_write_list(tmp_path / "a.tsv", ROWS))
    selection = select_public_images(table)
    assert selection.images[["ID", "Image", "Label"]].values.tolist() == [
        ["1_A1_1", f"{HOST}/10001/1_A1_1", "0|2|16"],  # "16,0" merged with the 2nd gene's "2"
        ["1_A2_1", f"{HOST}/10001/1_A2_1", "17"],
        ["2_B1_1", f"{HOST}/10002/2_B1_1", "11"],
    ]
    assert selection.excluded == 3 and selection.rejected == {}
    assert len(CELL_LINES) == 17 and "HepG2" not in CELL_LINES


def test_select_public_images_rejects_loudly():
    table = pd.DataFrame(
        [
            (f"{HOST}/1/1_A1_1", "A549", "0|19", "False"),  # class out of range
            (f"{HOST}/1/1_A2_1", "A549", "0", "maybe"),  # unreadable flag
            (f"{HOST}/1/1_A3_1", "A549", "3", "false"),
            (f"{HOST}/2/1_A3_1", "A549", "4", "False"),  # same id, other stem
            ("1_A4_1", "A549", "4", "False"),  # not a URL stem
        ],
        columns=["Image", "Cellline", "Label_idx", "in_trainset"],
    )
    selection = select_public_images(table)
    assert selection.images["ID"].tolist() == ["1_A3_1"]
    assert sorted(selection.rejected) == [
        "1_A1_1",
        "1_A2_1",
        f"1_A3_1 ({HOST}/2/1_A3_1)",
        "row 4",
    ]
    assert (
        "bad Label_idx" in selection.rejected["1_A1_1"] and "'19'" in selection.rejected["1_A1_1"]
    )
    assert "'maybe'" in selection.rejected["1_A2_1"]
    assert "already taken" in selection.rejected[f"1_A3_1 ({HOST}/2/1_A3_1)"]


def test_public_image_url():
    stem = f"{HOST}/10005/921_B9_1"
    assert public_image_url(stem, "red") == f"{HOST}/10005/921_B9_1_red.tif.gz"
    for base in ("http://127.0.0.1:9", "http://127.0.0.1:9/"):
        assert public_image_url(stem, "blue", base_url=base) == (
            "http://127.0.0.1:9/10005/921_B9_1_blue.tif.gz"
        )
    assert public_image_url(
        "http://images.proteinatlas.org/1/x", "green", base_url="http://m/a"
    ) == ("http://m/a/1/x_green.tif.gz")
    with pytest.raises(ValueError, match="does not start with"):
        public_image_url("https://images.proteinatlas.org.evil/1/x", "red", base_url="http://m")


def test_retry_policy():
    assert [RetryPolicy(backoff=0.5, max_backoff=1.5).delay(k) for k in range(4)] == [
        0.5,
        1.0,
        1.5,
        1.5,
    ]
    for bad in ({"attempts": 0}, {"attempts": 2.0}, {"backoff": -1}, {"timeout": 0}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


# ---- fetching and decoding -------------------------------------------------------------------


def test_fetch_bytes_backoff_then_success(server):
    server.files["/a"] = b"payload"
    server.fail_first["/a"] = 2
    slept: list[float] = []
    policy = RetryPolicy(attempts=3, backoff=0.5, max_backoff=10.0)
    assert fetch_bytes(server.url + "/a", retry=policy, sleep=slept.append) == b"payload"
    assert slept == [0.5, 1.0] and server.count("/a") == 3


def test_fetch_bytes_gives_up_and_does_not_retry_404(server):
    server.status["/down"] = 503
    slept: list[float] = []
    policy = RetryPolicy(attempts=3, backoff=0.25)
    with pytest.raises(DownloadError, match=r"HTTP 503.*gave up after 3 attempt\(s\)"):
        fetch_bytes(server.url + "/down", retry=policy, sleep=slept.append)
    assert slept == [0.25, 0.5] and server.count("/down") == 3
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_bytes(server.url + "/missing", retry=policy, sleep=slept.append)
    assert server.count("/missing") == 1 and len(slept) == 2


def test_fetch_bytes_connection_refused_is_retried():
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    slept: list[float] = []
    with pytest.raises(DownloadError, match=r"gave up after 2 attempt\(s\)"):
        fetch_bytes(f"http://127.0.0.1:{port}/x", retry=RetryPolicy(attempts=2), sleep=slept.append)
    assert slept == [1.0]


def test_decode_tif_gz():
    plane = np.array([[0, 1, 256], [65535, 4660, 7]], dtype=np.uint16)
    np.testing.assert_array_equal(decode_tif_gz(_tif_gz(plane)), plane)
    plane8 = np.array([[0, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_tif_gz(_tif_gz(plane8)), plane8)
    with pytest.raises(CorruptImageError, match="not a valid gzip.*src.gz"):
        decode_tif_gz(b"plain bytes", source="src.gz")
    with pytest.raises(CorruptImageError, match="cannot decode"):
        decode_tif_gz(gzip.compress(b"II*\x00 not really a tiff"))
    with pytest.raises(ImageShapeError, match="shape"):
        decode_tif_gz(_tif_gz(np.zeros((4, 4, 3), dtype=np.uint16)))


# ---- the whole job ---------------------------------------------------------------------------


def test_download_public_all_done(published, tmp_path):
    srv, planes, list_path = published
    dst = tmp_path / "out"
    report = _run(list_path, dst, srv)
    assert sorted(report.done) == sorted(KEPT) and report.ok
    assert len(srv.requests) == 12 and all(
        p.startswith(("/10001/", "/10002/")) for p in srv.requests
    )
    for image_id, channels in planes.items():
        for color, plane in channels.items():
            out = read_channel(dst / f"{image_id}_{color}.png")
            np.testing.assert_array_equal(out, resize_area(to_uint8(plane), 16))
    labels = (dst / "labels.csv").read_text().splitlines()
    assert labels == ["ID,Label", "1_A1_1,0|2|16", "1_A2_1,17", "2_B1_1,11"]
    expected = {f"{i}_{c}.png" for i in KEPT for c in CHANNELS} | {"labels.csv"}
    assert {p.name for p in dst.iterdir()} == expected  # no temporary files left


def test_download_public_503_retried(published, tmp_path):
    srv, _, list_path = published
    srv.fail_first["/10001/1_A2_1_green.tif.gz"] = 2  # 503, 503, then the file
    report = _run(list_path, tmp_path / "out", srv)
    assert sorted(report.done) == sorted(KEPT) and report.ok
    assert srv.count("1_A2_1_green") == 3 and len(srv.requests) == 14


def test_download_public_failures_and_resume(published, tmp_path):
    srv, planes, list_path = published
    dst = tmp_path / "out"
    good_blue = srv.files["/10001/1_A1_1_blue.tif.gz"]
    srv.files["/10001/1_A1_1_blue.tif.gz"] = b"<html>not gzip</html>"  # corrupt: no retry
    srv.status["/10002/2_B1_1_red.tif.gz"] = 503  # down for good: 3 attempts
    report = _run(list_path, dst, srv)
    assert report.done == ["1_A2_1"]
    assert sorted(report.failed) == ["1_A1_1", "2_B1_1"]
    assert (
        "CorruptImageError" in report.failed["1_A1_1"] and "1_A1_1_blue" in report.failed["1_A1_1"]
    )
    assert "HTTP 503" in report.failed["2_B1_1"] and "3 attempt(s)" in report.failed["2_B1_1"]
    assert srv.count("1_A1_1_blue") == 1 and srv.count("2_B1_1_red") == 3
    # red and green of 1_A1_1 were written before blue failed; nothing of 2_B1_1 was.
    assert sorted(p.name for p in dst.glob("1_A1_1_*")) == ["1_A1_1_green.png", "1_A1_1_red.png"]
    assert not list(dst.glob("2_B1_1_*")) and not list(dst.glob(".*"))
    assert (dst / "labels.csv").read_text().splitlines() == ["ID,Label", "1_A2_1,17"]

    # Second run, server fixed: done ids make no request, 1_A1_1 fetches only blue and yellow.
    srv.files["/10001/1_A1_1_blue.tif.gz"] = good_blue
    del srv.status["/10002/2_B1_1_red.tif.gz"]
    srv.requests.clear()
    again = _run(list_path, dst, srv)
    assert sorted(again.done) == ["1_A1_1", "2_B1_1"] and again.skipped == {
        "1_A2_1": "already done"
    }
    assert sorted(srv.requests) == sorted(
        ["/10001/1_A1_1_blue.tif.gz", "/10001/1_A1_1_yellow.tif.gz"]
        + [f"/10002/2_B1_1_{c}.tif.gz" for c in CHANNELS]
    )
    np.testing.assert_array_equal(
        read_channel(dst / "1_A1_1_blue.png"), resize_area(to_uint8(planes["1_A1_1"]["blue"]), 16)
    )
    assert len((dst / "labels.csv").read_text().splitlines()) == 4

    # Third run: everything done, no request at all.
    srv.requests.clear()
    third = _run(list_path, dst, srv, labels_csv=tmp_path / "labels_again.csv")
    assert third.done == [] and len(third.skipped) == 3 and srv.requests == []
    assert (tmp_path / "labels_again.csv").read_text() == (dst / "labels.csv").read_text()


def test_download_public_rejected_rows_and_foreign_host(server, tmp_path):
    _publish(server, "/1/1_A1_1", _planes(0, (8, 8)))
    rows = [
        (f"{HOST}/1/1_A1_1", "g", "A549", "x", "0", "False"),
        ("https://example.org/1/1_B1_1", "g", "A549", "x", "0", "False"),  # cannot be rebased
        (f"{HOST}/1/1_C1_1", "g", "A549", "x", "0|25", "False"),  # bad class
    ]
    report = _run(_write_list(tmp_path / "l.tsv", rows), tmp_path / "out", server)
    assert report.done == ["1_A1_1"]
    assert "does not start with" in report.failed["1_B1_1"]
    assert "bad Label_idx" in report.failed["1_C1_1"]
    assert server.count("1_C1_1") == 0 and server.count("1_B1_1") == 0


def test_download_public_cli(published, tmp_path, capsys):
    srv, _, list_path = published
    dst = tmp_path / "out"
    srv.status["/10002/2_B1_1_yellow.tif.gz"] = 404
    argv = ["download-public", str(list_path), str(dst), "--size", "8", "--workers", "2"]
    argv += ["--base-url", srv.url, "--attempts", "2", "--backoff", "0.001", "--quiet"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "7 rows, 3 images selected, 3 rows excluded by the filter, 0 rejected" in captured.out
    assert "2 done, 0 skipped, 1 failed" in captured.err and "2_B1_1: DownloadError: HTTP 404" in (
        captured.err
    )
    assert read_channel(dst / "1_A1_1_red.png").shape == (8, 8)
    del srv.status["/10002/2_B1_1_yellow.tif.gz"]
    assert main(argv) == 0
    assert "1 done, 2 skipped (already done: 2), 0 failed" in capsys.readouterr().out


def test_download_public_cli_bad_input(tmp_path, capsys):
    argv = ["download-public", str(tmp_path / "none.tsv"), str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    assert "public image list not found" in capsys.readouterr().err
    listed = _write_list(tmp_path / "l.tsv", ROWS[:1])
    assert main(["download-public", str(listed), str(tmp_path / "out"), "--attempts", "0"]) == 2
    assert "attempts must be an integer in [1, 100], got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--size", "0", "size must be an integer in [1, 16384], got 0"),
        ("--workers", "0", "workers must be an integer in [1, 256], got 0"),
        ("--attempts", "1000000", "attempts must be an integer in [1, 100]"),
        ("--backoff", "inf", "backoff must be a finite number in [0, 3600], got inf"),
        ("--backoff", "nan", "backoff must be a finite number in [0, 3600], got nan"),
        ("--timeout", "0", "timeout must be a finite number in (0, 3600], got 0.0"),
        ("--timeout", "inf", "timeout must be a finite number in (0, 3600], got inf"),
    ],
)
def test_download_public_cli_absurd_numbers(published, tmp_path, capsys, option, value, message):
    srv, _, list_path = published
    argv = ["download-public", str(list_path), str(tmp_path / "out"), "--base-url", srv.url]
    assert main([*argv, option, value, "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert srv.requests == [] and not (tmp_path / "out").exists()


def test_download_public_labels_csv_leftovers_and_foreign_files(published, tmp_path):
    """Killed writes' temporary files (labels CSV, a PNG) are removed by the next run (only
    that pattern, only when its writer is gone); a labels path holding another file is refused."""
    srv, _, list_path = published
    dst = tmp_path / "out"
    dst.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftovers = [
        temp_path(dst / "labels.csv", pid=dead.pid),
        temp_path(dst / "1_A1_1_red.png", pid=dead.pid),
    ]
    for leftover in leftovers:
        leftover.write_text("ID,Lab")
    others = [dst / ".labels.csv.tmp", dst / f".labels.csv.{dead.pid}.tmp"]
    for other in others:
        other.write_text("not ours")
    report = _run(list_path, dst, srv)
    assert report.ok and not any(p.exists() for p in leftovers)
    assert all(p.read_text() == "not ours" for p in others)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    srv.requests.clear()
    with pytest.raises(UsageError, match="is not one"):
        _run(list_path, dst, srv, labels_csv=notes)
    assert notes.read_text() == "my notes\n" and srv.requests == []


def test_download_public_bad_arguments(published, tmp_path):
    srv, _, list_path = published
    with pytest.raises(ValueError, match="size"):
        _run(list_path, tmp_path / "out", srv, size=0)
    with pytest.raises(ValueError, match="workers"):
        _run(list_path, tmp_path / "out", srv, workers=0)
    with pytest.raises(UsageError, match="public image list not found"):
        _run(tmp_path / "nope.tsv", tmp_path / "out", srv)


def test_download_public_real_sample(samples_dir, sample_ids, server, tmp_path):
    """A real image (256 px, widened to 16 bits) served as .tif.gz comes back exactly."""
    image = read_image(samples_dir / "images", sample_ids[0], size=256)
    for index, color in enumerate(CHANNELS):
        server.files[f"/7/7_A1_1_{color}.tif.gz"] = _tif_gz(
            image[:, :, index].astype(np.uint16) * 257
        )
    rows = [(f"{HOST}/7/7_A1_1", "g", "U-251 MG", "x", "7|1|2|0", "False")]
    report = _run(_write_list(tmp_path / "l.tsv", rows), tmp_path / "out", server, size=128)
    assert report.done == ["7_A1_1"] and report.ok
    for index, color in enumerate(CHANNELS):
        expected = resize_area(image[:, :, index], 128)  # (v * 257 + 128) // 257 == v
        np.testing.assert_array_equal(
            read_channel(tmp_path / "out" / f"7_A1_1_{color}.png"), expected
        )
    assert (tmp_path / "out" / "labels.csv").read_text().splitlines()[1] == "7_A1_1,0|1|2|7"

"""A loopback stand-in for the Kaggle API, for driving the real kaggle client in tests.

The client (kaggle 2.2.5 / kagglesdk) is pointed at it without root and without touching
``/etc/hosts``: ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` makes it call
``http://localhost/api/v1/{service}/{Method}``, and ``HTTP_PROXY=http://127.0.0.1:PORT``
sends those requests here in absolute form (``POST http://localhost/api/v1/... HTTP/1.1``);
the path is taken from that URL. :func:`client_env` builds such an environment, with the
credentials in the environment, in ``kaggle.json`` or as an access token.

What it answers (camelCase JSON, as kagglesdk reads it):

- ``kernels.KernelsApiService/SaveKernel`` -> ``{ref, url, versionNumber}`` (plus
  ``invalidDatasetSources`` when set), or ``{error}`` when ``kernel_error`` is set (HTTP 200:
  the kaggle CLI exits 0 on both);
- ``datasets.DatasetApiService/GetDatasetStatus`` -> 404 for an unknown dataset, else
  ``{status: "READY"}``;
- ``blobs.BlobApiService/StartBlobUpload`` -> ``{token, createUrl}``; a ``PUT`` of the raw
  bytes to ``createUrl`` is stored under the token (200; the first ``failing_puts`` get 500);
  a ``PUT`` probing an earlier upload (``Content-Range: bytes */N``, sent by a rerun that
  found resumable-upload state in ``$TMPDIR``) gets 404, so the client restarts it;
- ``CreateDataset`` / ``CreateDatasetVersion`` -> ``{status: "ok", url, ref}``, or
  ``{status: "error", error}`` when ``dataset_error`` is set;
- ``security.OAuthService/IntrospectToken`` -> ``{active, username}`` (an access token,
  ``KAGGLE_API_TOKEN``, is accepted when it equals ``token``).

Hostile modes: ``hang_on`` names a method (``"SaveKernel"``, ``"GetDatasetStatus"``,
``"PUT"`` for the uploads, ...) whose requests are read and never answered (the connection
stays open until :meth:`FakeKaggle.stop`); ``echo_credentials`` makes every API call but
the token check fail with a message that quotes the credential the client sent (HTTP 403;
a ``SaveKernel`` gets HTTP 200 with that message as ``error``, a refusal the kaggle CLI
exits 0 on); ``garbage_on`` names a method answered with HTTP 200 and an HTML page (a
proxy's error page).

Every request is recorded in :attr:`FakeKaggle.calls` (method, path, parsed JSON body, the
basic-auth user name); uploaded bytes are in :attr:`FakeKaggle.blobs`;
:meth:`FakeKaggle.uploaded_files` maps the file names of the last create/version call to
their bytes. :func:`run_delivery` runs ``python -m hpa_kit.delivery`` in a fresh process (the
kaggle client reads its environment at import); :func:`write_wheel` makes small valid wheel
files for the staging tests.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Call", "FakeKaggle", "client_env", "run_delivery", "write_wheel"]

_API = "/api/v1/"


@dataclass
class Call:
    method: str
    path: str
    body: Any
    auth_user: str | None
    auth_secret_ok: bool


@dataclass
class FakeKaggle:
    """The server state; start with :meth:`start`, stop with :meth:`stop` (or ``with``)."""

    username: str = "tester"
    key: str = "fake-key-0123456789abcdef"
    kernel_error: str | None = None
    invalid_dataset_sources: list[str] = field(default_factory=list)
    dataset_error: str | None = None
    existing_datasets: set[str] = field(default_factory=set)
    failing_puts: int = 0  # answer this many upload PUTs with HTTP 500
    token: str | None = None  # an access token accepted as "Bearer <token>"
    hang_on: str | None = None  # a method name (or "PUT") never answered
    echo_credentials: bool = False  # every API call fails quoting the credential sent
    garbage_on: str | None = None  # a method answered 200 with an HTML page, not JSON
    calls: list[Call] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    blob_names: dict[str, str] = field(default_factory=dict)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._release = threading.Event()  # set by stop(): hanging handlers return

    # ---- lifecycle
    def start(self) -> FakeKaggle:
        fake = self

        class Handler(_Handler):
            server_state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeKaggle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- queries
    def calls_to(self, method_name: str) -> list[Call]:
        return [c for c in self.calls if c.path.endswith("/" + method_name)]

    def uploaded_files(self) -> dict[str, bytes]:
        """File name -> bytes for the tokens named by the last CreateDataset(Version) call."""
        creates = self.calls_to("CreateDataset") + self.calls_to("CreateDatasetVersion")
        if not creates:
            return {}
        body = creates[-1].body
        files = body.get("files") or body.get("body", {}).get("files", [])
        return {self.blob_names[f["token"]]: self.blobs[f["token"]] for f in files}

    # ---- request handling (called from the handler thread)
    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _api(self, method: str, body: Any) -> tuple[int, dict[str, Any]]:
        if method == "IntrospectToken":
            return 200, {"active": body.get("token") == self.token, "username": self.username}
        if method == "SaveKernel":
            if self.kernel_error:
                return 200, {"error": self.kernel_error}
            slug = body.get("slug", "")
            reply: dict[str, Any] = {"ref": f"/code/{slug}", "versionNumber": 1}
            reply["url"] = f"http://localhost/code/{slug}"
            if self.invalid_dataset_sources:
                reply["invalidDatasetSources"] = list(self.invalid_dataset_sources)
            return 200, reply
        if method == "GetDatasetStatus":
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if ref in self.existing_datasets:
                return 200, {"status": "READY"}
            return 404, {"code": 404, "message": f"Dataset {ref} not found"}
        if method == "StartBlobUpload":
            token = f"blob{next(self._tokens)}"
            with self._lock:
                self.blob_names[token] = body.get("name", "")
            return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}
        if method in ("CreateDataset", "CreateDatasetVersion"):
            if method == "CreateDataset":
                ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
            else:
                ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if self.dataset_error:
                return 200, {"status": "error", "error": self.dataset_error}
            with self._lock:
                self.existing_datasets.add(ref)
            return 200, {"status": "ok", "ref": ref, "url": f"http://localhost/datasets/{ref}"}
        return 404, {"code": 404, "message": f"fake Kaggle has no method {method}"}


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeKaggle
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet server
        pass

    def _path(self) -> str:
        return urlsplit(self.path).path  # absolute form through the proxy, or origin form

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _auth(self) -> tuple[str | None, str, bool]:
        """(user name, the secret sent, whether it is valid)."""
        state = self.server_state
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            secret = header[7:]
            ok = state.token is not None and secret == state.token
            return (state.username if ok else None), secret, ok
        if not header.startswith("Basic "):
            return None, "", False
        user, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        return user, secret, secret == state.key

    def _hang(self) -> None:
        """Read the request, answer nothing until the server stops, then drop it."""
        self.server_state._release.wait()
        self.close_connection = True

    def _reply(self, status: int, payload: dict[str, Any] | None = None) -> None:
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        state = self.server_state
        path = self._path()
        raw = self._read_body()
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_raw": raw.decode(errors="replace")}
        user, secret, ok = self._auth()
        state._record(Call("POST", path, body, user, ok))
        method = path.rsplit("/", 1)[1]
        if method == state.hang_on:
            self._hang()
            return
        if method == state.garbage_on:
            page = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if not path.startswith(_API) or "/" not in path[len(_API) :]:
            self._reply(404, {"code": 404, "message": f"no such path {path}"})
            return
        if state.echo_credentials and method != "IntrospectToken":
            message = f"credential {secret!r} of {user!r} is not allowed to call {method}"
            if method == "SaveKernel":
                self._reply(200, {"error": message})
            else:
                self._reply(403, {"code": 403, "message": message})
            return
        if method != "IntrospectToken" and (not ok or user != state.username):
            self._reply(401, {"code": 401, "message": "bad credentials"})
            return
        status, payload = state._api(method, body)
        self._reply(status, payload)

    def do_PUT(self) -> None:  # noqa: N802 - http.server API
        state = self.server_state
        path = self._path()
        data = self._read_body()
        state._record(Call("PUT", path, {"bytes": len(data)}, None, False))
        if state.hang_on == "PUT":
            self._hang()
            return
        token = path.rsplit("/", 1)[-1]
        if not path.startswith("/upload/") or token not in state.blob_names:
            self._reply(404, {"code": 404, "message": "unknown upload"})
            return
        if self.headers.get("Content-Range", "").startswith("bytes */"):
            self._reply(404, {"code": 404, "message": "no upload in progress"})
            return
        with state._lock:
            fail = state.failing_puts > 0
            state.failing_puts -= int(fail)
        if fail:
            self._reply(500, {"code": 500, "message": "storage unavailable"})
            return
        with state._lock:
            state.blobs[token] = data
        self._reply(200, {})


def client_env(
    fake: FakeKaggle,
    home: Path,
    base: dict[str, str] | None = None,
    *,
    credentials: str = "env",
) -> dict[str, str]:
    """An environment that sends the kaggle client to ``fake`` with a private home/temp dir.

    Proxy variables of ``base`` (default ``os.environ``) are dropped, ``NO_PROXY`` is
    emptied so that ``localhost`` goes through the proxy, and ``VERBOSE`` and every
    ``KAGGLE_*`` variable are removed. ``credentials``: ``"env"`` sets ``KAGGLE_USERNAME``
    and ``KAGGLE_KEY``; ``"json"`` writes them to ``kaggle.json`` in ``KAGGLE_CONFIG_DIR``
    (mode 600) and sets ``KAGGLE_USERNAME`` only (as ``make ... KAGGLE_USERNAME=`` does);
    ``"token"`` sets ``KAGGLE_API_TOKEN`` to ``fake.token``; ``"none"`` sets nothing.
    """
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        and not k.startswith("KAGGLE_")
        and k not in ("VERBOSE", "VERBOSE_OUTPUT")
    }
    for sub in ("home", "config", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    proxy = f"http://127.0.0.1:{fake.port}"
    env.update(
        HOME=str(home / "home"),
        KAGGLE_CONFIG_DIR=str(home / "config"),
        TMPDIR=str(home / "tmp"),
        KAGGLE_API_ENVIRONMENT="LOCALHOST",
        HTTP_PROXY=proxy,
        http_proxy=proxy,
        NO_PROXY="",
        no_proxy="",
    )
    if credentials == "env":
        env.update(KAGGLE_USERNAME=fake.username, KAGGLE_KEY=fake.key)
    elif credentials == "json":
        config = home / "config" / "kaggle.json"
        config.write_text(json.dumps({"username": fake.username, "key": fake.key}))
        config.chmod(0o600)
        env.update(KAGGLE_USERNAME=fake.username)
    elif credentials == "token":
        assert fake.token, "set FakeKaggle.token"
        env.update(KAGGLE_API_TOKEN=fake.token)
    elif credentials != "none":
        raise ValueError(f"credentials must be env, json, token or none, got {credentials!r}")
    return env


def run_delivery(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m hpa_kit.delivery ARGS`` with ``env``; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "hpa_kit.delivery", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_wheel(folder: Path, filename: str, *, payload: bytes = b"") -> Path:
    """A small valid wheel named ``filename`` (``name-version-python-abi-platform.whl``):
    ``.dist-info`` METADATA, WHEEL (its tags from the name) and RECORD, plus ``payload`` as
    a data file, so that different payloads give different bytes."""
    name, version, python, abi, platform = filename[: -len(".whl")].split("-")
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{name}/payload.bin": payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: fake_kaggle\nRoot-Is-Purelib: false\n"
            + "".join(
                f"Tag: {p}-{a}-{t}\n"
                for p in python.split(".")
                for a in abi.split(".")
                for t in platform.split(".")
            )
        ).encode(),
    }
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    path = folder / filename
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        archive.writestr(f"{info}/RECORD", record)
    return path

"""Running the repository's notebooks in tests: a temporary kernelspec and nbclient."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import jupytext

__all__ = ["NOTEBOOKS", "make_kernelspec", "outputs_text", "run_notebook"]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def make_kernelspec(root: Path, python: str | Path, name: str = "hpa-test") -> Path:
    """Write ``root/kernels/<name>/kernel.json`` running ipykernel under ``python``.

    Pass ``root`` to :func:`run_notebook` (it becomes ``JUPYTER_PATH``). Returns ``root``.
    """
    spec = root / "kernels" / name
    spec.mkdir(parents=True, exist_ok=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": name, "language": "python"})
    )
    return root


def run_notebook(
    name: str,
    settings: Mapping[str, str],
    jupyter_path: Path,
    cwd: Path,
    *,
    kernel_name: str = "hpa-test",
    base_env: Mapping[str, str] | None = None,
):
    """Execute ``notebooks/<name>.py`` (read by jupytext) and return the executed notebook.

    The kernel gets ``base_env`` (default ``os.environ``) without any ``HPA_*`` variable,
    plus ``settings``; it runs in ``cwd``. Raises nbclient's CellExecutionError on failure.
    """
    from nbclient import NotebookClient

    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    base = os.environ if base_env is None else base_env
    env = {k: v for k, v in base.items() if not k.startswith("HPA_")}
    env.update(settings, JUPYTER_PATH=str(jupyter_path), PYTHONHASHSEED="0")
    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(jupyter_path)  # read when the kernelspec is looked up
    try:
        client = NotebookClient(
            nb, kernel_name=kernel_name, timeout=180, resources={"metadata": {"path": str(cwd)}}
        )
        client.execute(env=env)
    finally:
        if saved is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = saved
    return nb


def outputs_text(nb) -> str:
    """The stream text and plain-text results of every cell, joined."""
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(
                out.get("text", "") or json.dumps(out.get("data", {}).get("text/plain", ""))
            )
    return "\n".join(texts)

"""Progress bars that show only where someone watches them.

Every long job in hpa_kit reports progress through :func:`progress_bar`, a tqdm bar that is
drawn when the caller asked for one (``enabled``) *and* the output is interactive: standard
error is a terminal, or the code runs in a Jupyter kernel (notebooks, Kaggle, Colab). Written to
a file or a pipe, a bar would be a stream of carriage-return updates, so it stays silent there.
``HPA_KIT_PROGRESS=1`` forces bars on (``0`` forces them off), whatever the output is.

>>> bar = progress_bar(range(3), enabled=False)
>>> list(bar), bar.disable
([0, 1, 2], True)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["PROGRESS_ENV", "interactive", "progress_bar"]

PROGRESS_ENV = "HPA_KIT_PROGRESS"


def interactive() -> bool:
    """True when a bar would be seen: ``HPA_KIT_PROGRESS`` says so, or stderr is a terminal,
    or a Jupyter kernel runs the code."""
    forced = os.environ.get(PROGRESS_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any):
    """A ``tqdm.auto.tqdm`` bar over ``iterable`` (or a manual one with ``total=``), disabled
    unless ``enabled`` and :func:`interactive`. Extra keywords go to tqdm."""
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (enabled and interactive()), **kwargs)

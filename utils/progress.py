"""Progress bars that stay readable: live in a terminal or a notebook with widgets, silent elsewhere.

Piped output (a log file, CI) and a kernel started with ``TQDM_DISABLE=1`` (the headless notebook runner's, whose
saved widgets would read "0%|") get no bar at all; the per-epoch lines of the training log carry the same numbers.
"""
import os
import sys

from tqdm import tqdm as text_tqdm


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401  (tqdm.notebook needs it; without it tqdm warns and draws text)
        return True
    except ImportError:
        return False


def bars_enabled() -> bool:
    """True in a terminal or a notebook with widgets (Colab); False in a pipe, a file, or a headless kernel,
    where every redraw of a text bar would be stored as another line of output; False with ``TQDM_DISABLE`` set."""
    if os.environ.get("TQDM_DISABLE", "") not in ("", "0"):
        return False
    return _has_widgets() if _in_notebook() else sys.stderr.isatty()


def progress(iterable, **kwargs):
    """A tqdm bar over ``iterable``: widget in Jupyter (if ipywidgets is there), text in a terminal, none in a pipe."""
    enabled = bars_enabled()
    if enabled and _in_notebook():
        from tqdm.notebook import tqdm as notebook_tqdm
        return notebook_tqdm(iterable, **kwargs)
    return text_tqdm(iterable, disable=not enabled, **kwargs)


def say(message: str) -> None:
    """Print a line without breaking a live bar."""
    text_tqdm.write(message)

"""``python -m assignments.app RUN_DIR``: a Gradio page to explore a trained run in the browser (``run.app()`` in
a notebook shows it inline).

Upload an image or pick one of the run's ten test images (one per class): the top-k classes with their
probabilities, Grad-CAM of the predicted (or any) class on a chosen layer at a chosen opacity, the image's
attention (S9's blocks, a ViT's class token), and the run's most confident mistakes. The model runs on the CPU by
default; the page is served on 127.0.0.1 unless ``--host`` says otherwise, with Gradio's analytics off, and shared
publicly only with ``--share``.
"""
from __future__ import annotations

import argparse
import atexit
import os
import sys
from pathlib import Path

import torch

from utils.checkpoint import CHECKPOINT

from .explore import RunFolderError, open_run
from .page import build, serve


def app(run, model=None, data_dir: str | None = None, host: str = "127.0.0.1", port: int | None = None,
        share: bool = False, device: str = "cpu", block: bool = False, model_name: str | None = None):
    """Serve the page for ``run`` (a :class:`assignments.run.Run` or a run folder). The model: ``model`` (an
    instance, or a class or factory called with no arguments), else ``model_name`` (``module:factory``, called
    with the arguments the run recorded), else what the run recorded. Returns the Gradio page (``.close()``
    stops it)."""
    if isinstance(run, (str, os.PathLike)):
        out, gallery_size = Path(run), 10
    else:  # a Run: its folder and gallery size (run.app() passes its trained model)
        out, gallery_size = run.out, run.config.gallery
    page = build(open_run(out, model, data_dir, device, model_name), gallery_size)
    return serve(page, host, port, share, block)


def port_number(text: str) -> int:
    """A TCP port from the command line, 1 to 65535 (argparse says the error in one line)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535; got {text!r}")
    return port


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m assignments.app", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help=f"a run's out folder (with {CHECKPOINT})")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=None,
                   help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs (default cpu)")
    p.add_argument("--data-dir", default=None, help="the run's data, if not where it trained")
    p.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="your model's class or factory (imported from MODULE; called with the arguments the run "
                        "recorded); default: what the run recorded, imported only from models/, timm or "
                        "torchvision.models")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA GPU here; use --device cpu (the page runs one image at a time)",
              file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: --host {args.host} serves the page to every machine that can reach this one; it has no "
              f"password", file=sys.stderr)
    try:
        app(args.run_dir, data_dir=args.data_dir, host=args.host, port=args.port, share=args.share,
            device=args.device, block=True, model_name=args.model)
    except RunFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the port is taken: Gradio's threads would keep the process alive
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__} (--host {args.host}, --port "
              f"{args.port or 'default'})", file=sys.stderr)
        sys.stderr.flush()
        atexit._run_exitfuncs()
        os._exit(1)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

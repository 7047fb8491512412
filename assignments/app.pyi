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
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from utils.data import CLASSES

from .explore import Explorer, RunFolderError, open_run
from .explore_plots import enlarge, overlay

PREDICTED = "the predicted class"
# a 32x32 upload shown at the box's size, pixels kept sharp (browsers draw small images at their own size)
CSS = "#image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


def analyze(ex: Explorer, image, k: int, cam_on: bool, layer: str | None, opacity: float, cam_class: str):
    """What the page shows for one image: ({class: p} of the top k, the Grad-CAM overlay or None, a note, the
    attention figure or None)."""
    if image is None:
        return None, None, "Upload an image or pick an example.", None
    if isinstance(image, Unreadable):
        return None, None, f"**Cannot use this input:** {image}", None
    try:
        image32, note = ex.prepare(image)
        top = ex.top_k(image32, int(k))
    except ValueError as e:  # an image it cannot read, a k out of range: said on the page
        return None, None, f"**Cannot use this input:** {e}", None
    lines = [f"**{top[0][0]}** (p = {top[0][1]:.2f})"] + ([f"Input {note}."] if note else [])
    cam = None
    if cam_on:
        if not ex.layers:
            lines.append(f"Grad-CAM: {type(ex.model).__name__} has no feature map or token grid to read.")
        else:
            target = top[0][0] if cam_class in (None, PREDICTED) else cam_class  # a name: checked by ex.gradcam
            cam = overlay(image32, ex.gradcam(image32, target, layer), opacity)
            lines.append(f"Grad-CAM of **{target}** at `{layer or ex.default_layer}`.")
    return dict(top), cam, "  \n".join(lines), ex.attention(image32)


def gallery(ex: Explorer, n: int) -> list[tuple]:
    """The run's ``n`` most confident mistakes, enlarged, each with "actual / predicted p=..."."""
    return [(enlarge(img), caption) for img, caption in ex.mistakes(int(n))]


class Unreadable(str):
    """An upload that is not an image: the reason, shown on the page instead of a result."""


def image_input(gr, **kwargs):
    """A ``gr.Image`` (PIL) whose upload Pillow cannot read arrives as :class:`Unreadable` (Gradio itself would
    print a traceback in the terminal and show an empty error on the page)."""
    from PIL import Image
from gradio.events import Dependency

    class ImageInput(gr.Image):
        def get_block_name(self) -> str:  # drawn by the browser as the image box it is
            return "image"

        def preprocess(self, payload):
            try:
                return super().preprocess(payload)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                return Unreadable(f"not an image Pillow can read ({reason})")

    return ImageInput(type="pil", **kwargs)


def build(ex: Explorer, gallery_size: int = 10):
    """The Gradio page (``gr.Blocks``) over ``ex``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    from PIL import Image

    if ex.layers:  # the first Grad-CAM imports pytorch-grad-cam (seconds): before the page is served
        ex.gradcam(ex.examples()[0], 0)
    examples = Path(tempfile.mkdtemp(prefix="cifar10-examples-"))
    atexit.register(shutil.rmtree, examples, ignore_errors=True)  # the page's example files go with the process
    paths = []
    for c, img in zip(CLASSES, ex.examples()):
        Image.fromarray(img).resize((128, 128), Image.NEAREST).save(examples / f"{c}.png")
        paths.append([str(examples / f"{c}.png")])
    acc = f", test accuracy {ex.test_acc:.2f}%" if ex.test_acc is not None else ""
    import inspect

    css_in_blocks = "css" not in inspect.signature(gr.Blocks.launch).parameters  # Gradio < 6 takes it here
    with gr.Blocks(title=f"{ex.name}: explore the model", analytics_enabled=False,
                   **({"css": CSS} if css_in_blocks else {})) as page:
        gr.Markdown(f"## {ex.name}: {type(ex.model).__name__}\n{ex.epochs_done} epochs trained{acc}. "
                    f"Images are resized to 32x32, the size the model was trained on.")
        with gr.Row():
            with gr.Column():
                image = image_input(gr, label="image", elem_id="image", sources=["upload"], height=280)
                gr.Examples(paths, inputs=[image], label="one test image per class")
                k = gr.Slider(1, len(CLASSES), value=3, step=1, label="top classes", elem_id="k")
                cam_on = gr.Checkbox(label="Grad-CAM", value=False, elem_id="cam")
                layer = gr.Dropdown(ex.layers, value=ex.default_layer, label="Grad-CAM layer")
                cam_class = gr.Dropdown([PREDICTED, *CLASSES], value=PREDICTED, label="Grad-CAM of")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="overlay opacity")
            with gr.Column():
                label = gr.Label(label="prediction", elem_id="prediction")
                note = gr.Markdown(elem_id="note")
                cam = gr.Image(label="Grad-CAM", elem_id="cam-image", interactive=False, height=280)
                attention = gr.Plot(label="this image's attention") if ex.attention_kind else gr.State()
        inputs = [image, k, cam_on, layer, opacity, cam_class]
        for control in inputs:
            control.change(lambda *a: analyze(ex, *a), inputs, [label, cam, note, attention])
        gr.Markdown("### The run's most confident mistakes (actual / predicted)")
        n = gr.Slider(1, 100, value=gallery_size, step=1, label="how many")
        shown = gr.Gallery(value=gallery(ex, gallery_size), columns=5, label="misclassified", elem_id="gallery")
        n.change(lambda m: gallery(ex, m), [n], [shown])
    return page


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
    import inspect

    css = {"css": CSS} if "css" in inspect.signature(page.launch).parameters else {}  # Gradio 6 takes it here
    page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=True, **css)
    return page


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
    p.add_argument("run_dir", help="a run's out folder (with checkpoint.pt)")
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
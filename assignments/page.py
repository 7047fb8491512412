"""The Gradio page over one :class:`assignments.explorer.Explorer`: upload an image or pick one of ten test
images (one per class), the top-k classes (k at most 10), Grad-CAM of the predicted (or any) class on a chosen
layer at a chosen opacity, the image's attention (S9's blocks, a ViT's class token), and the run's most
confident mistakes (how many, with or without Grad-CAM). ``assignments.app`` serves it for a run folder; a Space
built by ``assignments.space`` serves the same page.
"""
from __future__ import annotations

import atexit
import contextlib
import inspect
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from utils.images import CLASSES

from .explore_plots import enlarge, overlay
from .explorer import Explorer

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


def gallery(ex: Explorer, show: bool, n: int, cam_on: bool = False, layer: str | None = None,
            opacity: float = 0.5) -> list[tuple]:
    """The run's ``n`` most confident mistakes, enlarged, each with "actual / predicted p=..." (none unless
    ``show``); with ``cam_on``, each overlaid with Grad-CAM of its predicted class at ``layer``."""
    if not show:
        return []
    shown = []
    for img, caption in ex.mistakes(int(n)):
        if cam_on and ex.layers:
            predicted = ex.top_k(img, 1)[0][0]
            shown.append((overlay(img, ex.gradcam(img, predicted, layer), opacity), f"{caption}, Grad-CAM"))
        else:
            shown.append((enlarge(img), caption))
    return shown


class Unreadable(str):
    """An upload that is not an image: the reason, shown on the page instead of a result."""


def image_input(gr, **kwargs):
    """A ``gr.Image`` (PIL) whose upload Pillow cannot read arrives as :class:`Unreadable` (Gradio itself would
    print a traceback in the terminal and show an empty error on the page). The instance's ``preprocess`` is
    wrapped: a subclass of a Gradio component makes Gradio write a ``.pyi`` file beside this module."""
    from PIL import Image

    image = gr.Image(type="pil", **kwargs)
    read = image.preprocess

    def preprocess(payload):
        try:
            return read(payload)
        except Image.UnidentifiedImageError:
            return Unreadable("the upload is not an image Pillow can read")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # truncated, too large
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            return Unreadable(f"the upload cannot be read as an image: {reason}")

    image.preprocess = preprocess
    return image


def build(ex: Explorer, gallery_size: int = 10, max_mistakes: int = 100, example_files: list[str] | None = None):
    """The Gradio page (``gr.Blocks``) over ``ex``: ``gallery_size`` mistakes shown at first, at most
    ``max_mistakes``; the examples are ``example_files`` (default: ``ex.examples()`` written to a temporary
    folder that goes with the process)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    from PIL import Image

    if ex.layers:  # the first Grad-CAM imports pytorch-grad-cam (seconds): before the page is served
        ex.gradcam(ex.examples()[0], 0)
    if example_files is None:
        folder = Path(tempfile.mkdtemp(prefix="cifar10-examples-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the page's example files go with the process
        example_files = []
        for c, img in zip(CLASSES, ex.examples()):
            Image.fromarray(img).save(folder / f"{c}.png")  # the test image itself: its answer is the run's
            example_files.append(str(folder / f"{c}.png"))
    acc = f", test accuracy {ex.test_acc:.2f}%" if ex.test_acc is not None else ""
    css_in_blocks = "css" not in inspect.signature(gr.Blocks.launch).parameters  # Gradio < 6 takes it here
    with gr.Blocks(title=f"{ex.name}: explore the model", analytics_enabled=False,
                   **({"css": CSS} if css_in_blocks else {})) as page:
        gr.Markdown(f"## {ex.name}: {type(ex.model).__name__}\n{ex.epochs_done} epochs trained{acc}. "
                    f"Images are resized to 32x32, the size the model was trained on.")
        with gr.Row():
            with gr.Column():
                image = image_input(gr, label="image", elem_id="image", sources=["upload"], height=280)
                gr.Examples([[f] for f in example_files], inputs=[image], label="one test image per class")
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
        for i, control in enumerate(inputs):  # one endpoint for clients (gradio_client: api_name="/analyze")
            control.change(lambda *a: analyze(ex, *a), inputs, [label, cam, note, attention],
                           api_name="analyze" if i == 0 else None)
        gr.Markdown("### The run's most confident mistakes (actual / predicted)")
        with gr.Row():
            show = gr.Checkbox(label="show them", value=True, elem_id="show-mistakes")
            n = gr.Slider(1, max_mistakes, value=min(gallery_size, max_mistakes), step=1, label="how many")
        shown = gr.Gallery(value=gallery(ex, True, min(gallery_size, max_mistakes)), columns=5,
                           label="misclassified (with Grad-CAM of the predicted class when Grad-CAM is on)",
                           elem_id="gallery")
        for i, control in enumerate((show, n, cam_on, layer, opacity)):  # api_name="/mistakes"
            control.change(lambda *a: gallery(ex, *a), [show, n, cam_on, layer, opacity], [shown],
                           api_name="mistakes" if i == 0 else None)
    return page


def serve(page, host: str = "127.0.0.1", port: int | None = None, share: bool = False, block: bool = False):
    """Launch ``page`` on ``host``:``port`` (default: Gradio's, 7860 or the next free one) and print its address;
    with ``block``, until Ctrl-C (the KeyboardInterrupt reaches the caller once the server is closed). Returns
    the page."""
    css = {"css": CSS} if "css" in inspect.signature(page.launch).parameters else {}  # Gradio 6 takes it here
    colab = "google.colab" in sys.modules and not block and not share  # a browser reaches it through Colab's proxy
    with contextlib.redirect_stdout(io.StringIO()):  # Gradio's own lines (a share link it could not make: 8)
        page.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True,
                    **({"inline": False} if colab else {}), **css)
    if colab:
        from google.colab import output

        output.serve_kernel_port_as_iframe(page.server_port, height=1100)
    print(f"The page: {page.local_url} (Ctrl-C stops it)" if block else f"The page: {page.local_url}")
    if share:
        print(f"Public link: {page.share_url}" if page.share_url else
              "note: --share: no public link (Gradio's share server cannot be reached from here); the page is "
              "served on this machine only", file=sys.stdout if page.share_url else sys.stderr)
    if block:  # until Ctrl-C (KeyboardInterrupt reaches the caller once the server is closed)
        try:
            while page.is_running:
                time.sleep(0.2)
        finally:  # requests cut short by the stop are not errors: uvicorn would print each one's traceback
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
            page.close()
    return page



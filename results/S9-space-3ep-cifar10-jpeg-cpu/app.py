"""A Hugging Face Space for one CIFAR-10 model (this file is the Space's ``app.py``, written there by
``python -m assignments.space``): upload an image or pick one of ten test images, the top-k classes (k at most
10), Grad-CAM on a chosen layer at a chosen opacity, the image's attention, the run's most confident mistakes.

The model is built from ``config.json`` (its factory, imported from the source files copied into the Space or
from timm or torchvision, and its arguments) and given the weights in ``model.safetensors``, which holds tensors only: loading
it never unpickles anything. The page runs on the CPU, sends nothing anywhere (Gradio's analytics off) and
serves on ``GRADIO_SERVER_NAME``:``GRADIO_SERVER_PORT`` (a Space sets them; 127.0.0.1:7860 otherwise).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from assignments.explorer import Explorer  # noqa: E402
from assignments.page import build, serve  # noqa: E402

HERE = Path(__file__).resolve().parent
LIBRARIES = ("timm", "torchvision.models")  # installed from requirements.txt
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def factory(name: str):
    """The class or function ``module:qualname`` names, imported only from a module whose file is in this Space
    (the model's source, copied here) or from timm or torchvision.models."""
    module, _, qualname = name.partition(":")
    if not (NAME.fullmatch(module) and NAME.fullmatch(qualname)):
        raise ValueError(f"config.json: model factory {name!r} is not module:name")
    if not any(module == m or module.startswith(m + ".") for m in LIBRARIES):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or HERE not in Path(spec.origin).resolve().parents:
            raise ValueError(f"config.json: model factory {name!r} is neither in this Space nor in timm or "
                             f"torchvision.models")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def load_model(folder: Path = HERE):
    """The model config.json describes, with the weights of ``model.safetensors``, in eval mode on the CPU."""
    from safetensors.torch import load_model as load_weights

    config = json.loads((folder / "config.json").read_text())
    spec = config["model"]
    model = factory(spec["factory"])(*spec["args"], **spec["kwargs"])
    load_weights(model, str(folder / "model.safetensors"))  # tensors only; strict: every weight must fit
    return model.eval(), config


def open_space(folder: Path = HERE) -> Explorer:
    """The :class:`Explorer` of the Space in ``folder``: its model, the run's mean/std, Grad-CAM layers, ten
    example images and its most confident mistakes (PNG files listed in config.json)."""
    model, config = load_model(folder)
    rgb = lambda path: np.asarray(Image.open(folder / path).convert("RGB"))  # noqa: E731  (32, 32, 3) uint8
    return Explorer(model, config["name"], tuple(config["mean"]), tuple(config["std"]), config["log_probs"],
                    config["layers"], config["default_layer"], config["epochs"], config["test_acc"],
                    [rgb(f) for f in config["examples"]], [(rgb(m["file"]), m["caption"]) for m in config["mistakes"]])


def main() -> None:
    ex = open_space()
    config = json.loads((HERE / "config.json").read_text())
    page = build(ex, gallery_size=min(10, len(ex.known_mistakes)), max_mistakes=max(1, len(ex.known_mistakes)),
                 example_files=[str(HERE / f) for f in config["examples"]])
    try:
        serve(page, host=None, port=None, block=True)  # None: GRADIO_SERVER_NAME / _PORT, else Gradio's defaults
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

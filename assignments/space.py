"""``python -m assignments.space RUN_DIR DEST``: a trained run as a Hugging Face Space (Gradio), with no training
code in it.

DEST gets ``app.py`` (the page of ``python -m assignments.app``), the model's own source files and only the
inference code the page needs, ``model.safetensors`` (weights only), ``config.json`` (how to build the model, the
classes, mean/std, Grad-CAM layers, the run's metrics), ten example images (one per class of the run's test
split), the run's most confident mistakes as PNGs, ``requirements.txt`` pinned to the versions installed here,
and a ``README.md`` with the Spaces front-matter and a model card. DEST is written whole or not at all.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from PIL import Image

from utils.checkpoint import CHECKPOINT
from utils.images import CLASSES

from .explore import RunExplorer, RunFolderError, open_run
from .model_source import ModelSourceError, describe
from .recipes import recipe as builtin_recipe

REPO = Path(__file__).resolve().parents[1]
# the page and what it calls: prediction, Grad-CAM, attention; nothing that trains, loads data or reads a checkpoint
INFERENCE = ("utils/images.py", "utils/checks.py", "utils/gradcam.py", "utils/model_attention.py",
             "utils/attention.py", "utils/softmax_attention.py", "utils/vit_attention.py",
             "assignments/explorer.py", "assignments/explore_plots.py", "assignments/page.py")
PACKAGES = {"utils": "Inference code of the CIFAR-10 lab: images, Grad-CAM, attention.",
            "assignments": "The page of the CIFAR-10 lab's explorer and what it shows."}
REQUIREMENTS = ("torch", "numpy", "pillow", "matplotlib", "gradio", "grad-cam", "safetensors")
FIGURES = ("curves.png", "misclassified.png")


class SpaceError(ValueError):
    """A Space that cannot be written; the message is one line."""


def model_record(out: Path, model_name: str | None) -> dict:
    """How the Space rebuilds the run's model: ``{"factory": "module:qualname", "args", "kwargs"}``."""
    from utils.checkpoint import load_run_checkpoint

    extra = load_run_checkpoint(out / CHECKPOINT)["extra"]
    config, recorded = extra.get("config") or {}, extra.get("model_source")
    if model_name is None and config.get("assignment"):
        recorded = describe(builtin_recipe(config["assignment"], config.get("variant", "spec")).model)
    if model_name is not None:
        same = recorded is not None and recorded.get("factory") == model_name
        return {"factory": model_name, "args": recorded["args"] if same else [],
                "kwargs": recorded["kwargs"] if same else {}}
    if recorded is None:
        raise SpaceError(f"{out}: the run did not record how to build its model: pass --model module:factory")
    return recorded


def source_files(factory: str) -> list[tuple[Path, str]]:
    """The files that define ``factory``'s module and the local modules it imports, as (file, path in the
    Space); none for timm or torchvision (installed from requirements.txt)."""
    module = factory.partition(":")[0]
    top = module.split(".")[0]
    if top in ("timm", "torchvision"):
        return []
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise SpaceError(f"model {factory!r}: no Python source file to copy for {module}")
    root = Path(spec.origin).resolve().parents[module.count(".")]  # the folder holding the top package/module
    found, todo = {}, [module]
    while todo:
        name = todo.pop()
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a name imported from a module (a class), not a module
            continue
        if name in found or spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        path = Path(spec.origin).resolve()
        if root not in path.parents:  # an installed package: requirements.txt
            continue
        found[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                todo += [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
    files = [(p, str(p.relative_to(root))) for n, p in found.items() if p.name != "__init__.py"]
    return sorted(files, key=lambda f: f[1])


def pinned(model_factory: str) -> list[str]:
    """requirements.txt: the versions installed here (torch without its local +cpu/+cuXXX tag)."""
    names = list(REQUIREMENTS) + [n for n in ("timm", "torchvision") if model_factory.startswith(n)]
    return [f"{n}=={metadata.version(n).split('+')[0]}" for n in names]


def accuracy_line(metrics: dict, seed_runs: list[Path]) -> str:
    """Test accuracy of the run, or mean +- std over it and ``seed_runs`` (the same recipe, other seeds)."""
    accs = [metrics["final_test_acc"]] + [json.loads((r / "metrics.json").read_text())["final_test_acc"]
                                          for r in seed_runs]
    if len(accs) == 1:
        return f"{accs[0]:.2f}%"
    return (f"{statistics.mean(accs):.2f}% +- {statistics.stdev(accs):.2f} (mean +- std of {len(accs)} seeds: "
            f"{', '.join(f'{a:.2f}' for a in accs)})")


def readme(ex: RunExplorer, metrics: dict, accuracy: str, title: str, license_: str, figures: list[str]) -> str:
    """The Space's README.md: the front-matter Spaces reads, then a model card from metrics.json."""
    gradio = metadata.version("gradio")
    recipe = metrics.get("recipe") or {}
    data = str(metrics.get("data", "CIFAR-10")).split(" in ")[0]  # the data's name, not a path on the machine
    epochs = metrics.get("epochs", ex.epochs_done)
    rows = [("test accuracy", f"{accuracy} after {epochs} epoch{'' if epochs == 1 else 's'}"),
            ("model", f"{metrics.get('model', type(ex.model).__name__)}, {metrics.get('params', 0):,} parameters"),
            ("recipe", f"{recipe.get('name', ex.name)}: {recipe.get('optimizer', '?')}, one-cycle peak LR "
                       f"{metrics.get('max_lr', 0):.3g}, batch {recipe.get('batch_size', '?')}"),
            ("data", f"{data}, {len(ex.test_split):,} test images"), ("device", metrics.get("device", "?")),
            ("precision", metrics.get("precision", "?")), ("date", metrics.get("date", "?"))]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    commands = "\n".join(metrics.get("commands") or [])
    shown = "\n\n".join(f"![{f[:-4]}]({f})" for f in figures)
    return f"""---
title: {json.dumps(title, ensure_ascii=False)}
emoji: 🖼️
colorFrom: indigo
colorTo: green
sdk: gradio
sdk_version: {gradio}
app_file: app.py
pinned: false
license: {license_}
---

# {title}

Upload an image or pick one of ten CIFAR-10 test images: the model's top classes (at most 10), Grad-CAM of
the predicted (or any) class on a layer you choose, at the opacity you choose, the image's attention where the
model has it, and the run's most confident mistakes (how many, with or without Grad-CAM). Images are resized to
32x32, the size the model was trained on; the classes are {", ".join(CLASSES)}.

## The model

| | |
|---|---|
{table}

Trained with:

```
{commands}
```

{shown}

## Files

`app.py` (the page), `models/` (the model's source), `assignments/` and `utils/` (prediction, Grad-CAM and
attention, no training code), `model.safetensors` (the weights: tensors only, never unpickled), `config.json`
(how to build the model, mean/std, Grad-CAM layers, the run's metrics), `examples/` and `mistakes/` (PNGs).

## Run it, upload it

```
pip install -r requirements.txt
python app.py                      # http://127.0.0.1:7860
huggingface-cli upload USER/SPACE . --repo-type=space     # after huggingface-cli login
```

or create the Space on huggingface.co (SDK: Gradio), clone it, copy these files in and `git push`
(`.gitattributes` sends the PNGs and the weights through Git LFS). No token is stored in these files.
"""


def write_space(ex: RunExplorer, record: dict, out: Path, stage: Path, n_mistakes: int, title: str,
                license_: str, seed_runs: list[Path]) -> None:
    """Every file of the Space, into the empty folder ``stage``."""
    from safetensors.torch import save_model

    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    for rel in INFERENCE:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, stage / rel)
    for package, doc in PACKAGES.items():
        (stage / package / "__init__.py").write_text(f'"""{doc}"""\n')
    for path, rel in source_files(record["factory"]):
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, stage / rel)
        init = stage / Path(rel).parent / "__init__.py"
        if Path(rel).parent != Path(".") and not init.exists():
            init.write_text('"""The model\'s source, copied from the repository it was trained in."""\n')
    shutil.copy2(REPO / "assignments" / "space_app.py", stage / "app.py")
    save_model(ex.model, str(stage / "model.safetensors"))
    (stage / "examples").mkdir()
    (stage / "mistakes").mkdir()
    examples = []
    for c, img in zip(CLASSES, ex.examples()):
        Image.fromarray(img).save(stage / "examples" / f"{c}.png")
        examples.append(f"examples/{c}.png")
    mistakes = []
    for i, (img, caption) in enumerate(ex.mistakes(n_mistakes), 1):
        Image.fromarray(img).save(stage / "mistakes" / f"{i:03d}.png")
        mistakes.append({"file": f"mistakes/{i:03d}.png", "caption": caption})
    figures = [f for f in FIGURES if (out / f).is_file()]
    for f in figures:
        shutil.copy2(out / f, stage / f)
    keep = ("name", "model", "params", "data", "device", "precision", "epochs", "final_test_acc",
            "best_test_acc", "max_lr", "recipe", "commands", "date", "history")
    config = {"name": ex.name, "model": record, "classes": list(CLASSES), "image_size": 32,
              "mean": list(ex.mean), "std": list(ex.std), "log_probs": ex.log_probs, "layers": ex.layers,
              "default_layer": ex.default_layer, "epochs": ex.epochs_done, "test_acc": ex.test_acc,
              "examples": examples, "mistakes": mistakes,
              "metrics": {k: metrics[k] for k in keep if k in metrics}}
    (stage / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (stage / "requirements.txt").write_text("\n".join(pinned(record["factory"])) + "\n")
    (stage / ".gitattributes").write_text("*.png filter=lfs diff=lfs merge=lfs -text\n"
                                          "*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    accuracy = accuracy_line(metrics, seed_runs) if "final_test_acc" in metrics else f"{ex.test_acc:.2f}%"
    (stage / "README.md").write_text(readme(ex, metrics, accuracy, title, license_, figures))
    umask = os.umask(0)
    os.umask(umask)
    for path in [stage, *stage.rglob("*")]:  # mkdtemp's folder and the weights' file are private otherwise
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def check_space(stage: Path, ex: RunExplorer) -> None:
    """The Space's model, built from its own config.json and model.safetensors, answers as the run's model on
    the ten examples (a factory that builds something else is caught here, before DEST is written)."""
    spec = json.loads((stage / "config.json").read_text())["model"]
    from safetensors.torch import load_model

    from .model_source import resolve

    built = resolve(spec["factory"], spec["factory"].partition(":")[0])(*spec["args"], **spec["kwargs"])
    load_model(built, str(stage / "model.safetensors"))
    x = torch.cat([ex.tensor(img) for img in ex.examples()])
    with torch.no_grad():
        same = torch.allclose(built.eval()(x).float(), ex.model(x.to(ex.device)).float().cpu(), atol=1e-5)
    if not same:
        raise SpaceError(f"the model {spec['factory']} built from config.json does not answer as the run's model")


def build_space(run_dir: str | Path, dest: str | Path, data_dir: str | None = None, model_name: str | None = None,
                overwrite: bool = False, mistakes: int = 40, title: str | None = None, license_: str = "mit",
                seed_runs: list[str] = ()) -> Path:
    """Write the Space of the run in ``run_dir`` to ``dest`` (see the module's docstring); returns ``dest``.
    Anything wrong is a :class:`SpaceError` or :class:`RunFolderError` of one line, and ``dest`` is unchanged."""
    out, dest = Path(run_dir), Path(dest).absolute()
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not overwrite)):
        what = "a file" if not dest.is_dir() else "not empty"
        raise SpaceError(f"{dest} is {what}: choose another DEST" + ("" if what == "a file" else " or pass --overwrite"))
    if dest.resolve() == out.resolve() or out.resolve() in dest.resolve().parents and overwrite:
        raise SpaceError(f"{dest}: the Space cannot replace the run folder or a folder inside it")
    if not 1 <= mistakes <= 100:
        raise SpaceError(f"--mistakes must be 1 to 100; got {mistakes}")
    if title is not None and not re.fullmatch(r"[^\x00-\x1f]{1,60}", title):
        raise SpaceError(f"--title must be one line of 1 to 60 characters; got {title!r}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license_):
        raise SpaceError(f"--license must be a license id such as mit or apache-2.0; got {license_!r}")
    seeds = [Path(r) for r in seed_runs]
    for r in seeds:
        if not (r / "metrics.json").is_file():
            raise SpaceError(f"--seed-runs: {r} has no metrics.json")
    ex = open_run(out, data_dir=data_dir, model_name=model_name)
    try:
        record = model_record(out, model_name)
    except (ModelSourceError, ValueError) as e:
        raise SpaceError(str(e)) from None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as e:
        raise SpaceError(f"{dest}: cannot write there ({e.strerror or e})") from None
    old = None
    try:
        write_space(ex, record, out, stage, mistakes, title or f"CIFAR-10 {ex.name}", license_, seeds)
        check_space(stage, ex)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            dest.rename(old / "space")
        stage.rename(dest)
    except OSError as e:
        raise SpaceError(f"{dest}: cannot write the Space ({e.strerror or e}); nothing was changed") from None
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return dest



def share_run(out: Path, dest: str | Path | None = None, **options) -> Path | None:
    """:func:`build_space` for a run's out folder (default DEST ``<out>-space``), then the Space zipped and, in Colab,
    downloaded (:func:`utils.keep.keep_run`). A run it cannot share is said in one line and gives None."""
    from utils.keep import keep_run

    try:
        folder = build_space(out, dest or out.with_name(out.name + "-space"), **options)
    except (SpaceError, RunFolderError) as e:
        print(f"Space not written: {e}")
        return None
    print(f"The Space is in {folder}/ (upload it as its README says)")
    return keep_run(folder, what="the Space")

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m assignments.space", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help=f"a run's out folder (with {CHECKPOINT})")
    p.add_argument("dest", help="the folder to write the Space into (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace DEST if it is not empty")
    p.add_argument("--data-dir", default=None, help="the run's data, if not where it trained (for the examples)")
    p.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="your model's class or factory, if the run could not record it")
    p.add_argument("--mistakes", type=int, default=40, help="how many of the run's mistakes the Space keeps (1-100)")
    p.add_argument("--title", default=None, help="the Space's title (default: CIFAR-10 and the recipe's name)")
    p.add_argument("--license", default="mit", help="the license named in the Space's README (default mit)")
    p.add_argument("--seed-runs", nargs="*", default=[], metavar="RUN_DIR",
                   help="runs of the same recipe with other seeds: the card gives mean +- std")
    args = p.parse_args(argv)
    try:
        dest = build_space(args.run_dir, args.dest, args.data_dir, args.model, args.overwrite, args.mistakes,
                           args.title, args.license, args.seed_runs)
    except (SpaceError, RunFolderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"The Space is in {dest}/: try it with `cd {dest} && python app.py`; upload it with "
          f"`huggingface-cli upload USER/SPACE {dest} --repo-type=space`")
    return 0


if __name__ == "__main__":
    sys.exit(main())

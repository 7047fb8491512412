"""``python -m assignments.space``: a run becomes a Space that works on its own (a fresh virtual environment with
only the Space's requirements.txt, the repository not importable) and answers as the run's model; its weights
load without unpickling; bad input is one line and leaves DEST as it was."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import torch

from assignments.explore import open_run
from assignments.run import Run
from browser import _free_port, page_check

pytestmark = pytest.mark.slow  # end-to-end: runs, a virtual environment, servers, a browser

REPO = Path(__file__).resolve().parents[1]
TRAINING = ("import pickle", "torch.load", "optimizer", "DataLoader", "def fit", "Doctor", "range_test",
            "lr_finder", "load_cifar10")
MYNET = '''"""A student's model in a module of its own."""
from torch import nn


class MyNet(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))
'''


@pytest.fixture(scope="module")
def s9_run(folder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("space") / "S9"
    run = Run(assignment="S9", data_dir=str(folder_dir), epochs=1, batch_size=32, lr="3e-3", device="cpu",
              out=str(out), tensorboard=False)
    assert run.run_all() == 0
    return run


@pytest.fixture(scope="module")
def space_python(tmp_path_factory):
    """A fresh virtual environment's python (no site packages of this one), given only a Space's
    requirements.txt (those of an S9 Space: the same for every built-in recipe)."""
    where = tmp_path_factory.mktemp("venv")
    if shutil.disk_usage(where).free < 10 * 2 ** 30:
        pytest.skip("a fresh environment with torch needs about 7 GB of disk")
    from assignments.space import pinned

    (where / "requirements.txt").write_text("\n".join(pinned("models.model9:TransformerUltimus")) + "\n")
    venv.create(where / "env", with_pip=True)
    python = where / "env" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                    str(where / "requirements.txt")], check=True, timeout=1500, capture_output=True)
    return python


def space(args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "assignments.space", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def serve_space(python: Path, folder: Path):
    """``python app.py`` in the Space folder with nothing of this repository importable: (process, url)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH="", GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    p = subprocess.Popen([str(python), "app.py"], cwd=folder, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    assert first.startswith(f"The page: http://127.0.0.1:{port}/"), (first, p.stderr.read() if p.poll() else "")
    return p, f"http://127.0.0.1:{port}/"


def test_a_space_runs_alone_and_answers_as_the_run_s_model(s9_run, space_python, tmp_path):
    from gradio_client import Client, handle_file

    dest = tmp_path / "space"
    p = space([s9_run.out, dest, "--mistakes", "12"])
    assert p.returncode == 0 and p.stderr == "", p.stderr
    files = {str(f.relative_to(dest)) for f in dest.rglob("*") if f.is_file()}
    assert {"app.py", "model.safetensors", "config.json", "requirements.txt", "README.md", "models/model9.py",
            "models/transformer_ultimus.py", "examples/cat.png", "mistakes/012.png"} <= files
    assert len([f for f in files if f.startswith("examples/")]) == 10
    for f in dest.rglob("*.py"):  # inference only
        assert not [w for w in TRAINING if w in f.read_text()], f
    readme = (dest / "README.md").read_text()
    assert readme.startswith('---\ntitle: "CIFAR-10 S9 (spec)"\n') and "\nsdk: gradio\n" in readme and "\napp_file: app.py\n" in readme
    import gradio

    assert f"\nsdk_version: {gradio.__version__}\n" in readme and f"gradio=={gradio.__version__}" in \
        (dest / "requirements.txt").read_text()
    accuracy = json.loads((s9_run.out / "metrics.json").read_text())["final_test_acc"]
    assert f"| test accuracy | {accuracy:.2f}% after 1 epoch |" in readme
    assert (dest / "requirements.txt").read_text() == (space_python.parents[2] / "requirements.txt").read_text()

    env = dict(os.environ, PYTHONPATH="")
    alone = subprocess.run([str(space_python), "-c", "import assignments.run"], cwd=dest, env=env,
                           capture_output=True, text=True)
    assert "No module named 'assignments.run'" in alone.stderr  # the repository is not there
    server, url = serve_space(space_python, dest)
    try:
        client = Client(url, verbose=False)
        ex = open_run(s9_run.out)
        cat = np.asarray(__import__("PIL.Image").Image.open(dest / "examples" / "cat.png").convert("RGB"))
        label, _, note, _ = client.predict(handle_file(str(dest / "examples" / "cat.png")), 3, False, None, 0.5,
                                           "the predicted class", api_name="/analyze")
        expected = ex.top_k(cat, 3)
        assert [c["label"] for c in label["confidences"]] == [c for c, _ in expected]
        assert np.allclose([c["confidence"] for c in label["confidences"]], [p for _, p in expected], atol=1e-6)
        with pytest.raises(Exception, match="greater than maximum value 10"):
            client.predict(handle_file(str(dest / "examples" / "cat.png")), 11, False, None, 0.5,
                           "the predicted class", api_name="/analyze")
        cams = []
        for layer in (ex.layers[0], ex.default_layer):
            _, cam, note, _ = client.predict(handle_file(str(dest / "examples" / "cat.png")), 1, True, layer, 0.6,
                                             "the predicted class", api_name="/analyze")
            assert f"at `{layer}`" in note
            cams.append(np.asarray(__import__("PIL.Image").Image.open(cam)))
        assert cams[0].shape == cams[1].shape == (256, 256, 3) and not np.array_equal(*cams)
        shown = client.predict(True, 5, False, None, 0.5, api_name="/mistakes")
        assert [s["caption"] for s in shown] == [c for _, c in ex.mistakes(5)]
        assert client.predict(False, 5, False, None, 0.5, api_name="/mistakes") == []
        seen = page_check(url, dest / "examples" / "ship.png", tmp_path / "space.png")
        assert "Grad-CAM of" in seen["note"] and "Error" not in seen["body"]
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)
    assert server.returncode == 0


def test_the_space_loads_tensors_only_and_a_pickle_in_their_place_runs_nothing(s9_run, tmp_path):
    dest = tmp_path / "space"
    assert space([s9_run.out, dest]).returncode == 0
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(dest / "model.safetensors", "wb") as f:
        pickle.dump({"weight": Payload()}, f)  # what torch.save would unpickle
    load = subprocess.run([sys.executable, "-c", "import app; app.load_model()"], cwd=dest,
                          env=dict(os.environ, PYTHONPATH=""), capture_output=True, text=True, timeout=300)
    assert load.returncode != 0 and "safetensors" in load.stderr.lower() and not marker.exists()


def test_a_student_s_own_model_is_copied_with_its_source_or_named_with_model(folder_dir, tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mynet.py").write_text(MYNET)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    import functools

    from mynet import MyNet
    from utils.recipe import Recipe

    runs = {}
    for name, model in (("recorded", functools.partial(MyNet, width=6)), ("lambda", lambda: MyNet(width=6))):
        runs[name] = Run(recipe=Recipe(f"mine-{name}", epochs=1, batch_size=32, model=model), data_dir=str(folder_dir),
                         device="cpu", lr="0.05", out=str(tmp_path / name), tensorboard=False)
        assert runs[name].run_all() == 0
    env_path = os.pathsep.join([str(tmp_path / "src"), str(REPO)])
    dest = tmp_path / "space-mine"
    ask = lambda *a: subprocess.run([sys.executable, "-m", "assignments.space", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=env_path))
    p = ask(runs["recorded"].out, dest)  # a module outside models/, timm and torchvision: only when named
    assert p.returncode == 1 and "pass --model mynet:MyNet if you trust it" in p.stderr and not dest.exists()
    p = ask(runs["recorded"].out, dest, "--model", "mynet:MyNet")
    assert p.returncode == 0, p.stderr
    assert (dest / "mynet.py").read_text() == MYNET
    config = json.loads((dest / "config.json").read_text())
    assert config["model"] == {"factory": "mynet:MyNet", "args": [], "kwargs": {"width": 6}}
    check = subprocess.run([sys.executable, "-c", "import app; m, _ = app.load_model(); print(type(m).__name__)"],
                           cwd=dest, env=dict(os.environ, PYTHONPATH=""), capture_output=True, text=True)
    assert check.stdout.strip() == "MyNet", check.stderr
    # a model the run could not record (a lambda): one line saying what to pass, then it works with --model
    lam = tmp_path / "space-lambda"
    p = ask(runs["lambda"].out, lam)
    assert p.returncode == 1 and "--model" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = ask(runs["lambda"].out, lam, "--model", "mynet:MyNet")
    assert p.returncode == 1 and "does not fit MyNet" in p.stderr  # width 8 by default: the weights say 6
    assert not lam.exists()


def test_bad_input_is_one_line_and_leaves_dest_as_it_was(s9_run, tmp_path):
    no_run = tmp_path / "empty-run"
    no_run.mkdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"model": {}, "optimizer": {}}, foreign / "checkpoint.pt")
    tampered = tmp_path / "tampered"
    shutil.copytree(s9_run.out, tampered)
    state = torch.load(tampered / "checkpoint.pt", weights_only=True)
    state["extra"]["config"]["assignment"] = "S99"
    torch.save(state, tampered / "checkpoint.pt")
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep me")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [([no_run, tmp_path / "d1"], "no checkpoint.pt"),
             ([foreign, tmp_path / "d2"], "checkpoint.pt"),
             ([tampered, tmp_path / "d3"], "assignment must be one of"),
             ([s9_run.out, full], "is not empty: choose another DEST or pass --overwrite"),
             ([s9_run.out, a_file], "is a file"),
             ([s9_run.out, a_file / "space"], "cannot write there"),
             ([s9_run.out, tmp_path / "d4", "--mistakes", "0"], "--mistakes must be 1 to 100"),
             ([s9_run.out, tmp_path / "d5", "--title", "x\nsdk: docker"], "--title must be one line"),
             ([s9_run.out, tmp_path / "d6", "--license", "MIT; rm"], "--license must be a license id")]
    for args, message in cases:
        p = space(args)
        assert p.returncode == 1 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
    assert (full / "mine.txt").read_text() == "keep me" and sorted(os.listdir(full)) == ["mine.txt"]
    assert a_file.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty-run", "foreign", "full", "tampered"]
    p = space([s9_run.out, full, "--overwrite"])  # asked for: replaced whole
    assert p.returncode == 0 and not (full / "mine.txt").exists() and (full / "app.py").is_file()
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]  # no partial or old folder left


def test_the_notebooks_space_cell_writes_and_zips_it_or_says_in_one_line_why_not(s9_run, tmp_path, capsys):
    import zipfile

    archive = s9_run.space(tmp_path / "shared")
    assert archive == tmp_path / "shared.zip" and (tmp_path / "shared" / "app.py").is_file()
    assert "shared/app.py" in zipfile.ZipFile(archive).namelist()
    assert s9_run.space(tmp_path / "shared") is None  # not empty: nothing replaced
    said = capsys.readouterr().out.strip().splitlines()
    assert said[-1].startswith("Space not written: ") and said[-1].endswith("or pass --overwrite")


@pytest.mark.parametrize("assignment, factory", [("S7", "models.model7:ResNet18"), ("S8", "models.model8:CustomResNet"),
                                                 ("S10", "models.model10:ViT")])
def test_every_built_in_recipe_becomes_a_space_whose_model_answers_as_the_run_s(assignment, factory, folder_dir,
                                                                                 tmp_path):
    from assignments.space import build_space

    run = Run(assignment=assignment, data_dir=str(folder_dir), epochs=1, batch_size=8, subset=32, lr="0.01",
              device="cpu", out=str(tmp_path / "run"), tensorboard=False)
    assert run.run_all() == 0
    dest = build_space(run.out, tmp_path / "space")  # its model rebuilt from config.json + model.safetensors and
    config = json.loads((dest / "config.json").read_text())  # compared with the run's before DEST is written
    assert config["model"]["factory"] == factory and (dest / (factory.split(":")[0].replace(".", "/") + ".py")).is_file()
    check = subprocess.run([sys.executable, "-c", "import app; ex = app.open_space(); "
                            "print([(c, round(p, 5)) for c, p in ex.top_k(ex.examples()[0], 2)])"],
                           cwd=dest, env=dict(os.environ, PYTHONPATH=""), capture_output=True, text=True, timeout=300)
    ex = open_run(run.out)
    expected = [(c, round(p, 5)) for c, p in ex.top_k(ex.examples()[0], 2)]
    assert check.returncode == 0 and check.stdout.strip() == str(expected), check.stderr

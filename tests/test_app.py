"""The explorer of a trained run (assignments.explore, assignments.app): its answers equal the run's own (the
model called directly, the run's Grad-CAM, the run's gallery), a folder it cannot open is one line, and the page
works in a real browser."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from assignments.explore import open_run
from browser import browser_check
from assignments.run import Run
from utils.data import CLASSES
from utils.gradcam import gradcam_maps
from utils.metrics import misclassified

pytestmark = pytest.mark.slow  # end-to-end: processes, kernels, whole runs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(folder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("app") / "S9"
    run = Run(assignment="S9", data_dir=str(folder_dir), epochs=2, batch_size=32, lr="3e-3", device="cpu",
              out=str(out), tensorboard=False)
    assert run.run_all() == 0
    return run


def test_top_k_equals_the_model_called_directly(trained):
    ex = open_run(trained.out)
    for i in (0, 7, 21):
        x = trained.data.test_split.normalized([i], trained.data.mean, trained.data.std)
        with torch.no_grad():
            p = torch.softmax(trained.model.eval()(x), 1)[0]
        top = ex.top_k(trained.data.test_split.images[i], 10)
        assert [c for c, _ in top] == [CLASSES[j] for j in torch.argsort(p, descending=True, stable=True)]
        assert [q for _, q in top] == pytest.approx(sorted(p.tolist(), reverse=True), abs=1e-6)
        assert len(ex.top_k(trained.data.test_split.images[i], 3)) == 3


def test_gradcam_equals_the_run_s_own_for_that_image_and_layer(trained):
    ex = open_run(trained.out)
    assert ex.default_layer == trained.result.checks["gradcam_layer"] and ex.default_layer in ex.layers
    i = 3
    x = trained.data.test_split.normalized([i], trained.data.mean, trained.data.std)
    for layer in (ex.default_layer, ex.layers[0]):
        for target in (0, 6):
            theirs = gradcam_maps(trained.model, x, [target], layer, trained.result.checks["log_probs"])[0]
            assert np.allclose(ex.gradcam(trained.data.test_split.images[i], target, layer), theirs, atol=1e-6)


def test_misclassified_gallery_equals_the_run_s(trained):
    ex = open_run(trained.out)
    logits, y = trained.analysis.predict()
    idx = misclassified(logits, y, 10)
    shown = ex.mistakes(10)
    assert len(shown) == len(idx) > 0
    for (img, caption), i in zip(shown, idx):
        assert np.array_equal(img, trained.data.test_split.images[i])
        assert caption.startswith(f"{CLASSES[int(y[i])]} / {CLASSES[int(logits[i].argmax())]} p=")


def test_an_uploaded_image_of_any_size_or_mode_is_resized_and_said(trained):
    from PIL import Image

    ex = open_run(trained.out)
    image32, note = ex.prepare(Image.new("L", (100, 60), 128))
    assert image32.shape == (32, 32, 3) and image32.dtype == np.uint8
    assert note == "converted from L to RGB; resized from 100x60 to 32x32, the size the model was trained on"
    assert ex.prepare(trained.data.test_split.images[0]) == (pytest.approx(trained.data.test_split.images[0]), "")


def test_a_folder_it_cannot_open_is_one_line(trained, tmp_path):
    cases = {tmp_path / "nowhere": "no such run folder", tmp_path / "empty": "no checkpoint.pt"}
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    torch.save({"not": "a run"}, tmp_path / "bad" / "checkpoint.pt")
    cases[tmp_path / "bad"] = "not a checkpoint of a run"
    for folder, message in cases.items():
        p = subprocess.run([sys.executable, "-m", "assignments.app", str(folder)], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
        assert p.returncode == 1 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromedriver"), reason="needs Debian's chromium and chromium-driver")
def test_the_page_predicts_an_uploaded_image_and_shows_grad_cam_in_a_browser(trained, tmp_path):
    from PIL import Image

    image = tmp_path / "upload.png"
    Image.fromarray(trained.data.test_split.images[5]).resize((64, 64)).save(image)
    shown = browser_check(trained.out, image, tmp_path / "page.png")
    ex = open_run(trained.out)
    first = ex.top_k(ex.prepare(Image.open(image))[0], 1)[0][0]
    assert shown["label"].split("\n")[:2] == ["prediction", first], shown["label"]  # the block's label, the class
    assert "Grad-CAM of" in shown["note"] and "resized from 64x64 to 32x32" in shown["note"]
    assert "Error" not in shown["body"]
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_the_explorer_scales_16_bit_and_float_images_and_refuses_bad_arguments_in_one_line(trained, tmp_path):
    from PIL import Image

    ex = open_run(trained.out)
    photo = trained.data.test_split.images[3]  # (32, 32, 3) uint8
    grey16 = (photo.mean(2) * 257).astype(np.uint16)  # a 16-bit greyscale PNG of the same picture
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    opened = Image.open(tmp_path / "grey16.png")
    assert opened.mode.startswith("I")
    image32, note = ex.prepare(opened)
    assert "8 bits" in note and (image32 == 255).mean() < 0.5  # not a white square
    assert np.abs(image32[..., 0].astype(int) - photo.mean(2)).max() <= 1
    as_float, note = ex.prepare(photo.astype(np.float32) / 255)  # H x W x 3 floats in [0, 1]
    assert np.abs(as_float.astype(int) - photo).max() <= 1 and "floats" in note
    bad = [(lambda: ex.top_k(image32, 0), "k (how many top classes) must be 1 to 10; got 0"),
           (lambda: ex.gradcam(image32, "zebra"), "Grad-CAM class must be one of airplane"),
           (lambda: ex.gradcam(image32, 0, "no.such.layer"), "Grad-CAM layer must be one of"),
           (lambda: ex.prepare(np.zeros((4, 4, 7))), "got shape (4, 4, 7)")]
    from assignments.explore_plots import overlay
    bad.append((lambda: overlay(image32, np.zeros((32, 32), np.float32), 5), "opacity must be 0 to 1; got 5"))
    for call, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)) as e:
            call()
        assert len(str(e.value).splitlines()) == 1


def test_the_app_command_refuses_a_bad_port_device_or_tampered_config_in_one_line(trained, tmp_path):
    cases = [(["--port", "99999"], 2, "argument --port: must be a port number from 1 to 65535; got '99999'")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], 1, "--device cuda: no CUDA GPU here"))
    for config, message in (({"assignment": "S99"}, "assignment must be one of S7, S8, S9"),
                            ({"variant": "bogus"}, "--variant must be one of"),
                            ({"subset": "abc"}, "subset 'abc' or seed 1 is not a positive whole number")):
        out = tmp_path / "-".join(config)
        out.mkdir()
        state = torch.load(trained.out / "checkpoint.pt", weights_only=True)
        state["extra"]["config"].update(config)
        torch.save(state, out / "checkpoint.pt")
        cases.append(([str(out)], 1, message))
    for args, code, message in cases:
        args = args if args[0].startswith("/") else [str(trained.out), *args]
        p = subprocess.run([sys.executable, "-m", "assignments.app", *args], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
        errors = [line for line in p.stderr.strip().splitlines() if "error" in line]  # argparse adds its usage
        assert p.returncode == code and message in p.stderr and len(errors) == 1, p.stderr
        assert "Traceback" not in p.stderr and (code == 2 or len(p.stderr.strip().splitlines()) == 1), p.stderr


def test_the_app_command_answers_a_non_image_upload_on_the_page_and_stops_on_ctrl_c_under_load(trained, tmp_path):
    import contextlib
    import signal
    import threading
    import time

    from gradio_client import Client, handle_file
    from PIL import Image

    from browser import _free_port

    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "assignments.app", str(trained.out), "--port", str(port), "--share"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # Ctrl-C as in a shell
    try:
        first = p.stdout.readline()  # printed once the page is served
        assert first.strip() == f"The page: http://127.0.0.1:{port}/ (Ctrl-C stops it)", first
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        (tmp_path / "notes.png").write_text("not an image, despite its name")
        Image.fromarray(trained.data.test_split.images[0]).resize((200, 150)).save(tmp_path / "photo.png")
        ask = lambda f: client.predict(handle_file(str(tmp_path / f)), 3, True, None, 0.5, "the predicted class",  # noqa: E731
                                       api_name="/analyze")
        assert ask("notes.png")[2] == "**Cannot use this input:** the upload is not an image Pillow can read"
        assert "Grad-CAM of" in ask("photo.png")[2]
        def keep_asking():
            with contextlib.suppress(Exception):  # the server stops under it
                for _ in range(20):
                    ask("photo.png")

        busy = [threading.Thread(target=keep_asking, daemon=True) for _ in range(3)]
        for t in busy:
            t.start()
        time.sleep(2)  # requests in flight
        start = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 130 and time.monotonic() - start < 30
    finally:
        p.kill()
    # --share: a public link, or one line saying there is none (no network here); never a traceback
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
    assert "Public link: https://" in out or err.startswith("note: --share: no public link"), (out, err)
    assert not list((REPO / "assignments").glob("*.pyi"))  # Gradio writes one beside a module that subclasses it


def test_in_colab_the_page_is_shown_through_colab_s_port_proxy(trained, monkeypatch):
    import types

    from assignments.app import app
    from browser import _free_port

    shown = []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(serve_kernel_port_as_iframe=lambda port, height: shown.append(port))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    port = _free_port()
    page = app(trained.out, port=port)
    try:
        assert shown == [port]  # not an iframe of 127.0.0.1, which a browser outside the runtime cannot reach
    finally:
        page.close()

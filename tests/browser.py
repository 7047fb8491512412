"""Drive the explorer's page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, selenium):
upload an image, read the prediction, switch Grad-CAM on, take a screenshot. ``tests/test_app.py`` and
``tests/test_space.py`` use it; the README's screenshot comes from
``python tests/browser.py RUN_DIR IMAGE OUT.png [DATA_DIR]``."""
import shutil
import socket
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_check(run_dir: Path, image: Path, screenshot: Path, data_dir: str | None = None,
                  timeout: float = 120) -> dict:
    """Serve the app for ``run_dir`` on 127.0.0.1, then :func:`page_check` it; the server is stopped on return."""
    from assignments.app import app

    port = _free_port()
    page = app(run_dir, data_dir=data_dir, port=port)
    try:
        return page_check(f"http://127.0.0.1:{port}/", image, screenshot, timeout)
    finally:
        page.close()


def page_check(url: str, image: Path, screenshot: Path, timeout: float = 120) -> dict:
    """Open the explorer's page at ``url`` in headless Chromium, upload ``image``, read the prediction, switch
    Grad-CAM on, save ``screenshot``; returns what the page showed."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1500",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    if shutil.which("chromium"):
        options.binary_location = shutil.which("chromium")
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        wait = WebDriverWait(driver, timeout)
        driver.get(url)
        upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]")))
        upload.send_keys(str(image))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#prediction [id^=meter-text-]"))
        label = driver.find_element(By.ID, "prediction").text
        driver.find_element(By.CSS_SELECTOR, "#cam input[type=checkbox]").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#cam-image img"))
        wait.until(lambda d: "Grad-CAM of" in d.find_element(By.ID, "note").text)
        time.sleep(0.5)  # the overlay's image has loaded
        driver.save_screenshot(str(screenshot))
        body = driver.find_element(By.TAG_NAME, "body").text
        return {"label": label, "note": driver.find_element(By.ID, "note").text, "body": body}
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    run_dir, image, shot = map(Path, sys.argv[1:4])
    shown = browser_check(run_dir, image.resolve(), shot, sys.argv[4] if len(sys.argv) > 4 else None)
    print(shown["label"].replace("\n", " | "))
    print(shown["note"].replace("\n", " | "))

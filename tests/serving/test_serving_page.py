"""The web page at ``/`` in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium): load it, upload an image, read the answer from the DOM, check that the heatmap and the feature maps were
drawn. Skipped with the reason when no browser is installed (``.ci/run`` installs one).

``PAGE_SCREENSHOT=path.png`` saves the page as the test leaves it (docs/images/page.png is made this way, with
``PAGE_REPOSITORY=model_repository PAGE_IMAGE=<a digit PNG>`` to show the trained demo model instead of the test's
random-weight one).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.client import Client
from tests.support.repositories import Repo, export_model, patch_detector
from tests.support.servers import ServerThread, base_config

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
# CI (.ci/run) sets BROWSER_TESTS=1 once it has installed a browser: there a missing one is a failure, not a skip.
pytestmark = pytest.mark.skipif((CHROMIUM is None or CHROMEDRIVER is None) and not os.environ.get("BROWSER_TESTS"),
                                reason="no headless browser: install Debian's chromium and chromium-driver "
                                       "(.ci/run does)")


@pytest.fixture(scope="module")
def page_server(serving_repo: Repo) -> Iterator[ServerThread]:
    repository = Path(os.environ.get("PAGE_REPOSITORY") or serving_repo.path)
    server = ServerThread(base_config(repository, models=("digits",))).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def few_classes_server(repository: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """Models with fewer classes than the page's five rows: "patch" (2 classes, occlusion only) and "three"
    (3 classes, with a class activation map)."""
    from tests.support.runs import make_run

    root = tmp_path_factory.mktemp("few-classes")
    patch_detector(root / "repository")
    run = make_run(root / "runs" / "three", "resnet20", ("circle", "square", "star"), in_chans=3, size=32, seed=3,
                   n_train=4, n_valid=8)
    export_model(run, root / "repository", "three")
    server = ServerThread(base_config(root / "repository")).start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1100,1500", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _painted_pixels(driver, element_id: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(opaque pixels, pixels whose colour is not grey) of a canvas."""
    return driver.execute_script("""
        const c = document.getElementById(arguments[0]);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let opaque = 0, coloured = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] > 0) opaque++;
            if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 40) coloured++;
        }
        return [opaque, coloured];""", element_id)


def test_upload_shows_the_answer_heatmap_and_stages(page_server: ServerThread, browser,  # type: ignore[no-untyped-def]
                                                    image_files: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = Path(os.environ.get("PAGE_IMAGE") or image_files["img0.png"])
    with Client(page_server.address, "digits") as client:
        expected = client.classify(image, top_k=5)[0]
    browser.get(page_server.http_url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    browser.find_element(By.ID, "file").send_keys(str(image.resolve()))
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "top1").text.strip())

    assert browser.find_element(By.ID, "top1").text == expected[0].label
    labels = [e.text.rsplit(" ", 2)[0] for e in browser.find_elements(By.CSS_SELECTOR, "#predictions .label")]
    assert labels == [p.label for p in expected]
    opaque, coloured = _painted_pixels(browser, "overlay")
    assert opaque > 0
    assert coloured > 0  # the heatmap's colours over the grey digit
    assert "class activation map" in browser.find_element(By.ID, "caption").text
    stages = browser.find_elements(By.CSS_SELECTOR, "#stages .stage")
    assert [s.find_element(By.TAG_NAME, "h3").text.split(":")[0] for s in stages] == ["layer1", "layer2", "layer3"]
    assert all(s.find_elements(By.TAG_NAME, "canvas") for s in stages)
    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")

    # Another class: clicking its label maps the evidence for it.
    second = browser.find_elements(By.CSS_SELECTOR, "#predictions .prediction")[1]
    second.click()
    WebDriverWait(browser, 60).until(lambda d: expected[1].label in d.find_element(By.ID, "caption").text)
    if target := os.environ.get("PAGE_SCREENSHOT"):
        browser.find_elements(By.CSS_SELECTOR, "#predictions .prediction")[0].click()
        WebDriverWait(browser, 60).until(lambda d: expected[0].label in d.find_element(By.ID, "caption").text)
        browser.save_screenshot(target)


@pytest.mark.parametrize(("model", "classes"), [("patch", 2), ("three", 3)])
def test_a_model_with_fewer_classes_than_five(few_classes_server: ServerThread, browser,  # type: ignore[no-untyped-def]
                                              image_files: dict[str, Path], model: str, classes: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image = image_files["img1.png"]
    with Client(few_classes_server.address, model) as client:
        expected = client.classify(image)[0]
    assert len(expected) == classes
    browser.get(few_classes_server.http_url + "/")
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 2)
    Select(browser.find_element(By.ID, "model")).select_by_value(f"{model}/versions/1")
    browser.find_element(By.ID, "file").send_keys(str(image.resolve()))
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "top1").text.strip()
                                     or "error" in d.find_element(By.ID, "status").get_attribute("class"))

    assert "error" not in browser.find_element(By.ID, "status").get_attribute("class"), \
        browser.find_element(By.ID, "status").text
    labels = [e.text.rsplit(" ", 2)[0] for e in browser.find_elements(By.CSS_SELECTOR, "#predictions .label")]
    assert labels == [p.label for p in expected]
    chosen = browser.find_elements(By.CSS_SELECTOR, "#predictions .prediction.chosen")
    assert [int(c.get_attribute("data-index")) for c in chosen] == [expected[0].index]


def test_errors_show_on_the_page(page_server: ServerThread, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    junk = tmp_path / "not-an-image.png"
    junk.write_bytes(b"this is not a PNG")
    browser.get(page_server.http_url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
    browser.find_element(By.ID, "file").send_keys(str(junk))
    WebDriverWait(browser, 60).until(lambda d: "cannot decode" in d.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "status").get_attribute("class") == "error"

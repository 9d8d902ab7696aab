"""`vitos app`: the page's work functions on the shipped demo model, then the page itself in a real browser.

The browser test needs the optional extra and a system browser (nothing is downloaded at run time):
    pip install -e ".[app]"                                   # gradio + selenium
    apt-get install -y chromium chromium-driver              # Debian's headless Chromium and its driver
It serves the page on 127.0.0.1 (a free port, in this process), uploads a real VQA-RAD JPEG, runs it,
re-runs only the sparse pass with a wider margin, runs a bundled example, and checks the rendered answers,
the overlay image and the stats. Screenshots go to the test's tmp dir (and to $VITOS_APP_SCREENSHOT when
set; docs/app.png was made that way). Without gradio, selenium or chromium it skips and says which.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import urllib.request

import numpy as np
import pytest
from PIL import Image

import vitos.pipeline
from conftest import vqa_rad_path
from vitos.app import ModelCache, analyse, describe, examples, model_settings, overlay_image, rerun_sparse, resolve_model
from vitos.overlay import KEPT_OUTLINE
from vitos.pipeline import PruneConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_model():
    name = resolve_model("builtin")
    return name, ModelCache().get(name)[0]


def test_rerun_reuses_the_grounding_output_and_runs_only_the_sparse_pass(demo_model, tmp_path, monkeypatch):
    name, adapter = demo_model
    ex = examples(2, tmp_path)[1]
    saved = model_settings(name)
    assert (saved.fusion, saved.max_new_tokens, saved.synthetic) == ("none", 64, True)  # the demo's own settings
    first = analyse(adapter, name, ex["path"], ex["question"], None, ex["kind"], ex["reference"], ex["boxes"],
                    PruneConfig(margin=0.0, fusion="none"))
    assert first.grounding.boxes, "the demo model writes a box for its own phantom images"
    assert first.sparse.visual_tokens_kept < first.full.visual_tokens_total == first.sparse.visual_tokens_total

    calls = []
    real = vitos.pipeline.generate
    monkeypatch.setattr(vitos.pipeline, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(adapter, "encode_images", lambda *a, **k: pytest.fail("re-run must reuse the vision features"))
    wider = rerun_sparse(adapter, first, PruneConfig(margin=0.2, fusion="none"))
    assert len(calls) == 1  # the sparse answer pass only: no grounding generation
    assert wider.grounding_text == first.grounding_text and wider.full is first.full
    assert wider.sparse.boxes == first.sparse.boxes
    assert wider.sparse.visual_tokens_kept > first.sparse.visual_tokens_kept  # dilated box: more cells
    assert wider.timings_ms["grounding"] == first.timings_ms["grounding"]
    text = describe(wider)
    assert f"{wider.sparse.visual_tokens_kept} of {wider.sparse.visual_tokens_total}" in text["sparse"]
    assert "margin 0.2" in text["stats"]
    picture = overlay_image(wider)
    assert picture.width == 512 and picture.height > 512  # 224-px phantom enlarged, caption band below


# ---------------------------------------------------------------------------------------------- real browser
def _browser() -> tuple[str, str]:
    chromium = os.environ.get("VITOS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("VITOS_CHROMEDRIVER") or shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs a system Chromium and its driver: apt-get install -y chromium chromium-driver")
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")  # gradio + pandas 3
def test_app_in_a_real_browser(tmp_path):
    pytest.importorskip("gradio", reason="vitos app needs gradio: pip install -e '.[app]'")
    pytest.importorskip("selenium", reason="the browser test needs selenium: pip install -e '.[app]'")
    chromium, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from vitos.app import build_app, launch

    page = build_app(n_examples=3)
    port = _free_port()
    launch(page, "127.0.0.1", port, block=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    wait = WebDriverWait(driver, 120)

    def text(elem_id: str) -> str:
        return driver.find_element(By.ID, elem_id).text

    def field(elem_id: str):
        return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")

    def idle(d) -> bool:  # no event in flight (gradio shows "processing | 0.1s" on pending outputs)
        return "processing |" not in d.find_element(By.TAG_NAME, "body").text

    def overlay() -> Image.Image:
        img = driver.find_element(By.CSS_SELECTOR, "#overlay img")
        with urllib.request.urlopen(img.get_attribute("src"), timeout=30) as r:  # served by the local app
            return Image.open(io.BytesIO(r.read())).convert("RGB")

    def shot(name: str) -> None:
        driver.save_screenshot(str(tmp_path / name))
        if os.environ.get("VITOS_APP_SCREENSHOT") and name == "app_example.png":
            shutil.copyfile(tmp_path / name, os.environ["VITOS_APP_SCREENSHOT"])

    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))

        # 1. upload a real scan (VQA-RAD, CC0), ask, run: both answers, the overlay, the synthetic-model note
        jpeg = vqa_rad_path() / "images" / "synpic54610.jpg"
        driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(jpeg))
        wait.until(lambda d: "synpic54610" in text("upload"))  # uploaded (name and extension render apart)
        field("question").send_keys("Are regions of the brain infarcted?")
        field("reference").send_keys("yes")
        driver.find_element(By.ID, "run").click()
        wait.until(lambda d: "Answer:" in text("sparse") and "Answer:" in text("full") and idle(d))
        sparse, full, stats = text("sparse"), text("full"), text("stats")
        assert re.search(r"Answer: .+ — (right|wrong)", sparse), sparse
        assert re.search(r"Answer: .+ — (right|wrong)", full), full
        kept, total = map(int, re.search(r"ViToS, (\d+) of (\d+) visual tokens", sparse).groups())
        assert 0 < kept <= total and f"Full tokens ({total} visual tokens" in full
        assert "grounding pass" in stats and "sparse answer pass" in stats and "latency (ms)" in stats
        assert "synthetic toy model" in text("status")
        grounding = text("grounding")
        picture = overlay()
        with Image.open(jpeg) as raw:
            assert picture.width == raw.width and picture.height > raw.height  # scan + caption band
        band = np.asarray(picture)[raw.height:]
        assert (np.abs(band.astype(int) - KEPT_OUTLINE).max(-1) < 10).any() or kept == total  # legend: kept cells
        shot("app_upload.png")

        # 2. a wider margin re-runs the sparse pass only: same grounding text, at least as many kept tokens
        margin = driver.find_element(By.CSS_SELECTOR, "#margin input[type=number]")
        margin.send_keys(Keys.CONTROL, "a")
        margin.send_keys("0.3", Keys.TAB)
        driver.find_element(By.ID, "rerun").click()
        wait.until(lambda d: "Re-ran the sparse pass only (margin 0.3" in text("status") and idle(d))
        kept2 = int(re.search(r"ViToS, (\d+) of", text("sparse")).group(1))
        assert kept2 >= kept and text("grounding") == grounding

        # 3. a bundled example (MedPhantom): fills the question, reference and ground-truth box (margin back to 0)
        margin = driver.find_element(By.CSS_SELECTOR, "#margin input[type=number]")
        margin.send_keys(Keys.CONTROL, "a")
        margin.send_keys("0", Keys.TAB)
        wait.until(idle)
        driver.find_element(By.CSS_SELECTOR, "#example input").click()
        label = page.vitos_examples[1]["label"]
        option = wait.until(lambda d: [li for li in d.find_elements(By.CSS_SELECTOR, "[role=option]")
                                       if li.text.strip().startswith(label.split(":")[0] + ":")])
        option[0].click()
        wait.until(lambda d: field("question").get_attribute("value") == page.vitos_examples[1]["question"])
        driver.find_element(By.ID, "run").click()
        wait.until(lambda d: "already loaded" in text("status") and idle(d))  # this Run's outputs have arrived
        assert "synthetic toy model" not in text("status")  # a phantom is what the toy model is for
        assert "Settings: the model's saved settings." in text("status")  # the demo's own: fusion none, 64 tokens
        assert overlay().width == 512
        shot("app_example.png")
    finally:
        driver.quit()
        page.close()

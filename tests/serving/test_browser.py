"""The web editor in headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

Against the real Ray Serve app (fixture `serve_app`): load a sample, paint a stroke of a class the face
does not have with real mouse events, apply, and check the result the page shows; an upload the server
refuses shows the server's message in #error; undo / redo / eraser act on the painted mask.
Screenshots are written to pytest's tmp dir and, when MASKGAN_ARTIFACTS_DIR is set, there too.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from maskgan.labels import CLASS_INDEX, COLORS, color_to_label

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TIMEOUT_S = 120  # a first request on a cold CPU replica may take a while; never asserted as a duration
# Classes to paint, in order of preference: the stroke paints the one least present where it goes.
NEW_CLASSES = ("eye_g", "hat", "ear_r", "neck_l", "cloth", "l_ear", "r_ear", "nose")
STROKE_ROW, STROKE_FROM, STROKE_TO = 0.45, 0.2, 0.8  # fractions of the canvas height / width


@pytest.fixture(scope="session")
def driver(tmp_path_factory):
    """Headless Chromium through the system chromedriver; Selenium Manager is never asked for anything.

    Session-scoped like serve_app, and requested before it, so a missing browser fails in a second
    instead of after the app's start-up."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: the browser test needs Debian's chromium and "
            "chromium-driver; `make browser` installs them (`make test` does it too)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # belt and braces: Service(path) already skips the manager
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path_factory.mktemp("browser"))
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,900", f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_script_timeout(TIMEOUT_S)
    yield browser
    browser.quit()


@pytest.fixture
def app_url(serve_app) -> str:
    """http://127.0.0.1:<port> of the Serve app (tests/serving/conftest.py)."""
    return serve_app.url


@pytest.fixture
def page(driver, app_url):
    """The editor page, freshly loaded and ready (classes and samples fetched)."""
    driver.get(f"{app_url}/")
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    assert not driver.find_element("id", "error").is_displayed(), _text(driver, "error")
    return driver


def _wait(driver, condition, timeout: float = TIMEOUT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _idle(driver) -> None:
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.busy === 'false'"))


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def _pixels(driver, element_id: str) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an <img> or <canvas> of the page at its natural size (lossless PNG)."""
    url = driver.execute_script(
        """
        const element = document.getElementById(arguments[0]);
        if (element instanceof HTMLCanvasElement) return element.toDataURL("image/png");
        const canvas = document.createElement("canvas");
        canvas.width = element.naturalWidth;
        canvas.height = element.naturalHeight;
        const context = canvas.getContext("2d");
        context.imageSmoothingEnabled = false;
        context.drawImage(element, 0, 0);
        return canvas.toDataURL("image/png");
        """,
        element_id,
    )
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    """Save a screenshot under tmp_path and, when MASKGAN_ARTIFACTS_DIR is set, copy it there."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    target = os.environ.get("MASKGAN_ARTIFACTS_DIR")
    if target:
        os.makedirs(target, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def _load_first_sample(driver) -> str:
    from selenium.webdriver.support.ui import Select

    select = Select(driver.find_element("id", "sample-select"))
    ids = [option.get_attribute("value") for option in select.options if option.get_attribute("value")]
    assert ids, "the app lists no val samples; the browser test needs a dataset with a val split"
    select.select_by_value(ids[0])
    _idle(driver)
    assert not driver.find_element("id", "error").is_displayed(), _text(driver, "error")
    assert driver.find_element("id", "mask-canvas").is_displayed()
    return ids[0]


def _stroke(driver, rows: float, start: float, end: float, steps: int = 12) -> None:
    """Drag across the mask canvas with real mouse events, at `rows` (fraction of the height, from the
    top) from x = start to x = end (fractions of the width)."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "mask-canvas")
    width, height = canvas.size["width"], canvas.size["height"]
    # Selenium 4 offsets are from the element's centre.
    x0, y = round((start - 0.5) * width), round((rows - 0.5) * height)
    dx = round((end - start) * width / steps)
    actions = ActionChains(driver, duration=25).move_to_element_with_offset(canvas, x0, y)
    actions = actions.click_and_hold()
    for _ in range(steps):
        actions = actions.move_by_offset(dx, 0)
    actions.release().perform()


def _set_brush(driver, size: int) -> None:
    driver.execute_script(
        "const b = document.getElementById('brush-size'); b.value = arguments[0];"
        "b.dispatchEvent(new Event('input'));",
        size,
    )


def _paint_new_class(driver) -> tuple[np.ndarray, np.ndarray, int]:
    """Pick a class the loaded mask lacks and paint a horizontal stroke with it.
    Returns (original ids, edited ids, the class) as read back from the page's canvas."""
    original = color_to_label(_pixels(driver, "mask-canvas"))
    height = original.shape[0]
    band = original[round((STROKE_ROW - 0.1) * height) : round((STROKE_ROW + 0.1) * height)]
    new_class = min((CLASS_INDEX[name] for name in NEW_CLASSES), key=lambda id_: (band == id_).sum())
    driver.find_element("id", f"class-{new_class}").click()
    _set_brush(driver, max(1, original.shape[1] // 10))
    _stroke(driver, rows=STROKE_ROW, start=STROKE_FROM, end=STROKE_TO)
    # tolerance 0: every painted pixel is exactly a palette colour (no antialiased edges).
    edited = color_to_label(_pixels(driver, "mask-canvas"))
    return original, edited, new_class


def test_paint_apply_shows_an_edit_that_differs_where_painted(page, app_url, tmp_path, record_property):
    driver = page
    sample = _load_first_sample(driver)
    photo = _pixels(driver, "original")
    served_photo = np.asarray(
        Image.open(io.BytesIO(requests.get(f"{app_url}/api/samples/{sample}/image").content)).convert("RGB")
    )
    np.testing.assert_array_equal(photo, served_photo)

    original, edited, new_class = _paint_new_class(driver)
    painted = edited != original
    assert original.shape == photo.shape[:2], "the mask canvas must have the photo's native size"
    assert painted.sum() >= 0.02 * painted.size, f"the stroke painted only {painted.sum()} pixels"
    assert (edited[painted] == new_class).all(), "the stroke painted a class other than the chosen one"
    rows = np.flatnonzero(painted.any(axis=1))
    columns = np.flatnonzero(painted.any(axis=0))
    height, width = painted.shape
    # A horizontal stroke at 45 % of the height from 20 % to 80 % of the width (plus the brush radius).
    assert abs(rows.mean() / height - STROKE_ROW) < 0.1 and np.ptp(rows) < 0.35 * height, rows
    assert columns.min() / width < 0.3 and columns.max() / width > 0.7, columns

    # What the page looked like while the request ran: recorded when body[data-busy] turns "true".
    driver.execute_script(
        """
        window.__whileBusy = null;
        new MutationObserver((changes, observer) => {
          if (document.body.dataset.busy !== "true") return;
          const $ = (id) => document.getElementById(id);
          window.__whileBusy = {progress: !$("progress").hidden, apply: $("apply").disabled,
                                photo: $("photo-input").disabled, samples: $("sample-select").disabled};
          observer.disconnect();
        }).observe(document.body, {attributes: true, attributeFilter: ["data-busy"]});
        """
    )
    driver.find_element("id", "apply").click()
    _idle(driver)
    while_busy = driver.execute_script("return window.__whileBusy")
    assert while_busy == {"progress": True, "apply": True, "photo": True, "samples": True}, while_busy
    assert not driver.find_element("id", "error").is_displayed(), _text(driver, "error")
    _wait(
        driver,
        lambda d: d.execute_script(
            "const r = document.getElementById('result');return !r.hidden && r.complete && r.naturalWidth > 0"
        ),
    )
    result = _pixels(driver, "result")
    assert result.shape == photo.shape, f"result {result.shape} != photo {photo.shape}"
    _screenshot(driver, tmp_path, "browser_edit.png")

    # The page shows what the server makes of exactly the painted mask ...
    def edit(edited_mask: np.ndarray) -> np.ndarray:
        files = {
            "image": ("image.png", _png(photo), "image/png"),
            "mask": ("mask.png", _png(COLORS[original]), "image/png"),
            "edited_mask": ("edited.png", _png(COLORS[edited_mask]), "image/png"),
        }
        response = requests.post(f"{app_url}/api/edit", files=files, timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(np.int16)

    served = edit(edited)
    assert np.abs(served - result).max() <= 2, "the page's result is not the server's edit of its mask"
    # ... and that differs from the model's rendering of the unedited input where the stroke went.
    # Only "differs" is asserted: the fixture's editor has random weights, whose output moves almost
    # as much away from the stroke (measured: 29 levels where painted, 26 elsewhere); that an edit
    # stays local is a property of a trained model, checked by the learning tests, not of the page.
    unedited = edit(original)
    change = np.abs(result.astype(np.int16) - unedited).mean(axis=-1)  # (H, W)
    inside, outside = float(change[painted].mean()), float(change[~painted].mean())
    record_property("mean_change_painted", round(inside, 2))
    record_property("mean_change_unpainted", round(outside, 2))
    assert inside > 2.0, f"the result barely changed where painted (mean {inside:.2f} levels)"

    download = driver.find_element("id", "download")
    assert download.get_attribute("aria-disabled") == "false"
    assert download.get_attribute("href").startswith("blob:")


def test_undo_redo_keys_and_eraser(page, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver = page
    _load_first_sample(driver)
    original, edited, new_class = _paint_new_class(driver)
    assert (edited != original).any()

    def keys(key: str) -> np.ndarray:
        ActionChains(driver).key_down(Keys.CONTROL).send_keys(key).key_up(Keys.CONTROL).perform()
        return color_to_label(_pixels(driver, "mask-canvas"))

    np.testing.assert_array_equal(keys("z"), original)
    np.testing.assert_array_equal(keys("y"), edited)
    driver.find_element("id", "undo").click()
    np.testing.assert_array_equal(color_to_label(_pixels(driver, "mask-canvas")), original)
    driver.find_element("id", "redo").click()

    # The eraser over the stroke: skin where the original was face, background elsewhere.
    driver.find_element("id", "eraser").click()
    _set_brush(driver, int(driver.find_element("id", "brush-size").get_attribute("max")))
    _stroke(driver, rows=STROKE_ROW, start=0.1, end=0.9)
    erased = color_to_label(_pixels(driver, "mask-canvas"))
    touched = erased != edited
    face = (original >= 1) & (original <= 12)
    assert touched.any()
    assert (erased[touched & face] == CLASS_INDEX["skin"]).all()
    assert (erased[touched & ~face] == CLASS_INDEX["background"]).all()
    assert not (erased[edited != original] == new_class).any(), "the eraser left part of the stroke"


def test_style_copy_of_a_reference_sample(page, app_url):
    from selenium.webdriver.support.ui import Select

    driver = page
    _load_first_sample(driver)
    target = color_to_label(_pixels(driver, "mask-canvas"))
    select = Select(driver.find_element("id", "reference-select"))
    reference = [option.get_attribute("value") for option in select.options if option.get_attribute("value")][
        -1
    ]
    select.select_by_value(reference)
    _idle(driver)
    driver.find_element("id", "style-copy").click()
    _idle(driver)
    assert not driver.find_element("id", "error").is_displayed(), _text(driver, "error")
    result = _pixels(driver, "result")
    assert result.shape == (*target.shape, 3)
    assert "style copy" in _text(driver, "result-caption")

    def served(path: str) -> bytes:
        response = requests.get(f"{app_url}/api/samples/{reference}/{path}", timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        return response.content

    files = {
        "target_mask": ("target.png", _png(COLORS[target]), "image/png"),
        "reference_image": ("reference.png", served("image"), "image/png"),
        "reference_mask": ("reference_mask.png", served("mask"), "image/png"),
    }
    response = requests.post(f"{app_url}/api/style-copy", files=files, timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    expected = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(np.int16)
    assert np.abs(expected - result).max() <= 2, "the page's result is not the server's style copy"


def test_a_refused_upload_shows_the_server_message(page, app_url, tmp_path):
    driver = page
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"this is a text file, not a PNG\n")
    response = requests.post(
        f"{app_url}/api/parse",
        files={"image": ("image.png", not_an_image.read_bytes(), "image/png")},
        timeout=TIMEOUT_S,
    )
    assert 400 <= response.status_code < 500, response.text
    detail = response.json()["detail"]

    driver.find_element("id", "photo-input").send_keys(str(not_an_image))
    _idle(driver)
    error = driver.find_element("id", "error")
    _wait(driver, lambda d: error.is_displayed())

    assert detail in error.text, error.text
    assert f"HTTP {response.status_code}" in error.text, error.text
    assert not driver.find_element("id", "photo-input").get_attribute("disabled"), "controls stay disabled"
    _screenshot(driver, tmp_path, "browser_error.png")

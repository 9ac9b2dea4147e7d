"""End to end in a real headless browser (Debian chromium + chromedriver, driven by selenium).

The tests start the server themselves (uvicorn in a thread, tiny model, a free loopback port). The
first, in a 1280x720 window, uploads the image and the reference through the page, paints one mask
stroke with the mouse, clicks Refine, waits for the result (scrolled into view, labelled before /
after), reads the downloadable PNG out of the page and checks that it differs from the input inside
the stroke and is bit-identical outside the dilated stroke; then a new image and a broken upload
must each clear what belonged to the old one. The second, in a 420 px wide window (columns
stacked), runs Align only (the found region drawn on the reference) and then a Refine that is
cancelled, which must leave no earlier result on the page.

Needs: apt-get install -y chromium chromium-driver; pip install selenium. Skipped otherwise.
"""

import base64
import io
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        "headless browser test needs Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver)", allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="headless browser test needs selenium (pip install selenium)")

from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

W, H = 192, 128
BRUSH = 20  # the page's default brush, in CSS pixels


@pytest.fixture(scope="module")
def server_url(request):
    import uvicorn

    from refine_by_align.server import ServerSettings, create_app
    from refine_by_align.server.serve import bind_socket

    pipe = request.getfixturevalue("tiny_pipe")
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(pipe, ServerSettings(model_name="tiny")), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def browser(tmp_path, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium manager must never try the network
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,720", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _inputs(tmp_path):
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.stack([xx * 255 // W, yy * 255 // H, (xx + yy) % 256], -1).astype(np.uint8)
    image = np.clip(image.astype(int) + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    reference = rng.integers(0, 256, (90, 110, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(image[:120, :160][::-1].copy()).save(tmp_path / "image2.png")
    Image.fromarray(reference).save(tmp_path / "reference.png")
    (tmp_path / "broken.png").write_text("this is text, not a picture")
    return image


def _open_and_upload(d, url, tmp_path):
    d.get(url)
    wait = WebDriverWait(d, 60)
    wait.until(lambda d: "model: tiny" in d.find_element(By.ID, "model-note").text)
    assert d.find_element(By.ID, "ready-hint").text == "Refine needs an image and a reference photo."
    d.find_element(By.ID, "image-file").send_keys(str(tmp_path / "image.png"))
    d.find_element(By.ID, "reference-file").send_keys(str(tmp_path / "reference.png"))
    wait.until(lambda d: d.find_element(By.ID, "refine-btn").is_enabled())
    assert d.find_element(By.ID, "ready-hint").text == ""
    canvas = d.find_element(By.ID, "mask-canvas")
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == (str(W), str(H))
    # one horizontal stroke through the middle of the image, drawn with the mouse
    ActionChains(d).move_to_element_with_offset(canvas, -40, 0).click_and_hold() \
        .move_by_offset(20, 0).move_by_offset(20, 0).move_by_offset(20, 0).move_by_offset(20, 0).release().perform()
    return canvas


def _wait_finished(d, expected="done"):
    WebDriverWait(d, 180).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    assert d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == expected, d.find_element(By.ID, "error").text


def _results_gone(d):
    """Nothing of an earlier job is left on the page (hidden, and the pictures dropped too)."""
    for section in ("results", "heat-section"):
        assert not d.find_element(By.ID, section).is_displayed(), section
    for img in ("compare-after", "result-img", "heatmap-img", "region-img"):
        assert d.find_element(By.ID, img).get_attribute("src") in (None, ""), img
    assert d.find_element(By.ID, "download").get_attribute("href").endswith("#")


def _segment_distance(x0, x1, y):
    """Distance of every pixel centre to the horizontal segment (x0..x1, y), in pixels."""
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    dx = np.maximum(np.maximum(x0 - xx, xx - x1), 0)
    return np.hypot(dx, yy - y)


def test_refine_in_the_browser(server_url, browser, tmp_path):
    image = _inputs(tmp_path)
    d = browser
    wait = WebDriverWait(d, 60)
    canvas = _open_and_upload(d, server_url, tmp_path)
    rect = d.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    scale = W / rect[0]
    steps = d.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("2")
    assert d.execute_script("return window.scrollY") == 0
    d.find_element(By.ID, "refine-btn").click()
    _wait_finished(d)
    assert d.find_element(By.ID, "heatmap-img").get_attribute("naturalWidth") == "110"
    assert "guided the refinement" in d.find_element(By.ID, "heat-caption").text
    assert d.find_element(By.ID, "results-title").text == "Before / after"
    # the results are scrolled into view in a 1280x720 window, and the slider's picture is labelled
    # (the whole section in view, or its top in the upper quarter when it is taller than the window)
    def scrolled(d):
        y, top, bottom, height = d.execute_script(
            "const r = document.getElementById('results').getBoundingClientRect();"
            "return [window.scrollY, r.top, r.bottom, window.innerHeight];")
        return y > 0 and top >= -1 and (bottom <= height + 1 or top < 0.25 * height)

    wait.until(scrolled, "the results were not scrolled into view")
    assert d.find_element(By.ID, "label-before").is_displayed() and d.find_element(By.ID, "label-before").text == "before"
    assert d.find_element(By.ID, "label-after").is_displayed() and d.find_element(By.ID, "label-after").text == "after"
    assert d.find_element(By.ID, "compare-after").get_attribute("src").startswith("blob:")
    assert not d.find_element(By.ID, "region-img").is_displayed()  # Align only's picture

    # read the file the download button offers
    encoded = d.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById('download').href).then(r => r.blob()).then(b => {
          const fr = new FileReader(); fr.onload = () => done(fr.result.split(',')[1]); fr.readAsDataURL(b);
        }).catch(e => done('ERROR ' + e));
        """
    )
    assert not encoded.startswith("ERROR"), encoded
    assert d.find_element(By.ID, "download").get_attribute("download") == "refined.png"
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))
    assert result.shape == image.shape

    # stroke in image pixels: centre of the canvas, -40..+40 CSS px, brush 20 CSS px
    cx, cy = W / 2, H / 2
    dist = _segment_distance(cx - 40 * scale, cx + 40 * scale, cy)
    radius = BRUSH / 2 * scale
    changed = (result != image).any(-1)
    inside = dist <= radius - 2
    assert changed[inside].mean() > 0.5, changed[inside].mean()
    outside = dist > radius + 3 + 3  # paste dilation 3 px (+ 3 px for antialiasing and pointer rounding)
    assert not changed[outside].any(), np.argwhere(changed & outside)[:5]

    # a new image: the old result, heat map and slider picture go with the old image
    d.find_element(By.ID, "image-file").send_keys(str(tmp_path / "image2.png"))
    wait.until(lambda d: "160 x 120 px" in d.find_element(By.ID, "image-info").text)
    _results_gone(d)
    assert d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
    assert d.find_element(By.ID, "refine-btn").is_enabled()

    # a bad upload shows a message in the page and takes the old image with it; the page keeps working
    d.find_element(By.ID, "image-file").send_keys(str(tmp_path / "broken.png"))
    wait.until(lambda d: "not a readable image" in d.find_element(By.ID, "error").text)
    assert d.find_element(By.ID, "error").is_displayed()
    assert d.find_element(By.ID, "image-view").get_attribute("src") in (None, "")
    assert "could not be used" in d.find_element(By.ID, "image-info").text
    assert "160 x 120" not in d.find_element(By.ID, "image-info").text
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("1", "1")
    assert not d.find_element(By.ID, "refine-btn").is_enabled()
    assert d.find_element(By.ID, "ready-hint").text == "Refine needs an image."
    d.find_element(By.ID, "image-file").send_keys(str(tmp_path / "image.png"))
    wait.until(lambda d: d.find_element(By.ID, "refine-btn").is_enabled())
    assert d.find_element(By.ID, "ready-hint").text == ""


def test_align_only_and_cancel_in_a_narrow_window(server_url, browser, tmp_path):
    _inputs(tmp_path)
    d = browser
    d.set_window_size(420, 900)
    _open_and_upload(d, server_url, tmp_path)
    # the columns stack: nothing is cut off or scrolls sideways
    layout = d.execute_script("""
        const s = [...document.querySelectorAll('main > section')].slice(0, 2).map(e => e.getBoundingClientRect());
        return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth,
                first: [s[0].left, s[0].right, s[0].bottom], second: [s[1].left, s[1].right, s[1].top]};""")
    assert layout["inner"] <= 440, layout
    assert layout["scroll"] <= layout["inner"], layout
    assert layout["second"][2] >= layout["first"][2], layout  # the reference column is below the image column
    assert abs(layout["second"][0] - layout["first"][0]) < 1 and layout["second"][1] <= layout["inner"], layout

    # steps are typed first: align ignores them, and the cancelled refine below needs many
    steps = d.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("1000")
    d.find_element(By.ID, "align-btn").click()
    _wait_finished(d)
    assert d.find_element(By.ID, "results-title").text == "Found region on the reference"
    assert not d.find_element(By.ID, "compare").is_displayed()
    region = d.find_element(By.ID, "region-img")
    assert region.is_displayed() and region.get_attribute("naturalWidth") == "110"
    assert "found region" in d.find_element(By.ID, "heat-caption").text
    assert d.find_element(By.ID, "download").get_attribute("download") == "correspondence.png"
    # the region picture is the reference changed exactly on the region's pixels
    counts = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const pixels = (img) => { const c = document.createElement('canvas'); c.width = img.naturalWidth;
          c.height = img.naturalHeight; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
          return g.getImageData(0, 0, c.width, c.height).data; };
        const mask = new Image();
        mask.onload = () => {
          const a = pixels(document.getElementById('region-img')), b = pixels(document.getElementById('reference-view'));
          const m = pixels(mask);
          let on = 0, changed = 0, changedOff = 0;
          for (let i = 0; i < a.length; i += 4) {
            const diff = a[i] !== b[i] || a[i + 1] !== b[i + 1] || a[i + 2] !== b[i + 2];
            if (m[i] >= 128) { on++; changed += diff; } else { changedOff += diff; }
          }
          done([on, changed, changedOff]);
        };
        mask.onerror = () => done('ERROR');
        mask.src = document.getElementById('download').href;""")
    on, changed, changed_off = counts
    assert on > 0 and changed >= 0.99 * on and changed_off == 0, counts

    # a new job clears the last one's results at once; a cancelled job leaves none behind
    d.find_element(By.ID, "refine-btn").click()
    WebDriverWait(d, 60).until(lambda d: d.find_element(By.ID, "status").text.startswith("step "))
    _results_gone(d)
    d.find_element(By.ID, "cancel-btn").click()
    _wait_finished(d, expected="error")
    assert "cancel" in d.find_element(By.ID, "error").text
    _results_gone(d)
    assert d.find_element(By.ID, "refine-btn").is_enabled()


def test_suggest_mask_fills_the_brush_layer(server_url, browser):
    """The badge example: Suggest mask fills the brush layer with the server's proposal (an undo step)."""
    from pathlib import Path

    badge = Path(__file__).resolve().parents[2] / "src/refine_by_align/demo/examples/badge"
    d = browser
    d.get(server_url)
    wait = WebDriverWait(d, 60)
    wait.until(lambda d: "model: tiny" in d.find_element(By.ID, "model-note").text)
    assert not d.find_element(By.ID, "suggest-btn").is_enabled()
    d.find_element(By.ID, "image-file").send_keys(str(badge / "image.png"))
    d.find_element(By.ID, "reference-file").send_keys(str(badge / "reference.png"))
    wait.until(lambda d: d.find_element(By.ID, "suggest-btn").is_enabled())
    painted = "const c = document.getElementById('mask-canvas'), p = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;" \
              "let n = 0; for (let i = 3; i < p.length; i += 4) n += p[i] >= 128; return n;"
    assert d.execute_script(painted) == 0
    d.find_element(By.ID, "suggest-btn").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text in ("mask suggested", "no mask suggested") or d.find_element(By.ID, "error").text)
    assert d.find_element(By.ID, "status").text == "mask suggested", (d.find_element(By.ID, "error").text, d.find_element(By.ID, "suggest-info").text)
    assert d.execute_script(painted) > 0.01 * 384 * 320
    assert "Suggested mask" in d.find_element(By.ID, "suggest-info").text
    assert d.find_element(By.ID, "refine-btn").is_enabled() and d.find_element(By.ID, "suggest-btn").is_enabled()
    d.find_element(By.ID, "undo").click()  # the proposal is one undo step
    assert d.execute_script(painted) == 0


def test_several_references_in_the_browser(server_url, browser, tmp_path):
    """Add reference: a block per extra reference (numbered, removable, at most the server's limit);
    Refine sends them all and shows where each part came from (the source picture, one line per
    reference, the tiles); Align only takes one reference; removing one renumbers the rest and
    clears the results."""
    _inputs(tmp_path)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(tmp_path / "reference2.png")
    Image.fromarray(rng.integers(0, 256, (60, 84, 3), dtype=np.uint8)).save(tmp_path / "reference3.png")
    d = browser
    wait = WebDriverWait(d, 60)
    _open_and_upload(d, server_url, tmp_path)
    d.find_element(By.ID, "add-reference").click()
    assert d.find_element(By.ID, "ready-hint").text == "Refine needs a photo for reference #2 (or remove it)."
    assert not d.find_element(By.ID, "refine-btn").is_enabled()
    d.find_element(By.ID, "reference-file-2").send_keys(str(tmp_path / "reference2.png"))
    wait.until(lambda d: d.find_element(By.ID, "refine-btn").is_enabled())
    assert not d.find_element(By.ID, "align-btn").is_enabled()  # Align only takes one reference
    assert d.find_element(By.ID, "reference-view-2").get_attribute("naturalWidth") == "100"
    # a third, then #2 removed: the third becomes #2, its picture with it
    d.find_element(By.ID, "add-reference").click()
    d.find_element(By.ID, "reference-file-3").send_keys(str(tmp_path / "reference3.png"))
    wait.until(lambda d: d.find_element(By.ID, "reference-view-3").get_attribute("naturalWidth") == "84")
    d.find_element(By.ID, "add-reference").click()  # the 4th: the server's limit
    assert not d.find_element(By.ID, "add-reference").is_enabled()
    assert "at most 4 references" in d.find_element(By.ID, "references-hint").text
    d.find_element(By.ID, "remove-reference-4").click()
    d.find_element(By.ID, "remove-reference-2").click()
    assert d.find_elements(By.ID, "reference-file-3") == []
    assert "Reference #2" in d.find_element(By.ID, "reference-block-2").text
    assert d.find_element(By.ID, "reference-view-2").get_attribute("naturalWidth") == "84"
    assert d.find_element(By.ID, "add-reference").is_enabled()
    wait.until(lambda d: d.find_element(By.ID, "refine-btn").is_enabled())

    steps = d.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("2")
    d.find_element(By.ID, "refine-btn").click()
    _wait_finished(d)
    assert d.find_element(By.ID, "references-section").is_displayed()
    lines = [li.text for li in d.find_elements(By.CSS_SELECTOR, "#references-list li")]
    assert len(lines) == 2 and lines[0].startswith("#1 reference.png: ") and lines[1].startswith("#2 reference3.png: "), lines
    assert sum("guided the model" in line for line in lines) == 1, lines
    assert all("% of the mask from its warp" in line for line in lines), lines
    source = d.find_element(By.ID, "source-img")
    assert (source.get_attribute("naturalWidth"), source.get_attribute("naturalHeight")) == (str(W), str(H))
    tiles = d.find_element(By.ID, "references-compare-img")
    assert int(tiles.get_attribute("naturalWidth")) > 4 * int(tiles.get_attribute("naturalHeight"))
    assert "on reference #" in d.find_element(By.ID, "heat-caption").text
    assert d.find_element(By.ID, "compare-after").get_attribute("src").startswith("blob:")

    # one reference again: the results go with the removed one, Align only is back
    d.find_element(By.ID, "remove-reference-2").click()
    _results_gone(d)
    assert not d.find_element(By.ID, "references-section").is_displayed()
    for img in ("source-img", "references-compare-img"):
        assert d.find_element(By.ID, img).get_attribute("src") in (None, ""), img
    assert d.find_elements(By.CSS_SELECTOR, "#references-list li") == []
    assert d.find_element(By.ID, "align-btn").is_enabled() and d.find_element(By.ID, "refine-btn").is_enabled()
    # a broken extra reference is named with its number and leaves Refine waiting for a photo
    d.find_element(By.ID, "add-reference").click()
    d.find_element(By.ID, "reference-file-2").send_keys(str(tmp_path / "broken.png"))
    wait.until(lambda d: "reference #2: " in d.find_element(By.ID, "error").text)
    assert "not a readable image" in d.find_element(By.ID, "error").text
    assert not d.find_element(By.ID, "refine-btn").is_enabled()

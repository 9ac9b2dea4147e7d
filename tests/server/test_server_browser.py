"""End to end in a real headless browser (Debian chromium + chromedriver, driven by selenium).

The test starts the server itself (uvicorn in a thread, tiny model, a free loopback port), uploads
the image and the reference through the page, paints one mask stroke with the mouse, clicks Refine,
waits for the result, reads the downloadable PNG out of the page and checks that it differs from the
input inside the stroke and is bit-identical outside the dilated stroke.

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
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
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
    Image.fromarray(reference).save(tmp_path / "reference.png")
    (tmp_path / "broken.png").write_text("this is text, not a picture")
    return image


def _segment_distance(x0, x1, y):
    """Distance of every pixel centre to the horizontal segment (x0..x1, y), in pixels."""
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    dx = np.maximum(np.maximum(x0 - xx, xx - x1), 0)
    return np.hypot(dx, yy - y)


def test_refine_in_the_browser(server_url, browser, tmp_path):
    image = _inputs(tmp_path)
    d = browser
    wait = WebDriverWait(d, 60)
    d.get(server_url)
    wait.until(lambda d: "model: tiny" in d.find_element(By.ID, "model-note").text)

    d.find_element(By.ID, "image-file").send_keys(str(tmp_path / "image.png"))
    d.find_element(By.ID, "reference-file").send_keys(str(tmp_path / "reference.png"))
    wait.until(lambda d: d.find_element(By.ID, "refine-btn").is_enabled())
    canvas = d.find_element(By.ID, "mask-canvas")
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == (str(W), str(H))

    # one horizontal stroke through the middle of the image, drawn with the mouse
    rect = d.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    scale = W / rect[0]
    ActionChains(d).move_to_element_with_offset(canvas, -40, 0).click_and_hold() \
        .move_by_offset(20, 0).move_by_offset(20, 0).move_by_offset(20, 0).move_by_offset(20, 0).release().perform()
    steps = d.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("2")
    d.find_element(By.ID, "refine-btn").click()
    WebDriverWait(d, 180).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    assert d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", d.find_element(By.ID, "error").text
    assert d.find_element(By.ID, "heatmap-img").get_attribute("naturalWidth") == "110"

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

    # a bad upload shows a message in the page; the page keeps working
    d.find_element(By.ID, "image-file").send_keys(str(tmp_path / "broken.png"))
    wait.until(lambda d: "not a readable image" in d.find_element(By.ID, "error").text)
    assert d.find_element(By.ID, "error").is_displayed()
    d.find_element(By.ID, "image-file").send_keys(str(tmp_path / "image.png"))
    wait.until(lambda d: d.find_element(By.ID, "refine-btn").is_enabled())

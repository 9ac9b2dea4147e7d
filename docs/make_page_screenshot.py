"""Draw docs/images/page.png: the web page after refining the shipped `badge` example.

    .venv/bin/python docs/make_page_screenshot.py [--output docs/images/page.png] [--model default]

Starts the server in this process (a free loopback port), drives Debian's headless chromium with
selenium (as tests/server/test_server_browser.py does): uploads the example's image, its artifact
mask and its reference (no reference mask: the page's usual case), clicks Refine, and saves the
whole page at 1280 px wide as a 96-colour PNG (under 200 KB).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=str(Path(__file__).parent / "images" / "page.png"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--example", default="badge")
    args = ap.parse_args()
    os.environ["SE_OFFLINE"] = "true"  # selenium manager must never try the network

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from refine_by_align.demo.examples import EXAMPLES_DIR
    from refine_by_align.loading import load_pipeline
    from refine_by_align.server import ServerSettings, create_app
    from refine_by_align.server.serve import bind_socket

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(pipe, ServerSettings(model_name=args.model)), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    example = EXAMPLES_DIR / args.example
    with tempfile.TemporaryDirectory() as tmp:
        opts = Options()
        opts.binary_location = "/usr/bin/chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,720",
                     "--disable-dev-shm-usage", f"--user-data-dir={tmp}"):
            opts.add_argument(flag)
        d = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
        try:
            d.get(f"http://127.0.0.1:{sock.getsockname()[1]}/")
            wait = WebDriverWait(d, 120)
            wait.until(lambda d: "model:" in d.find_element(By.ID, "model-note").text)
            d.find_element(By.ID, "image-file").send_keys(str(example / "image.png"))
            d.find_element(By.ID, "reference-file").send_keys(str(example / "reference.png"))
            wait.until(lambda d: d.find_element(By.ID, "refine-btn").is_enabled())
            d.find_element(By.ID, "mask-file").send_keys(str(example / "mask.png"))
            time.sleep(0.5)
            d.find_element(By.ID, "refine-btn").click()
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
            d.execute_script("window.scrollTo(0, 0)")
            height = d.execute_script("return document.documentElement.scrollHeight")
            d.set_window_size(1280, height + 140)  # the window's frame: make the whole page the viewport
            time.sleep(0.5)
            png = d.get_screenshot_as_png()
        finally:
            d.quit()
    server.should_exit = True
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    shot.quantize(96, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(args.output, optimize=True)
    print(f"wrote {args.output} ({shot.width}x{shot.height}, {Path(args.output).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()

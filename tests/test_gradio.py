"""End to end: the Gradio app in headless Chromium (Debian's chromium, driven by Playwright)."""

import shutil
import socket

import pytest

from test_edge import SAMPLE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_upload_in_the_browser_shows_the_predicted_label(tiny_models, yunet):
    pytest.importorskip("gradio")
    playwright = pytest.importorskip("playwright.sync_api")
    from feredge.edge.detector import EmotionDetector
    from feredge.edge.gradio_app import build_app

    detector = EmotionDetector(tiny_models, face_model=yunet)
    expected = detector.predict(str(SAMPLE))[0].label
    port = free_port()
    app = build_app(detector)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            with page.expect_file_chooser() as chooser:  # what a person does: click, pick the file
                page.get_by_text("Click to Upload").click()
            chooser.value.set_files(str(SAMPLE))
            summary = page.locator("#summary textarea")
            page.wait_for_function("el => el.value.startsWith('face 1:')", arg=summary.element_handle(), timeout=60_000)
            assert summary.input_value() == f"face 1: {expected}"
            # The probability bars show the same top label.
            assert expected in page.locator("#emotions").inner_text(timeout=10_000)
            browser.close()
    finally:
        app.close()

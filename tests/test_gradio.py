"""End to end: the Gradio app in headless Chromium (Debian's chromium, driven by Playwright), used as
a person would, by 8 people at once, and abused."""

import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import zlib

import pytest

from conftest import SAMPLE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decompression_bomb(path, side=30_000):
    """A valid 1-bit PNG of side x side black pixels: about 100 KB on disk, 2.7 GB once decoded to BGR."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + side // 8 + 1)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 1000) for _ in range(side // 1000)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def app_url(tiny_models, yunet):
    pytest.importorskip("gradio")
    from feredge.edge.detector import EmotionDetector
    from feredge.edge.gradio_app import build_app

    detector = EmotionDetector(tiny_models, face_model=yunet)
    port = free_port()
    app = build_app(detector, "tiny", lambda name: EmotionDetector(name, face_model=yunet))
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", detector.predict(str(SAMPLE))[0].label
    app.close()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Chromium not installed (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def upload(browser, url, path, model=None):
    """Open the page, choose the model if given, and pick the file, as a person does; returns (page,
    summary textbox)."""
    page = browser.new_page()
    page.goto(url, timeout=60_000)
    if model:
        page.locator("#model input").click()
        page.get_by_role("option", name=model, exact=True).click()
    with page.expect_file_chooser() as chooser:
        page.get_by_text("Click to Upload").first.click()
    chooser.value.set_files(str(path))
    return page, page.locator("#summary textarea")


def wait_for_summary(page, summary, prefix):
    page.wait_for_function(f"el => el.value.startsWith({prefix!r})", arg=summary.element_handle(), timeout=90_000)
    return summary.input_value()


@needs_browser
def test_upload_in_the_browser_shows_the_predicted_label(app_url, browser):
    url, expected = app_url
    page, summary = upload(browser, url, SAMPLE)
    assert wait_for_summary(page, summary, "face 1:") == f"face 1: {expected}"
    assert expected in page.locator("#emotions").inner_text(timeout=10_000)  # the bars agree
    page.close()


@needs_browser
def test_the_page_offers_every_shipped_model(app_url, browser, yunet):
    from feredge.edge.detector import EmotionDetector

    url, _ = app_url
    face = EmotionDetector("accurate", face_model=yunet).predict(str(SAMPLE))[0]
    page, summary = upload(browser, url, SAMPLE, model="accurate")
    assert wait_for_summary(page, summary, "face 1:") == f"face 1: {face.label}"
    # The bars show the ensemble's own probability for its top emotion, as Gradio rounds it.
    assert f"{round(100 * face.probabilities[face.label])}%" in page.locator("#emotions").inner_text(timeout=10_000)
    page.close()


@needs_browser
def test_eight_people_at_once_all_get_the_right_answer(app_url, browser):
    url, expected = app_url
    sessions = [upload(browser, url, SAMPLE) for _ in range(8)]  # all queued before any is read
    for page, summary in sessions:
        assert wait_for_summary(page, summary, "face 1:") == f"face 1: {expected}"
        page.close()


@needs_browser
def test_hostile_uploads_get_a_clear_message(app_url, browser, tmp_path):
    url, _ = app_url
    (tmp_path / "notes.png").write_text("this is not a picture\n")
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases = {tmp_path / "notes.png": "refused: not an image",
             tmp_path / "empty.jpg": "refused: the file is empty",
             decompression_bomb(tmp_path / "bomb.png"): "refused: the image has too many pixels"}
    for path, message in cases.items():
        page, summary = upload(browser, url, path)
        assert wait_for_summary(page, summary, "refused:").startswith(message)
        page.close()


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    """In a fresh process, so that its peak memory is this upload's alone."""
    pytest.importorskip("PIL")
    bomb = decompression_bomb(tmp_path / "bomb.png")
    script = textwrap.dedent(f"""
        import resource
        from feredge.edge.gradio_app import UploadError, load_upload
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_upload({str(bomb)!r})
        except UploadError as e:
            print("refused:", e)
        print("peak growth MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "refused: the image has too many pixels" in r.stdout, r.stderr[-2000:]
    assert float(r.stdout.split("peak growth MB")[1]) < 100


def test_the_ui_binds_to_loopback_unless_told_otherwise():
    from feredge.cli import build_parser

    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"


def upload_video(browser, url, path):
    """Open the page, go to the video tab and pick the clip; returns (page, summary textbox)."""
    page = browser.new_page()
    page.goto(url, timeout=60_000)
    page.get_by_role("tab", name="video").click()
    with page.expect_file_chooser() as chooser:
        page.locator("#input-video").get_by_text("Click to Upload").click()
    chooser.value.set_files(str(path))
    return page, page.locator("#video-summary textarea")


@needs_browser
def test_video_tab_gives_the_annotated_clip_timeline_people_and_csv(app_url, browser, tmp_path):
    import csv as csv_module
    import urllib.request

    from feredge.benchmarks.synthetic import make_video

    url, _ = app_url
    clip = make_video(tmp_path / "clip.mp4", faces=1, frames=40)
    page, summary = upload_video(browser, url, clip)
    text = wait_for_summary(page, summary, "1 person")
    assert text.startswith("1 person, 40 frames, 1.6 s; top emotion overall: ")
    # The annotated video plays in the browser (VP8 WebM): it has a duration.
    page.wait_for_function("() => { const v = document.querySelector('#annotated-video video');"
                           " return v && v.readyState >= 1 && v.duration > 1; }", timeout=60_000)
    page.wait_for_function("() => { const i = document.querySelector('#timeline img'); return i && i.naturalWidth > 500; }",
                           timeout=30_000)
    table = page.locator("#people").inner_text(timeout=10_000)
    assert "seconds_visible" in table and text.split(": ")[-1] in table  # the person's top emotion is the clip's
    link = page.locator("#events-csv a").first.get_attribute("href", timeout=10_000)
    with urllib.request.urlopen(link if link.startswith("http") else url.rstrip("/") + link) as r:
        rows = list(csv_module.DictReader(r.read().decode().splitlines()))
    assert len(rows) == 40 and {"frame", "time_s", "track_id", "label"} <= set(rows[0])
    page.close()


@needs_browser
def test_video_tab_refuses_a_file_that_is_not_a_video(app_url, browser, tmp_path):
    url, _ = app_url
    bad = tmp_path / "holiday.mp4"
    bad.write_bytes(b"no video here" * 50)
    page, summary = upload_video(browser, url, bad)
    assert wait_for_summary(page, summary, "refused:").startswith("refused: not a video")
    page.close()

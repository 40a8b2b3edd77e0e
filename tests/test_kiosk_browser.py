"""The kiosk page in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): a guest picks
two face photos and a scene, presses the button and sees the portrait with its timing.

Skips only when Chromium, its driver or Selenium is not installed (``scripts/install-dev.sh`` installs them).
Set ``DHUMANDIFF_KIOSK_SCREENSHOT=docs/kiosk.png`` to save the screenshot of the page with its result.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from kiosk_fixtures import FACE_A, FACE_B, KioskServer, decode_data_url, kiosk_bundle  # noqa: E402

from dhumandiff.serve import presets  # noqa: E402
from dhumandiff.contract.images import load_rgb  # noqa: E402

REBOUND = "rebound.test"
TOKEN = "browser-token-0123456789abcdef"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")


def _selenium() -> Any:
    missing = [name for name, found in (("chromium", CHROMIUM), ("chromedriver", DRIVER)) if not found]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: run scripts/install-dev.sh (apt chromium chromium-driver, "
                    "pip selenium)")
    from selenium import webdriver

    return webdriver


def _chromium(tmp_path_factory: pytest.TempPathFactory, *args: str) -> Any:
    """Headless Chromium driven by Selenium, with its own profile and ``args`` added."""
    webdriver = _selenium()
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", *args):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    driver = _chromium(tmp_path_factory, f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1",  # DNS rebinding
                       "--window-size=1000,900", "--hide-scrollbars", "--force-device-scale-factor=1")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    _selenium()  # skip before building anything when the browser is absent
    bundle = kiosk_bundle(tmp_path_factory)
    with KioskServer(bundle, tmp_path_factory.mktemp("kiosk-browser")) as srv:
        yield srv


def _wait(driver: Any, condition: Any, timeout: float = 120) -> Any:
    """Wait for ``condition``; a timeout fails with what the page showed (status line, its class, timing line)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException:
        shown = driver.execute_script(
            "const g = (id) => document.getElementById(id); return g('status') ? [g('status').className, "
            "g('status').textContent, g('timing').textContent, g('found_a') && g('found_a').textContent, "
            "g('found_b') && g('found_b').textContent, g('generate').disabled] : [document.title]")
        raise AssertionError(f"the page did not get there in {timeout} s; it showed {shown}") from None


def _faces_checked(driver: Any) -> None:
    """Wait until the page has checked both photos and shown their faces (or said why not), as a guest sees it
    before pressing Generate: a click while the previews still load can land on a moving page and be lost."""
    _wait(driver, lambda d: d.execute_script(
        "return ['a', 'b'].every((w) => { const t = document.getElementById('found_' + w).textContent;"
        " const i = document.getElementById('preview_' + w);"
        " return t !== '' && !t.startsWith('Looking') && (!i.getAttribute('src') || i.complete); })"), timeout=60)


def _open(driver: Any, url: str) -> None:
    driver.get(url if "?" in url else url + "/")
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def test_guest_uploads_two_faces_and_sees_the_portrait(browser: Any, server: KioskServer, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, server.url)
    assert "tiny-lcm" in browser.find_element(By.ID, "model").text
    browser.find_element(By.ID, "face_a").send_keys(str(FACE_A))
    browser.find_element(By.ID, "face_b").send_keys(str(FACE_B))
    _faces_checked(browser)
    browser.find_element(By.ID, "scene-beach").click()
    browser.find_element(By.ID, "seed").send_keys("3")
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda d: d.execute_script(
        "const i = document.getElementById('result'); return i.complete && i.naturalWidth > 0"))
    timing = browser.find_element(By.ID, "timing").text
    assert timing.startswith("Generated in ") and "4 steps" in timing and "seed 3" in timing, timing
    assert browser.find_element(By.ID, "status").text == ""

    # the picture on the page is the bundle's portrait of these two faces for that scene and seed
    from dhumandiff.runtimes import load_bundle

    beach = next(s.prompt for s in presets.SCENES if s.id == "beach")
    ref = load_bundle(server.bundle, num_threads=1)(load_rgb(FACE_A), load_rgb(FACE_B), beach, seed=3,
                                                    layout=presets.layout_boxes("side-by-side")[1])
    shown = decode_data_url(browser.find_element(By.ID, "result").get_attribute("src"))
    np.testing.assert_array_equal(shown, np.asarray(ref.image))

    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "kiosk.png"
    assert browser.save_screenshot(str(shot))
    screenshot = load_rgb(shot)
    assert screenshot.shape[0] > 300 and screenshot.std() > 10
    target = os.environ.get("DHUMANDIFF_KIOSK_SCREENSHOT")
    if target:
        from PIL import Image

        Image.open(shot).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def test_another_scene_makes_a_new_portrait_of_the_same_photos(browser: Any, server: KioskServer) -> None:
    """"Another scene" sends no photo: the kiosk holds the guest's, skips their faces (the conditioning cache), and
    moves on to the next scene; "New guest" makes it forget them."""
    from selenium.webdriver.common.by import By

    from kiosk_fixtures import client

    _open(browser, server.url)
    assert not browser.find_element(By.ID, "another").is_displayed()
    browser.find_element(By.ID, "face_a").send_keys(str(FACE_A))
    browser.find_element(By.ID, "face_b").send_keys(str(FACE_B))
    _faces_checked(browser)
    browser.find_element(By.ID, "scene-beach").click()
    browser.find_element(By.ID, "seed").send_keys("3")
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda d: d.find_element(By.ID, "another").is_displayed())
    first = browser.find_element(By.ID, "result").get_attribute("src")
    browser.find_element(By.ID, "another").click()
    _wait(browser, lambda d: d.find_element(By.ID, "result").get_attribute("src") not in (first, None, "")
          and not d.find_element(By.ID, "another").get_attribute("disabled"))
    assert browser.find_element(By.ID, "scene-garden").get_attribute("aria-pressed") == "true"
    assert "faces remembered" in browser.find_element(By.ID, "timing").text
    assert browser.find_element(By.ID, "result").get_attribute("data-cache") == "hit"
    from dhumandiff.runtimes import load_bundle

    garden = next(s.prompt for s in presets.SCENES if s.id == "garden")
    ref = load_bundle(server.bundle, num_threads=1)(load_rgb(FACE_A), load_rgb(FACE_B), garden, seed=3,
                                                    layout=presets.layout_boxes("side-by-side")[1])
    shown = decode_data_url(browser.find_element(By.ID, "result").get_attribute("src"))
    np.testing.assert_array_equal(shown, np.asarray(ref.image))

    with client(server.url) as c:
        before = c.get("/api/health").json()
        assert before["guests"] == 1
        browser.find_element(By.ID, "new_guest").click()
        assert not browser.find_element(By.ID, "another").is_displayed()
        _wait(browser, lambda d: c.get("/api/health").json()["guests"] == 0, timeout=10)
        entries = c.get("/api/health").json()["conditioning_cache"]["entries"]
        assert entries == before["conditioning_cache"]["entries"] - 2  # both faces forgotten
    assert browser.find_element(By.ID, "result").get_attribute("src") in (None, "")


def test_guest_sees_why_a_photo_was_refused(browser: Any, server: KioskServer, tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By

    blank = tmp_path / "wall.png"
    Image.new("RGB", (112, 112), (200, 200, 200)).save(blank)
    _open(browser, server.url)
    browser.find_element(By.ID, "face_a").send_keys(str(FACE_A))
    browser.find_element(By.ID, "face_b").send_keys(str(blank))
    _faces_checked(browser)
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("class") == "error")
    assert "no face found" in browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "result").get_attribute("src") in (None, "")


def test_a_page_elsewhere_cannot_use_the_kiosk(browser: Any, server: KioskServer, tmp_path: Path) -> None:
    """DNS rebinding (a name of the attacker's that resolves to 127.0.0.1) and a form on another origin that posts
    to the kiosk: the browser gets the refusal, the kiosk runs nothing."""
    import http.server
    import threading

    import httpx
    from selenium.webdriver.common.by import By

    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as c:
        before = c.get("/api/health").json()
    browser.get(f"http://{REBOUND}:{server.port}/api/health")
    assert "is not one of this kiosk's names" in browser.find_element(By.TAG_NAME, "body").text

    (tmp_path / "index.html").write_text(
        f'<form id="f" method="post" enctype="multipart/form-data" action="{server.url}/api/generate">'
        '<input name="scene" value="beach"><input name="seed" value="1"></form>'
        "<script>document.getElementById('f').submit()</script>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as elsewhere:
        threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
        try:
            browser.get(f"http://127.0.0.1:{elsewhere.server_address[1]}/index.html")
            _wait(browser, lambda d: "cross-site request refused" in d.find_element(By.TAG_NAME, "body").text, 30)
        finally:
            elsewhere.shutdown()
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as c:
        after = c.get("/api/health").json()
    assert (after["completed"], after["refused"]) == (before["completed"], before["refused"])


@pytest.fixture(scope="module")
def token_server(server: KioskServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with KioskServer(server.bundle, tmp_path_factory.mktemp("kiosk-token"), token=TOKEN) as srv:
        yield srv


def test_the_access_link_opens_the_kiosk_and_the_bare_address_does_not(browser: Any, token_server: KioskServer,
                                                                        tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, f"{token_server.url}/?token={TOKEN}")
    assert "token" not in browser.current_url  # taken out of the address bar, kept for the tab
    browser.find_element(By.ID, "face_a").send_keys(str(FACE_A))
    browser.find_element(By.ID, "face_b").send_keys(str(FACE_B))
    _faces_checked(browser)
    browser.find_element(By.ID, "scene-garden").click()
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda d: d.execute_script(
        "const i = document.getElementById('result'); return i.complete && i.naturalWidth > 0"))
    assert browser.find_element(By.ID, "status").text == ""

    # a browser without the link (no token in the tab, no cookie) gets the page but not the kiosk
    browser.delete_all_cookies()
    browser.execute_script("sessionStorage.clear()")
    browser.get(token_server.url + "/")
    _wait(browser, lambda d: "needs its access token" in d.find_element(By.ID, "status").text, 30)
    assert browser.execute_script("return document.body.dataset.ready") is None


def still_to_y4m(image: Any, path: Path, frames: int = 30) -> Path:
    """A Y4M video (Chromium's fake camera reads this format) showing one still: 4:2:0, full-range BT.601 as
    Pillow's YCbCr conversion makes it (``C420jpeg``)."""
    from PIL import Image

    img = Image.open(image).convert("RGB") if not hasattr(image, "convert") else image.convert("RGB")
    w, h = (img.size[0] // 2) * 2, (img.size[1] // 2) * 2
    ycc = img.crop((0, 0, w, h)).convert("YCbCr")
    y, cb, cr = (np.asarray(c, dtype=np.uint8) for c in ycc.split())
    sub = [np.asarray(Image.fromarray(c).resize((w // 2, h // 2), Image.BILINEAR)) for c in (cb, cr)]
    frame = b"FRAME\n" + y.tobytes() + sub[0].tobytes() + sub[1].tobytes()
    path.write_bytes(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode() + frame * frames)
    return path


@pytest.fixture(scope="module")
def camera_browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Headless Chromium whose camera is a fake device playing a still of person a (a tiny-world face, upscaled
    to a webcam-like 448 px)."""
    _selenium()
    from PIL import Image

    folder = tmp_path_factory.mktemp("camera")
    video = still_to_y4m(Image.open(FACE_A).resize((448, 448), Image.NEAREST), folder / "person_a.y4m")
    driver = _chromium(tmp_path_factory, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                       f"--use-file-for-fake-video-capture={video}", "--window-size=1000,1100")
    yield driver
    driver.quit()


def _photograph(browser: Any, who: str) -> None:
    """Open person ``who``'s camera on the page, wait for live video, take the photo."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, f"camera_{who}").click()
    _wait(browser, lambda d: d.execute_script(
        "const v = document.getElementById('camera'); return v.videoWidth > 0 && !v.paused"), timeout=30)
    browser.find_element(By.ID, "snap").click()


def test_guest_is_photographed_by_the_kiosk_camera(camera_browser: Any, server: KioskServer) -> None:
    """Person a from the camera (getUserMedia), person b from a file: each face the kiosk found is shown before
    generating, then the portrait appears; a photo without a face is refused on the spot, in words."""
    from selenium.webdriver.common.by import By

    browser = camera_browser
    _open(browser, server.url)
    _photograph(browser, "a")
    _wait(browser, lambda d: "Face found" in d.find_element(By.ID, "found_a").text, timeout=60)
    face_a = decode_data_url(browser.find_element(By.ID, "preview_a").get_attribute("src"))
    assert face_a.shape[0] == face_a.shape[1] and face_a.std() > 10  # the detected face crop, shown to the guest
    assert browser.execute_script("return document.getElementById('camera_panel').hidden")  # camera released

    blank = Path(browser.capabilities.get("chrome", {}).get("userDataDir", "/tmp")) / "blank.png"
    from PIL import Image

    Image.new("RGB", (112, 112), (200, 200, 200)).save(blank)
    browser.find_element(By.ID, "face_b").send_keys(str(blank))
    _wait(browser, lambda d: "no face found" in d.find_element(By.ID, "found_b").text, timeout=60)
    assert "error" in browser.find_element(By.ID, "found_b").get_attribute("class")

    browser.find_element(By.ID, "face_b").send_keys(str(FACE_B))
    _wait(browser, lambda d: "Face found" in d.find_element(By.ID, "found_b").text, timeout=60)
    browser.find_element(By.ID, "scene-beach").click()
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda d: d.execute_script(
        "const i = document.getElementById('result'); return i.complete && i.naturalWidth > 0"))
    assert browser.find_element(By.ID, "timing").text.startswith("Generated in ")


@pytest.fixture(scope="module")
def real_kiosk(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The kiosk over a bundle for real people: a test-sized official release, converted (official recipe) and
    exported to ONNX with an insightface-format pack (an SCRFD-shaped detector and an ArcFace-shaped recogniser
    built in the test), served torch-free."""
    _selenium()
    pytest.importorskip("insightface")
    from dhumandiff.export.bundle import export_bundle
    from dhumandiff.model.convert import convert_official
    from dhumandiff.model.dhumandiff_model import DHumanDiff
    from face_pack_fixtures import make_pack
    from model_fixtures import official_release

    tmp = tmp_path_factory.mktemp("real-kiosk")
    sdxl, weights, _ = official_release(tmp)
    model = DHumanDiff.from_pretrained(convert_official(sdxl, weights, tmp / "converted"))
    bundle = export_bundle(model, tmp / "bundle", "onnx", face_models=make_pack(tmp / "faces"))
    with KioskServer(bundle, tmp / "kiosk") as srv:
        yield srv


@pytest.fixture(scope="module")
def astronaut_camera(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Headless Chromium whose fake camera shows a real photo (scikit-image's astronaut)."""
    from PIL import Image
    from skimage import data as skdata

    video = still_to_y4m(Image.fromarray(skdata.astronaut()), tmp_path_factory.mktemp("astro") / "astronaut.y4m")
    driver = _chromium(tmp_path_factory, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                       f"--use-file-for-fake-video-capture={video}", "--window-size=1000,1100")
    yield driver
    driver.quit()


def test_kiosk_serves_a_converted_bundle_to_a_real_guest(astronaut_camera: Any, real_kiosk: KioskServer) -> None:
    """A real photo from the camera: the pack finds the largest face and the page says so and shows it; a person
    from the insightface group photo as a file; the portrait appears."""
    import insightface
    from PIL import Image
    from selenium.webdriver.common.by import By

    browser = astronaut_camera
    _open(browser, real_kiosk.url)
    _photograph(browser, "a")
    _wait(browser, lambda d: "using the largest" in d.find_element(By.ID, "found_a").text, timeout=60)
    assert "--face-index" not in browser.find_element(By.ID, "found_a").text  # never a CLI flag for a guest
    face = decode_data_url(browser.find_element(By.ID, "preview_a").get_attribute("src"))
    assert face.shape == (112, 112, 3) and face.std() > 10  # the ArcFace-aligned crop the recogniser sees

    group = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    person = Path(browser.capabilities.get("chrome", {}).get("userDataDir", "/tmp")) / "person_b.jpg"
    Image.open(group).convert("RGB").crop((400, 0, 750, 300)).save(person, quality=95)
    browser.find_element(By.ID, "face_b").send_keys(str(person))
    _wait(browser, lambda d: d.find_element(By.ID, "found_b").text != "" and
          "Looking" not in d.find_element(By.ID, "found_b").text, timeout=60)
    browser.find_element(By.ID, "prompt").send_keys("a man and a woman on the beach")
    browser.find_element(By.ID, "generate").click()
    _wait(browser, lambda d: d.execute_script(
        "const i = document.getElementById('result'); return i.complete && i.naturalWidth > 0"))
    assert browser.find_element(By.ID, "timing").text.startswith("Generated in ")

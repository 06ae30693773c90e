"""The review server's API, and the page in a real headless browser (Debian's chromium through
Selenium): it loads, a click marks a candidate, selection.json changes on disk, a reload shows it."""

import json
import shutil
import threading
import urllib.error
import urllib.request

import pytest

from ipa.select.auto import select
from tests.conftest import skip_unless_ci
from ipa.select.candidates import load_candidates, read_selection, write_selection


@pytest.fixture()
def selection(candidates, tmp_path):
    """A selection.json with made-up auto scores (the scoring itself is tested elsewhere)."""
    scored = {c.key: {"condition": c.condition, "candidate": c.index, "seed": 0, "score": 0.5 + 0.1 * c.index,
                      "scores": {"detection": 1.0, "confidence": 0.9, "jitter": 0.1, "agreement": 0.8}}
              for c in load_candidates(candidates)}
    path = tmp_path / "selection.json"
    write_selection(path, {"version": 1, "candidates": select(scored, top=1)})
    return path


@pytest.fixture()
def server(candidates, selection):
    from ipa.select.review import serve

    srv = serve(candidates, selection, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())


def test_api_labels_and_files(server, selection):
    state = json.loads(urllib.request.urlopen(server + "/api/state").read())
    assert [c["id"] for c in state["conditions"]] == ["clip_a", "clip_b"]
    first = state["conditions"][0]["candidates"][0]
    assert first["crop"]  # the pose has hands: an enlarged crop video was made
    assert _post(server + "/api/label", {"key": first["key"], "label": "good"}) == {"key": first["key"], "human": "good"}
    assert read_selection(selection)["candidates"][first["key"]]["human"] == "good"
    for route in (first["video"], first["crop"], state["conditions"][0]["pose"], state["conditions"][0]["reference"]):
        assert urllib.request.urlopen(server + route).status == 200
    part = urllib.request.urlopen(urllib.request.Request(server + first["video"], headers={"Range": "bytes=0-9"}))
    assert part.status == 206 and len(part.read()) == 10
    with pytest.raises(urllib.error.HTTPError) as e:
        _post(server + "/api/label", {"key": first["key"], "label": "great"})
    assert e.value.code == 400
    for bad in ("/files/../run.json", "/files/clip_a/cand-0/..%2F..%2Frun.json", "/conditions/clip_a/../../manifest.jsonl"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server + bad)
        assert e.value.code == 404


def _chromium():
    """(browser, driver) paths, or a skip saying why (scripts/ensure_chromium.sh installs them)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        skip_unless_ci("selenium is not installed (pip install -e '.[test]')")
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        skip_unless_ci("no chromium + chromedriver on PATH (run scripts/ensure_chromium.sh as root, or apt-get "
                       "install chromium chromium-driver; its log: /tmp/ensure_chromium.log)")
    return browser, driver


def test_review_page_in_headless_chromium(server, selection, tmp_path):
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        wait = WebDriverWait(drv, 20)
        drv.get(server + "/")
        cards = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".cand") or False)
        assert len(cards) == 4
        assert "auto pick" in cards[1].text and "score 0.60 (#1)" in cards[1].text
        assert "auto pick" not in cards[0].text and "score 0.50 (#2)" in cards[0].text

        key = cards[1].get_attribute("data-key")
        cards[1].find_element(By.CSS_SELECTOR, "button.bad").click()  # mouse
        wait.until(lambda d: read_selection(selection)["candidates"][key]["human"] == "bad")
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "saved"))
        drv.save_screenshot(str(tmp_path / "review.png"))

        # keyboard: focus moves right to the next card (clip_b/cand-0), g marks it good
        drv.find_element(By.TAG_NAME, "body").send_keys("\ue014", "g")  # ArrowRight, g
        key2 = cards[2].get_attribute("data-key")
        wait.until(lambda d: read_selection(selection)["candidates"][key2]["human"] == "good")

        drv.refresh()  # the saved state comes back after a reload
        cards = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".cand") or False)
        states = {c.get_attribute("data-key"): c.get_attribute("data-human") for c in cards}
        assert states[key] == "bad" and states[key2] == "good"
        assert "bad" in cards[1].get_attribute("class").split()
        assert sum(v == "" for v in states.values()) == 2

        cards[1].find_element(By.CSS_SELECTOR, "button.bad").click()  # a second click clears
        wait.until(lambda d: read_selection(selection)["candidates"][key]["human"] is None)
    finally:
        drv.quit()

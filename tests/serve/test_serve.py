"""`emoadapt serve` as a real uvicorn process on 127.0.0.1: the JSON API, its limits (each a clear 4xx, never a 5xx),
and the web page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium)."""
from __future__ import annotations

import concurrent.futures
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

httpx = pytest.importorskip("httpx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained):
    corpus, _, models, _ = trained
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "emoadapt.cli", "serve", "--model", str(models["global"]),
                                "--port", str(port), "--max-upload-mb", "0.5", "--max-seconds", "5",
                                "--max-concurrent", "1", "--queue-seconds", "0.05", "--header-timeout", "1",
                                "--no-speech-check"],  # the fixture's emotions are tones, not speech
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
        if process.poll() is not None:
            pytest.fail(f"the server exited: {process.stdout.read().decode()[-2000:]}")
    else:
        process.kill()
        pytest.fail("the server did not answer /health within 120 s")
    yield url, corpus
    process.terminate()
    process.wait(timeout=20)


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_the_api_answers_and_refuses_with_clear_4xx(server):
    url, corpus = server
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["labels"] == corpus.labels
    assert httpx.get(url + "/labels").json() == {"labels": corpus.labels}
    assert "/predict" in httpx.get(url + "/openapi.json").json()["paths"] and httpx.get(url + "/docs").status_code == 200
    clip = Path(corpus.rows[0].path)
    uploaded = httpx.post(url + "/predict", files={"file": (clip.name, clip.read_bytes(), "audio/wav")}, timeout=60)
    assert uploaded.status_code == 200, uploaded.text
    answer = uploaded.json()
    assert answer["source"] == clip.name and answer["label"] in corpus.labels
    assert abs(sum(answer["probabilities"].values()) - 1) < 1e-4 and len(answer["top"]) == 3
    raw = httpx.post(url + "/predict", content=clip.read_bytes(), headers={"X-Filename": clip.name}, timeout=60)
    assert raw.status_code == 200 and raw.json()["probabilities"] == answer["probabilities"]

    too_big = httpx.post(url + "/predict", content=b"\0" * 600_000, timeout=60)
    assert too_big.status_code == 413 and "upload too large: the limit is 524288 bytes" in too_big.json()["detail"]

    def chunks():  # no Content-Length: refused while it arrives
        for _ in range(40):
            yield b"\0" * 20_000
    streamed = httpx.post(url + "/predict", content=chunks(), timeout=60)
    assert streamed.status_code == 413
    long = httpx.post(url + "/predict", content=wav_bytes(6.0), headers={"X-Filename": "long.wav"}, timeout=60)
    assert long.status_code == 413 and "long.wav" in long.json()["detail"] and "tmp" not in long.json()["detail"]
    garbage = httpx.post(url + "/predict", files={"file": ("notes.txt", b"hello, not audio" * 50)}, timeout=60)
    assert garbage.status_code == 422 and "notes.txt" in garbage.json()["detail"]
    assert httpx.post(url + "/predict", content=b"", timeout=60).status_code == 422
    wrong_field = httpx.post(url + "/predict", files={"audio": ("a.wav", clip.read_bytes())}, timeout=60)
    assert wrong_field.status_code == 422 and "'file'" in wrong_field.json()["detail"]


def test_concurrent_requests_beyond_the_limit_get_429_never_5xx(server):
    url, corpus = server
    body = wav_bytes(4.0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: httpx.post(url + "/predict", content=body, timeout=120).status_code,
                              range(8)))
    assert set(codes) <= {200, 429} and 200 in codes, codes


def test_clients_that_never_finish_their_headers_are_closed(server):
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    slow = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: the headers never end
        slow.append(s)
    time.sleep(2.5)
    for s in slow:
        assert s.recv(1024) == b""  # closed by the server after --header-timeout 1
        s.close()
    prompt = socket.create_connection(("127.0.0.1", port), timeout=10)
    prompt.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert prompt.recv(1024).startswith(b"HTTP/1.1 200")
    prompt.close()
    assert httpx.get(url + "/health").status_code == 200


def headless_chromium(*flags: str):
    """Debian's chromium, headless, driven by selenium (skips where it is not installed)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if chromium is None or not Path(driver_path).exists():
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,900", *flags):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_page_uploads_a_clip_and_shows_the_bars(server, tmp_path):
    url, corpus = server
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser = headless_chromium()
    try:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "labels").text != "…")
        clip = corpus.rows[0]
        browser.find_element(By.ID, "file").send_keys(clip.path)
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 120).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#bars .row")) == 4)
        rows = browser.find_elements(By.CSS_SELECTOR, "#bars .row")
        widths = [float(r.find_element(By.CSS_SELECTOR, ".bar").get_attribute("style").split("width:")[1]
                        .split("%")[0]) for r in rows]
        assert abs(sum(widths) - 100) < 1 and browser.find_element(By.ID, "label").text in corpus.labels
        best = browser.find_element(By.CSS_SELECTOR, "#bars .row.best span").text
        assert best == browser.find_element(By.ID, "label").text
        assert browser.find_element(By.ID, "timeline-box").get_attribute("hidden") is not None  # a clip: no timeline
        assert browser.find_element(By.ID, "shares-box").get_attribute("hidden") is not None
        assert browser.find_element(By.ID, "bars-title").text == "Probabilities"
        shot = os.environ.get("EMOADAPT_SCREENSHOT")
        browser.save_screenshot(shot or str(tmp_path / "page.png"))
    finally:
        browser.quit()


def test_reference_clips_adapt_a_speaker_model_for_their_request_only(trained):
    from fastapi.testclient import TestClient

    from emoadapt import Recognizer
    from emoadapt.serve import create_app
    corpus, _, models, encoder = trained
    recognizer = Recognizer.from_pretrained(models["speaker"], encoder=encoder, speech_check=False)
    client = TestClient(create_app(recognizer))
    speaker = [Path(u.path) for u in corpus.rows if u.speaker == "Actor_11"]
    files = [("file", (speaker[0].name, speaker[0].read_bytes()))]
    adapted = client.post("/predict", files=files + [("reference", (p.name, p.read_bytes())) for p in speaker])
    assert adapted.status_code == 200, adapted.text
    answer = adapted.json()
    removed = answer["reference"].pop("emotion_removed")  # the emotion heard in the reference, taken out
    assert answer["reference"] == {"clips": 8, "weight": 1.0, "shrink": 0.0, "balance": 1.0, "spread": "population"}
    assert len(removed) == len(recognizer.labels)
    assert any("reference of 8 clip(s) is small" in w for w in answer["warnings"])
    with pytest.warns(UserWarning):
        expected = Recognizer.from_pretrained(models["speaker"], encoder=encoder,
                                              speech_check=False).adapt(speaker).predict(speaker[0])
    assert np.allclose(list(answer["probabilities"].values()), list(expected.probabilities.values()), atol=1e-5)
    plain = client.post("/predict", files=files).json()  # the next request has no reference: none is kept
    assert plain["reference"] is None and plain["normalization"].startswith("speaker (no reference")
    assert recognizer.reference is None
    text = client.post("/predict", files=files, data={"reference": "me.wav"})
    assert text.status_code == 422 and "takes audio files" in text.json()["detail"]


def test_the_openapi_schema_describes_the_upload_and_the_answers(server):
    url, corpus = server
    schema = httpx.get(url + "/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    form = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["file"] == {"type": "string", "format": "binary", "description": "the recording"}
    assert form["properties"]["reference"]["items"]["format"] == "binary" and form["required"] == ["file"]
    assert {"labels", "abstain"} <= set(form["properties"])
    assert predict["requestBody"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictionOut")
    for code in ("413", "422", "429"):
        assert predict["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    models = schema["components"]["schemas"]
    assert models["PredictionOut"]["properties"]["segments"]["items"]["$ref"].endswith("/SegmentOut")
    for path, model in (("/health", "HealthOut"), ("/labels", "LabelsOut")):
        assert schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
            "$ref"].endswith(model)
    clip = Path(corpus.rows[0].path)
    answer = httpx.post(url + "/predict", files={"file": (clip.name, clip.read_bytes())}, timeout=60).json()
    assert list(answer) == list(models["PredictionOut"]["properties"])  # the model mirrors the JSON, key for key


def test_the_api_docs_render_with_the_network_cut(server):
    """/docs in a browser that reaches nothing but 127.0.0.1: Swagger UI comes from the server itself."""
    url, _ = server
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser = headless_chromium("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                                "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1")
    try:
        browser.set_script_timeout(30)
        browser.get(url + "/docs")
        # the cut holds: a CDN (where FastAPI's own /docs takes Swagger UI from) is out of reach
        assert browser.execute_async_script(
            "const done = arguments[0]; fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css')"
            ".then(() => done('reached'), () => done('unreachable'));") == "unreachable"
        WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= 3)
        operations = " ".join(b.text for b in browser.find_elements(By.CSS_SELECTOR, ".opblock"))
        for path in ("/predict", "/health", "/labels"):
            assert path in operations
        assert "emoadapt" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def long_recording_server(trained, tmp_path_factory):
    """The app in this process (uvicorn in a thread) with recordings up to a minute, and a ~24 s recording of the
    fixture's clips with silences between them, the first one starting at 5.8 s.

    silero-vad hears no speech in the fixture's tones: a long recording of them would be read in windows edge to
    edge, with no gaps to draw. So here the voice detector is one that hears the tones (their level); everything else,
    the model, the windows and the timeline, is the real thing."""
    import threading

    import uvicorn

    from emoadapt import Recognizer
    from emoadapt.inference import segments
    from emoadapt.serve import create_app
    corpus, _, models, encoder = trained
    rate = 16000
    starts = (5.8, 10.0, 13.4, 18.0, 21.6)  # each clip gets a second of context either side: gaps of 0.6-2.4 s
    clips = [next(r for r in corpus.rows if r.label == label) for label in corpus.labels]
    wave = np.zeros(int(24 * rate), np.float32)
    for k, start in enumerate(starts):
        clip, clip_rate = sf.read(clips[k % len(clips)].path, dtype="float32")
        assert clip_rate == rate
        wave[int(start * rate):int(start * rate) + len(clip)] = clip
    path = tmp_path_factory.mktemp("long") / "conversation.wav"
    sf.write(path, wave, rate, subtype="PCM_16")

    def tones(wave, *, max_seconds, pad_seconds, **_):
        frame = int(0.02 * rate)
        loud = np.abs(wave[:len(wave) // frame * frame].reshape(-1, frame)).max(1) > 0.01
        edges = np.flatnonzero(np.diff(np.r_[0, loud.astype(int), 0]))
        pad = int(pad_seconds * rate)
        return [(max(0, a * frame - pad), min(len(wave), b * frame + pad)) for a, b in zip(edges[::2], edges[1::2])]

    patch = pytest.MonkeyPatch()
    patch.setattr(segments, "speech_segments", tones)
    recognizer = Recognizer.from_pretrained(models["global"], encoder=encoder, max_seconds=60, speech_check=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(recognizer), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", corpus, path, starts
    server.should_exit = True
    thread.join(timeout=20)
    patch.undo()


TIMELINE_GEOMETRY = """
const line = document.getElementById('timeline').getBoundingClientRect();
return {line: {left: line.left, width: line.width},
        blocks: [...document.querySelectorAll('#timeline .segment')].map(b => {
          const r = b.getBoundingClientRect();
          return {left: r.left, width: r.width, start: +b.dataset.start, end: +b.dataset.end, label: b.textContent,
                  title: b.title, bare: b.classList.contains('bare'), fits: b.scrollWidth <= b.clientWidth};
        }),
        columns: [...document.querySelectorAll('#lanes .lane')].map(l => l.querySelectorAll('.column').length),
        scroll: document.documentElement.scrollWidth, window: window.innerWidth};
"""


def assert_drawn_in_time(geometry, answer):
    """Each segment at its true place: left edge at start/duration of the timeline's width, width in proportion to
    its duration, and a gap wherever there is one in time."""
    line, blocks, duration = geometry["line"], geometry["blocks"], answer["duration"]
    assert [(b["start"], b["end"]) for b in blocks] == [(s["start"], s["end"]) for s in answer["segments"]]
    for b in blocks:
        assert abs((b["left"] - line["left"]) - b["start"] / duration * line["width"]) <= 2, b
        assert abs(b["width"] - (b["end"] - b["start"]) / duration * line["width"]) <= 2, b
        assert b["label"] in b["title"] and (b["bare"] or b["fits"])  # written in it only where it fits
    for before, after in zip(blocks, blocks[1:]):
        gap = (after["start"] - before["end"]) / duration * line["width"]
        drawn = after["left"] - (before["left"] + before["width"])
        assert abs(drawn - gap) <= 2 and (gap < 1 or drawn > 0.5), (before, after)


def test_the_timeline_draws_segments_where_they_are_in_time_and_plays_them(long_recording_server):
    url, corpus, path, starts = long_recording_server
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    answer = httpx.post(url + "/predict", files={"file": (path.name, path.read_bytes())}, timeout=120).json()
    assert answer["segments"] and answer["segments"][0]["start"] == pytest.approx(starts[0] - 1, abs=0.05)
    gaps = [b["start"] - a["end"] for a, b in zip(answer["segments"], answer["segments"][1:])]
    assert sum(g > 0.4 for g in gaps) == len(starts) - 1  # silence between the clips: the case to draw right

    browser = headless_chromium("--autoplay-policy=no-user-gesture-required")
    try:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "labels").text != "…")
        browser.find_element(By.ID, "file").send_keys(str(path))
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 120).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#timeline .segment"))
        geometry = browser.execute_script(TIMELINE_GEOMETRY)
        assert_drawn_in_time(geometry, answer)
        assert geometry["columns"] == [len(answer["segments"])] * len(corpus.labels)  # a lane per class
        legend = [k.text for k in browser.find_elements(By.CSS_SELECTOR, "#legend .key")]
        assert legend == corpus.labels
        ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#axis .tick")]
        assert ticks[0] == "0 s" and len(ticks) >= 4 and all(t.endswith(" s") for t in ticks)
        # the overall result of a long recording: the shares first, the mean bars after and named as a mean
        shares = browser.find_element(By.ID, "shares-box")
        assert shares.is_displayed() and browser.execute_script(
            "return !!(arguments[0].compareDocumentPosition(document.getElementById('bars')) & 4)", shares)
        assert browser.find_element(By.ID, "bars-title").text.startswith("Mean over the recording")
        parts = browser.find_elements(By.CSS_SELECTOR, "#share-bar .part")
        assert len(parts) == sum(v > 0 for v in answer["shares"].values())

        # a click plays that segment's stretch of the uploaded file and stops at its end
        widest = max(browser.find_elements(By.CSS_SELECTOR, "#timeline .segment"), key=lambda b: b.size["width"])
        start, end = float(widest.get_attribute("data-start")), float(widest.get_attribute("data-end"))
        widest.click()
        WebDriverWait(browser, 20).until(lambda b: b.execute_script(
            "const p = document.getElementById('player'); return !p.paused && p.currentTime > arguments[0]", start))
        WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.getElementById('player').paused"))
        stopped = browser.execute_script("return document.getElementById('player').currentTime")
        assert end - 0.05 <= stopped <= end + 0.25

        # a phone's width: the page does not scroll sideways and the geometry holds
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        time.sleep(0.5)
        phone = browser.execute_script(TIMELINE_GEOMETRY)
        assert phone["window"] == 390 and phone["scroll"] <= phone["window"], phone
        assert_drawn_in_time(phone, answer)
    finally:
        browser.quit()

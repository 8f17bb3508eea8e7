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


def test_the_page_uploads_a_clip_and_shows_the_bars(server, tmp_path):
    url, corpus = server
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if chromium is None or not Path(driver_path).exists():
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
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
    assert answer["reference"] == {"clips": 8, "weight": 1.0, "shrink": 0.0, "balance": 1.0}
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

"""Screenshots of `emoadapt serve`'s page for docs/: real RAVDESS speech through the shipped default model.

    python tools/page_screenshots.py [--ravdess ../shared/data/ravdess] [--out docs]

Builds, in a temporary folder (the corpus's audio never enters the project), (a) a ~30 s "conversation": clips of
two actors taking turns, with pauses between them, and (b) a ~4-minute recording: the 52 clips of Actor_01 that are
in the model's classes (every emotion but calm; Actor_01 is held out of the model's training), each followed by a
pause. Starts `emoadapt serve --model default --max-seconds 300`, uploads each through the page in headless Chromium
(Debian's chromium + chromium-driver) and saves:

    serve-page.png            one clip: the probability bars
    serve-timeline-30s.png    the conversation: shares, timeline with axis and legend, lanes, a segment playing
    serve-timeline-4min.png   the 4-minute recording
    serve-phone.png           the 4-minute recording at a phone's width (390 px)

It prints the segments each recording got. The 4-minute recording takes a minute or more on a laptop's CPU.
"""
from __future__ import annotations

import argparse
import csv
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
# RAVDESS labels the model has (calm has no counterpart in the other corpora and is not one of its classes)
IN_THE_MODEL = ("angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised")


def manifest(ravdess: Path) -> list[dict]:
    with open(ravdess / "manifest.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row["label"] in IN_THE_MODEL]


def joined(clips: list[Path], pauses: list[float], lead: float) -> np.ndarray:
    """The clips one after another, ``lead`` seconds of silence first and pauses[k] after clip k."""
    parts = [np.zeros(int(lead * RATE), np.float32)]
    for clip, pause in zip(clips, pauses):
        wave, rate = sf.read(clip, dtype="float32")
        if rate != RATE:
            raise SystemExit(f"{clip}: {rate} Hz; the corpus copy is 16 kHz")
        parts += [wave, np.zeros(int(pause * RATE), np.float32)]
    return np.concatenate(parts)


def recordings(ravdess: Path, folder: Path) -> dict[str, Path]:
    rows = manifest(ravdess)
    pick = random.Random(22)
    by_actor = {actor: [r for r in rows if r["speaker"] == actor] for actor in ("Actor_01", "Actor_02")}
    # (a) two speakers taking turns, emotions changing, ~30 s
    turns = [pick.choice([r for r in by_actor[actor] if r["label"] == label])
             for actor, label in (("Actor_01", "neutral"), ("Actor_02", "happy"), ("Actor_01", "angry"),
                                  ("Actor_02", "sad"), ("Actor_01", "angry"), ("Actor_02", "surprised"),
                                  ("Actor_01", "neutral"))]
    conversation = joined([ravdess / r["path"] for r in turns], [pick.uniform(0.4, 1.6) for _ in turns], lead=1.5)
    # (b) every in-model clip of Actor_01 (52), shuffled, with pauses: ~4 minutes
    session = by_actor["Actor_01"][:]
    pick.shuffle(session)
    long = joined([ravdess / r["path"] for r in session], [pick.uniform(0.3, 1.2) for _ in session], lead=0.5)
    clip = ravdess / turns[2]["path"]
    paths = {"clip": folder / clip.name, "conversation": folder / "conversation-30s.wav",
             "session": folder / f"session-{len(session)}-clips.wav"}
    shutil.copyfile(clip, paths["clip"])
    sf.write(paths["conversation"], conversation, RATE, subtype="PCM_16")
    sf.write(paths["session"], long, RATE, subtype="PCM_16")
    for name, wave in (("conversation", conversation), ("session", long)):
        print(f"{paths[name].name}: {len(wave) / RATE:.1f} s", flush=True)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int) -> subprocess.Popen:
    import urllib.request
    process = subprocess.Popen([sys.executable, "-m", "emoadapt.cli", "serve", "--model", model, "--port", str(port),
                                "--max-seconds", "300", "--max-upload-mb", "50"])
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"emoadapt serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("emoadapt serve did not answer /health within 300 s")


def browser(width: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if chromium is None or not Path(driver).exists():
        raise SystemExit("needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},900",
                 "--autoplay-policy=no-user-gesture-required", "--hide-scrollbars"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def upload(page, url: str, path: Path) -> dict:
    """Sends ``path`` through the page's form and waits for the result; the Prediction the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    page.get(url + "/")
    WebDriverWait(page, 30).until(lambda b: b.find_element(By.ID, "labels").text != "…")
    page.find_element(By.ID, "file").send_keys(str(path))
    started = time.time()
    page.find_element(By.ID, "send").click()
    WebDriverWait(page, 1200, poll_frequency=1).until(  # the result, or the error the page shows
        lambda b: b.find_element(By.ID, "result").is_displayed()
        or b.find_element(By.ID, "status").get_attribute("class") == "error")
    if not page.find_element(By.ID, "result").is_displayed():
        raise SystemExit(f"{path.name}: {page.find_element(By.ID, 'status').text}")
    shown = page.execute_script("return shown")
    segments = shown["segments"]
    stretches = len(segments) and 1 + sum(b["start"] > a["end"] for a, b in zip(segments, segments[1:]))
    print(f"{path.name}: {shown['duration']:.1f} s recognised in {time.time() - started:.0f} s; "
          f"{len(segments)} segments in {stretches} stretches of speech; label {shown['label']}; shares "
          + ", ".join(f"{c} {v:.0%}" for c, v in sorted(shown["shares"].items(), key=lambda kv: -kv[1]) if v > 0),
          flush=True)
    return shown


def full_page(page, width: int, out: Path, *, mobile: bool = False) -> None:
    """A screenshot of the whole page at ``width`` CSS pixels (the viewport made as tall as the page)."""
    metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": mobile}
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    time.sleep(0.3)  # the timeline fits its labels and axis to the new width
    height = page.execute_script("return document.documentElement.scrollHeight")
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": int(height)})
    time.sleep(0.3)
    overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    if overflow > 0:
        print(f"warning: {out.name}: the page is {overflow} px wider than the window", flush=True)
    page.save_screenshot(str(out))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} ({width} x {height})", flush=True)


def play_a_segment(page) -> None:
    """Clicks the widest segment and lets it play a moment, so that the shot shows the playhead and the player."""
    from selenium.webdriver.common.by import By
    blocks = page.find_elements(By.CSS_SELECTOR, "#timeline .segment")
    if blocks:
        max(blocks, key=lambda b: b.size["width"]).click()
        time.sleep(0.8)
        page.execute_script("document.getElementById('player').pause()")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ravdess", type=Path, default=ROOT.parent / "shared" / "data" / "ravdess")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--model", default="default")
    args = parser.parse_args(argv)
    if not (args.ravdess / "manifest.csv").exists():
        raise SystemExit(f"{args.ravdess}: no RAVDESS copy with a manifest.csv there (--ravdess)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="emoadapt-screenshots-") as tmp:
        paths = recordings(args.ravdess, Path(tmp))
        port = free_port()
        server = start_server(args.model, port)
        url = f"http://127.0.0.1:{port}"
        page = browser(1000)
        try:
            upload(page, url, paths["clip"])
            full_page(page, 1000, args.out / "serve-page.png")
            upload(page, url, paths["conversation"])
            play_a_segment(page)
            full_page(page, 1000, args.out / "serve-timeline-30s.png")
            upload(page, url, paths["session"])
            full_page(page, 1000, args.out / "serve-timeline-4min.png")
            full_page(page, 390, args.out / "serve-phone.png", mobile=True)
        finally:
            page.quit()
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

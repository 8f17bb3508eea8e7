"""The README's examples, run as written: every `emoadapt` line of its bash blocks (but `serve`, which
tests/serve/ starts) and its Python block, in a folder laid out with the files they name (fixture corpora for
`my-corpus/` and `../shared/data/...`, real speech for `call.wav`), with the shipped model and the embedded encoder."""
from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest
from corpus_fixtures import make_ased, make_emovo, make_ravdess
from hub_fixtures import lay_out_cache

from emoadapt import cli

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[list[str]]:
    """Every `emoadapt ...` command of the README's bash blocks (continuations joined, comments and redirections
    dropped), in order."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["emoadapt"]:
                out.append(words[1: words.index(">")] if ">" in words else words[1:])
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """tmp/work (the working folder) beside tmp/shared/data (fixture corpora), with the README's files."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    data = root / "shared" / "data"
    make_ravdess(data / "ravdess", actors=4, seconds=0.6)
    make_emovo(data / "emovo", speakers=("f1", "f2", "m1", "m2"), sentences=("b1",), seconds=0.6)
    make_ased(data / "ased", speakers=4, seconds=0.6)
    shutil.copytree(data / "ravdess", work / "my-corpus")
    from emoadapt.cli.paths import shared_corpus
    if shared_corpus("ravdess") is None:
        pytest.skip("the README's examples label real speech: ../shared/data/ravdess is not here")
    speech = sorted((shared_corpus("ravdess") / "Actor_02").iterdir())
    (work / "recordings").mkdir(parents=True)
    (work / "calls").mkdir()
    for k, clip in enumerate(speech[:3]):
        shutil.copy(clip, work / "recordings" / clip.name)
        shutil.copy(clip, work / "calls" / clip.name)
    import soundfile as sf
    wave, rate = sf.read(speech[0])
    sf.write(work / "call.wav", wave, rate)
    return work


def test_every_readme_command_runs(folder, monkeypatch, capsys):
    """``push`` needs the Hub: here the pushed folder is laid out in a Hub cache as a download would leave it, and
    the commands after it run with HF_HUB_OFFLINE."""
    import huggingface_hub
    monkeypatch.chdir(folder)
    run = [c for c in commands() if c[0] not in ("serve", "demo")]  # demo: `make demo`, tests/cli; serve: tests/serve
    assert [c[0] for c in run].count("predict") >= 4 and "cv" in [c[0] for c in run] and "push" in [c[0] for c in run]
    for words in run:
        if words[0] in ("extract", "cv", "predict"):
            words = [*words, "--no-progress"]
        if words[0] == "push":
            repo = words[words.index("--repo") + 1]
            lay_out_cache(folder / "hub-cache", repo, {"3" * 40: Path(words[1])}, {"main": "3" * 40})
            monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder / "hub-cache"))
            monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
            continue
        assert cli.main(words) == 0, " ".join(words) + "\n" + capsys.readouterr().err
    assert Path("runs/mine/final/model/model.json").is_file() and Path("runs/loco/final/model/model.json").is_file()


def test_the_readme_python_block_runs(folder, monkeypatch):
    monkeypatch.chdir(folder)
    for code in blocks("python"):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(README), "exec"), {})
        assert printed.getvalue().strip()

"""Models by name on the Hugging Face Hub, offline: a model folder exported as a Hub repository, laid out in a cache
the way the Hub client lays out its downloads (blobs, refs, snapshots of symlinks), then found by
``Recognizer.from_pretrained("org/name")`` and ``predict --model org/name`` with revisions pinned and
HF_HUB_OFFLINE set; ``push`` against a stand-in for the Hub's API."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hub_fixtures import lay_out_cache

from emoadapt import cli
from emoadapt.errors import EmoadaptError

pytestmark = pytest.mark.usefixtures("one_thread")
huggingface_hub = pytest.importorskip("huggingface_hub")

MAIN, V1 = "1" * 40, "2" * 40  # commit hashes of the two revisions laid out


@pytest.fixture(scope="module")
def hub_cache(trained, tmp_path_factory):
    """org/emotion: main = the speaker-normalised model, tag v1 = the global one."""
    from emoadapt.modelfolder.hub import save_pretrained
    corpus, _, models, _ = trained
    root = tmp_path_factory.mktemp("hub")
    exported = {name: save_pretrained(models[name], root / f"export-{name}", license="cc-by-nc-sa-4.0",
                                      datasets=["ravdess"]) for name in ("speaker", "global")}
    cache = root / "cache"
    lay_out_cache(cache, "org/emotion", {MAIN: exported["speaker"], V1: exported["global"]}, {"main": MAIN, "v1": V1})
    return cache, exported, corpus


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_export_writes_a_hub_repository_with_a_card_the_hub_reads(hub_cache):
    _, exported, corpus = hub_cache
    folder = exported["speaker"]
    assert {p.name for p in folder.iterdir()} == {"README.md", "model.json", "model.safetensors", "seen.json",
                                                  "reference.safetensors"}
    text = (folder / "README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])  # the YAML block the Hub parses
    assert header["license"] == "cc-by-nc-sa-4.0" and header["library_name"] == "emoadapt"
    assert header["datasets"] == ["ravdess"] and "speech-emotion-recognition" in header["tags"]
    assert header["pipeline_tag"] == "audio-classification" and header["metrics"] == ["unweighted_accuracy"]
    result = header["model-index"][0]["results"][0]
    assert result["metrics"][0]["type"] == "unweighted_accuracy" and 0 <= result["metrics"][0]["value"] <= 100
    card = huggingface_hub.ModelCard(text)  # the Hub client's own parser agrees
    assert card.data.license == "cc-by-nc-sa-4.0" and card.data.eval_results[0].metric_value == \
        result["metrics"][0]["value"]
    assert "Recognizer.from_pretrained" in text and ", ".join(corpus.labels) in text
    with pytest.raises(EmoadaptError, match="exists and is not empty"):
        from emoadapt.modelfolder.hub import save_pretrained
        save_pretrained(folder, folder)
    with pytest.raises(EmoadaptError, match="is a file"):
        save_pretrained(folder, folder / "README.md")


def test_from_pretrained_finds_the_cached_model_offline_and_pins_revisions(hub_cache, offline):
    from emoadapt import Recognizer
    cache, _, corpus = hub_cache
    latest = Recognizer.from_pretrained("org/emotion", cache_dir=cache, speech_check=False)
    assert latest.trained_normalization == "speaker" and latest.model_dir.name == MAIN
    tagged = Recognizer.from_pretrained("org/emotion@v1", cache_dir=cache, speech_check=False)
    pinned = Recognizer.from_pretrained("hf:org/emotion", revision=V1, cache_dir=cache, speech_check=False)
    assert tagged.trained_normalization == pinned.trained_normalization == "global"
    clip = corpus.rows[0].path
    assert tagged.predict(clip).probabilities == pinned.predict(clip).probabilities
    with pytest.raises(EmoadaptError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        Recognizer.from_pretrained("org/emotion@v2", cache_dir=cache)
    with pytest.raises(EmoadaptError, match="not in the local Hugging Face cache"):
        Recognizer.from_pretrained("hf:org/other", cache_dir=cache)
    with pytest.raises(EmoadaptError, match="two revisions"):
        Recognizer.from_pretrained("org/emotion@v1", revision=MAIN, cache_dir=cache)


def test_a_tampered_download_is_refused_like_a_local_folder(hub_cache, offline, tmp_path):
    from emoadapt import Recognizer
    cache, _, _ = hub_cache
    storage = cache / "models--org--emotion"
    bad = tmp_path / "cache"
    import shutil
    shutil.copytree(storage, bad / storage.name, symlinks=True)
    weights = bad / storage.name / "snapshots" / V1 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    target = weights.resolve()
    weights.unlink()
    weights.write_bytes(bytes(data))  # the snapshot's file now differs from what model.json's sha256 says
    assert target.exists()
    with pytest.raises(EmoadaptError, match="sha256"):
        Recognizer.from_pretrained("org/emotion@v1", cache_dir=bad)


def test_predict_takes_a_hub_name_with_hf_hub_offline(hub_cache, tmp_path):
    cache, _, corpus = hub_cache
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "emoadapt.cli", "predict", corpus.rows[0].path, "--model",
                          "org/emotion@v1", "--json", "--no-speech-check", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert Path(report["model"]).name == V1 and report["predictions"][0]["label"] in corpus.labels
    missing = subprocess.run([sys.executable, "-m", "emoadapt.cli", "predict", corpus.rows[0].path, "--model",
                              "someone/nothing", "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2 and "no such local model folder, and as a Hugging Face Hub model" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_push_uploads_only_the_model_files(hub_cache, monkeypatch, capsys):
    _, exported, _ = hub_cache
    calls = {}

    class FakeApi:  # the Hub's API, which this machine cannot reach
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["create"] = (repo_id, private, exist_ok)

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/x"})()
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert cli.main(["push", str(exported["global"]), "--repo", "org/emotion", "--private"]) == 0
    assert calls["create"] == ("org/emotion", True, True)
    assert calls["upload"]["folder_path"] == str(exported["global"]) and "README.md" in calls["upload"]["allow_patterns"]
    assert not any(p.endswith(".py") for p in calls["upload"]["allow_patterns"])
    assert "pushed: https://huggingface.co/org/emotion/commit/x" in capsys.readouterr().out
    assert cli.main(["push", str(exported["global"]), "--repo", "not a repo"]) == 2
    assert "not a Hub repository id" in capsys.readouterr().err
    assert cli.main(["push", str(exported["global"].parent), "--repo", "org/emotion"]) == 2
    assert "not a Hub-ready model folder" in capsys.readouterr().err


def test_export_format_hub_from_the_command_line(trained, tmp_path, capsys):
    _, _, models, _ = trained
    out = tmp_path / "repo"
    assert cli.main(["export", "--model", str(models["global"]), "--format", "hub", "--out", str(out),
                     "--license", "mit"]) == 0
    assert "emoadapt push" in capsys.readouterr().out and (out / "README.md").is_file()
    assert cli.main(["export", "--model", str(models["global"]), "--format", "hub"]) == 2
    assert "--format hub needs --out" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("not json")
    assert cli.main(["export", "--model", str(models["global"]), "--format", "hub", "--out", str(tmp_path / "none"),
                     "--results", str(tmp_path / "junk.json")]) == 2
    assert "not a results.json of a cv run" in capsys.readouterr().err and not (tmp_path / "none").exists()


@pytest.mark.parametrize("error, message", [
    ("RepositoryNotFoundError", "no such model on the Hugging Face Hub"),
    ("RevisionNotFoundError", "has no revision 'v9'"),
    ("GatedRepoError", "a gated model"),
])
def test_what_the_hub_answers_becomes_one_line(monkeypatch, error, message):
    """The Hub's refusals (which this machine cannot get from the Hub itself), as the client raises them."""
    import httpx2
    from huggingface_hub import errors

    from emoadapt.modelfolder import resolve_model
    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/models/org/x"))

    def refuse(*args, **kwargs):
        raise getattr(errors, error)("refused", response=response)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(EmoadaptError, match=message) as caught:
        resolve_model("org/x@v9")
    assert str(caught.value).count("no such local model folder") == 1

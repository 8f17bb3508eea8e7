"""Model folders on the Hugging Face Hub: ``Recognizer.from_pretrained("org/name")`` downloads one (pinned to a
revision, kept in the Hub client's cache, offline with ``HF_HUB_OFFLINE=1`` once cached), and :func:`save_pretrained`
writes a model folder as a Hub repository (the files below and a ``README.md`` model card whose YAML header the Hub
reads: licence, library, tags, datasets, metrics) that ``emoadapt push`` uploads.

Only the files of a model folder are ever downloaded (:data:`HUB_FILES`: JSON, safetensors and ONNX, never code),
and the snapshot is then loaded like any local folder: the weights' sha256 and sizes are checked against
``model.json`` (:mod:`emoadapt.modelfolder.format`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..atomic import atomic_write, atomic_write_text
from ..errors import EmoadaptError
from .format import CONFIG, WEIGHTS, read_classifier
from .reference import REFERENCE
from .seen import SEEN

HUB_FILES = [CONFIG, WEIGHTS, SEEN, REFERENCE, "model.onnx", "encoder.onnx", "README.md", "bundle.json"]
CARD = "README.md"
HUB_PREFIX = "hf:"  # "hf:org/name" is always the Hub; a bare "org/name" is the Hub when no such local path exists
LIBRARY = "emoadapt"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_hub_name(name: str) -> tuple[str, str | None] | None:
    """(repo id, revision) of ``[hf:]org/name[@revision]``, or None when ``name`` is not shaped like one."""
    text = name[len(HUB_PREFIX):] if name.startswith(HUB_PREFIX) else name
    repo_id, _, revision = text.partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or (_ and not revision):
        return None
    return repo_id, revision or None


def download_model(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The snapshot folder of a model repository on the Hub (downloaded into the Hub client's cache, or found there
    when offline). Errors say what is wrong and what to do."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError:
        raise EmoadaptError(repo_id, "models from the Hugging Face Hub need huggingface_hub: pip install "
                                     "huggingface_hub") from None
    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=HUB_FILES)
    except GatedRepoError:
        raise EmoadaptError(where, "a gated model on the Hugging Face Hub: accept its terms on its page, then log in "
                                   "(hf auth login) or set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise EmoadaptError(where, "no such model on the Hugging Face Hub (or it is private: log in with hf auth "
                                   "login or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise EmoadaptError(where, f"the model on the Hub has no revision {revision!r}: give a branch, tag or "
                                   f"commit it has") from None
    except LocalEntryNotFoundError:
        raise EmoadaptError(where, "not in the local Hugging Face cache, and the Hub cannot be reached (offline, or "
                                   "HF_HUB_OFFLINE=1): download it once with a network, or give a local model "
                                   "folder") from None
    except (HfHubHTTPError, OSError) as error:
        raise EmoadaptError(where, f"the Hugging Face Hub did not give the model ({type(error).__name__}: "
                                   f"{str(error).splitlines()[0] if str(error) else 'no detail'})") from None
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise EmoadaptError(where, f"the Hub repository holds no emoadapt model ({CONFIG} is missing); emoadapt "
                                   f"reads repositories written by `emoadapt export --format hub`")
    return folder


def save_pretrained(model: str | os.PathLike, out: str | os.PathLike, *, license: str | None = None,
                    datasets: list[str] | None = None, results: str | os.PathLike | None = None,
                    force: bool = False) -> Path:
    """Write ``model`` (a model folder or run folder) into ``out`` as a Hub repository: its files and a model card.
    ``license``: an SPDX id or "other" (the Hub's metadata field); ``datasets``: Hub dataset ids or corpus names;
    ``results``: a cv ``results.json`` whose means go into the card's metrics (else only validation UA)."""
    folder, info = read_classifier(model)
    figures = _read_results(results) if results else None  # a bad --results is refused before anything is written
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EmoadaptError(out, "is a file: --out names the folder to write the Hub repository into")
    if out.exists() and any(out.iterdir()) and not force:
        raise EmoadaptError(out, "the folder exists and is not empty: choose another --out, or --force to replace "
                                 "the model files in it")
    out.mkdir(parents=True, exist_ok=True)
    for name in HUB_FILES:
        if name != CARD and (folder / name).is_file():
            atomic_write(out / name, lambda tmp, source=folder / name: shutil.copyfile(source, tmp))
    atomic_write_text(out / CARD, model_card(folder, info, license=license, datasets=datasets,
                                             results=figures))
    return out


def model_card(folder: Path, info: dict, *, license: str | None = None, datasets: list[str] | None = None,
               results: dict | None = None) -> str:
    """A Hub model card: the YAML metadata (through huggingface_hub's ModelCardData, so the Hub parses it) and a
    body with how to use it, the classes, the encoder and the figures (the folder's own MODEL_CARD.md when it has
    one)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    name = folder.name if folder.name != "model" else folder.parent.name
    corpus = (info.get("corpus") or {}).get("name") or "unknown"
    evals = []
    if info.get("best_val_ua") is not None:
        evals.append(EvalResult(task_type="audio-classification", dataset_type=corpus, dataset_name=corpus,
                                dataset_split="validation speakers", metric_type="unweighted_accuracy",
                                metric_name="UA (validation speakers)", metric_value=round(info["best_val_ua"], 2)))
    if results:
        kind = (results.get("protocol") or {}).get("kind", "cross-validation")
        for key, metric in (("ua", "unweighted_accuracy"), ("wa", "accuracy"), ("macro_f1", "f1")):
            value = (results.get("mean_std") or {}).get(key, {}).get("mean")
            if value is not None:
                evals.append(EvalResult(task_type="audio-classification", dataset_type=corpus, dataset_name=corpus,
                                        dataset_split=kind, metric_type=metric,
                                        metric_name=f"{key.upper()} ({kind}, mean over folds)",
                                        metric_value=round(value, 2)))
    data = ModelCardData(license=license or "other", library_name=LIBRARY, pipeline_tag="audio-classification",
                         tags=["speech-emotion-recognition", "emoadapt", info.get("encoder", {}).get("name", "")],
                         datasets=datasets or [corpus], metrics=sorted({e.metric_type for e in evals}) or None,
                         model_name=name, eval_results=evals or None)
    own = folder / "MODEL_CARD.md"
    encoder = info.get("encoder") or {}
    body = own.read_text(encoding="utf-8") if own.is_file() else (
        f"# {name}\n\nAn emoadapt speech emotion model: recipe **{(info.get('build') or {}).get('recipe', '?')}** on "
        f"the frozen encoder `{encoder.get('name', '?')}` (layers {encoder.get('layers')}), trained on {corpus}.\n")
    usage = (f"\n## Use\n\n```bash\npip install emoadapt\nemoadapt predict call.wav --model <org>/<name>\n```\n\n"
             f"```python\nfrom emoadapt import Recognizer\nrecognizer = Recognizer.from_pretrained(\"<org>/<name>\")\n"
             f"print(recognizer.predict(\"call.wav\").label)\n```\n\nClasses: {', '.join(info['labels'])}. "
             f"Normalisation: {(info.get('config') or {}).get('normalize', 'global')}.\n")
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + body + usage))


def _read_results(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EmoadaptError(path, f"not a results.json of a cv run ({error})") from None
    if not isinstance(results, dict) or "mean_std" not in results:
        raise EmoadaptError(path, "not a results.json of a cv run (no mean_std)")
    return results


def push(folder: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
         message: str = "emoadapt model") -> str:
    """Upload a folder written by :func:`save_pretrained` to the Hub (creates the repository when missing); the
    commit's URL. Needs a token (hf auth login or HF_TOKEN) and a network."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / CARD).is_file():
        raise EmoadaptError(folder, f"not a Hub-ready model folder (needs {CONFIG} and {CARD}): write one with "
                                    f"emoadapt export --format hub --model MODEL --out DIR")
    if parse_hub_name(repo_id) is None or "@" in repo_id or repo_id.startswith(HUB_PREFIX):
        raise EmoadaptError(repo_id, "not a Hub repository id: give owner/name")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                                 allow_patterns=HUB_FILES, commit_message=message)
    except (HfHubHTTPError, OSError) as error:
        raise EmoadaptError(repo_id, f"the upload failed ({type(error).__name__}: "
                                     f"{str(error).splitlines()[0] if str(error) else 'no detail'}); check the token "
                                     f"(hf auth login, HF_TOKEN) and the network") from None
    return str(getattr(info, "commit_url", info))

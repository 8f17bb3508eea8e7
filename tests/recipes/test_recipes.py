"""The paper-setting recipe, end to end on a generated IEMOCAP-layout corpus with a tiny random HuBERT."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from tiny_settings import TINY
from emoadapt.training.settings import load_config

from corpus_fixtures import make_iemocap

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "iemocap-hubert-large.sh"
TINY_RECIPE = [*TINY, "pretrain.epochs=1", "stage2.epochs=2"]


def test_packaged_paper_config_holds_method_defaults():
    config = load_config("iemocap-hubert-large")
    assert (config.adapter.dim, config.adapter.num_layers, config.adapter.num_heads) == (384, 3, 6)
    assert (config.pretrain.mask_weight, config.pretrain.sd_weight, config.pretrain.la_weight) == (1.0, 1.0, 1.0)
    assert (config.stage2.lr, config.stage2.head_lr, config.stage2.epochs) == (1e-4, 1e-3, 40)


def test_iemocap_recipe_runs_all_five_sessions_with_a_tiny_random_hubert(tmp_path):
    import torch
    from transformers import AutoModel, HubertConfig, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    hubert = tmp_path / "tiny-hubert"  # HuBERT-large's structure (layer norm, stable layer norm), toy sizes
    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          conv_dim=(16, 16, 16), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8),
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
                          do_stable_layer_norm=True)
    AutoModel.from_config(config).save_pretrained(hubert)
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(hubert)
    iemocap = make_iemocap(tmp_path / "IEMOCAP_full_release", utts_per_session=12, seconds=(0.6, 1.2))
    work = tmp_path / "work"
    env = {**os.environ, "ENCODER": f"hf:{hubert}", "DEVICE": "cpu", "EMOADAPT": f"{sys.executable} -m emoadapt.cli"}
    args = [x for item in TINY_RECIPE for x in ("--set", item)]
    result = subprocess.run(["bash", str(RECIPE), str(iemocap), str(work), "--no-progress", *args], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((work / "cv-full" / "results.json").read_text())
    assert results["protocol"]["corpus"] == "iemocap" and results["protocol"]["view"] == "4class"
    assert sorted(results["folds"]) == ["1", "2", "3", "4", "5"]
    assert results["classes"] == ["neutral", "happy", "angry", "sad"]
    assert results["encoder"]["fingerprint"].startswith("hf:")
    assert (work / "cv-full" / "confusion.png").is_file()
    for k in range(1, 6):  # stage 1 ran on each fold before stage 2
        assert (work / "cv-full" / f"fold_{k}" / "stage1").is_dir()


def test_results_recipe_gives_one_command_per_row(tmp_path):
    """recipes/results-cpu.sh with `echo` in place of emoadapt: which commands each row of docs/RESULTS.md runs."""
    script = RECIPE.parent / "results-cpu.sh"
    env = {**os.environ, "EMOADAPT": "echo emoadapt", "PYTHON": "echo python", "WORK": str(tmp_path), "SEEDS": "0 2"}

    def commands(*rows):
        done = subprocess.run(["bash", str(script), *rows], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()[:-1]  # the last line is the closing `emoadapt compare`

    out = tmp_path / "results"
    full = commands("ravdess-full")
    assert full[0].startswith("emoadapt pretrain --store " + str(tmp_path / "features" / "unlabeled-whisper-base"))
    assert [c.split("--seed ")[1] for c in full[1:]] == [f"0 --out {out}/ravdess-full-s0", f"2 --out {out}/ravdess-full-s2"]
    assert all("--recipe full --stage1 " + str(out / "stage1-pool") in c and "--config cpu" in c for c in full[1:])
    ablation = commands("ravdess-no-la")
    assert "--no-la-loss" in ablation[0] and ablation[0].endswith(str(out / "stage1-pool-no-la"))
    assert "--stage1 " + str(out / "stage1-pool-no-la") in ablation[1] and "--recipe full" in ablation[1]
    frozen = commands("ravdess-full-freeze3")
    assert all("stage2.freeze_adapter_epochs=3" in c and "--stage1 " + str(out / "stage1-pool") in c for c in frozen[1:])
    more_audio = commands("ravdess-full-pool-emovo")
    assert "--store " + str(tmp_path / "features" / "emovo-whisper-base") in more_audio[0]
    assert all("--stage1 " + str(out / "stage1-pool-emovo") in c for c in more_audio[1:]) and len(more_audio) == 3
    longer = commands("ravdess-full-stage1-16ep")
    assert "pretrain.epochs=16" in longer[0] and "--stage1 " + str(out / "stage1-pool-16ep") in longer[1]
    (out / "stage1-pool-no-sd").mkdir(parents=True)
    (probe,) = commands("ravdess-stage1-probes")  # only the stage-1 runs that exist
    assert "--adapter " + str(out / "stage1-pool-no-sd") in probe and probe.startswith("python bench/linear_probe.py")
    (emovo,) = commands("emovo-emobox")
    assert "--corpus ../shared/data/emovo" in emovo and "--recipe emobox --seed 0" in emovo
    listed = subprocess.run(["bash", str(script), "--list"], capture_output=True, text=True).stdout.split()
    (stats,) = commands("ravdess-stats")
    assert "--recipe stats --seed 0" in stats and stats.endswith(f"--out {out}/ravdess-stats-s0")
    curve = commands("calibration-curve")
    assert len(curve) == 10 and all("--recipe stats --normalize speaker" in c for c in curve)
    assert sum("calibration.clips=5" in c for c in curve) == 2 and "calibration.only_label=neutral" in curve[4]
    calibrated = commands("emovo-full-speaker")
    assert "--corpus ../shared/data/unlabeled --normalize speaker" in calibrated[0]
    assert all("--stage1 " + str(out / "stage1-pool-speaker") in c and "--normalize speaker" in c
               for c in calibrated[1:]) and len(calibrated) == 3
    sweep = commands("regularisation")
    assert len(sweep) == 7 and all("trainer.precision=bf16-mixed" in c and "--recipe adapter" in c for c in sweep)
    assert "stage2.mixup_alpha=0.4" in sweep[3] and sweep[3].endswith(f"{out}/ravdess-adapter-mixup-s0")
    assert "--set stage2.label_smoothing=0.1 --set stage2.mixup_alpha=0.4" in sweep[6]
    (superb,) = commands("emovo-superb-speaker")
    assert "--recipe superb --normalize speaker --seed 0" in superb and superb.endswith(f"{out}/emovo-superb-speaker-s0")
    started = commands("ravdess-adapter-from-stats-smooth")
    assert all("head.start_from_statistics=true" in c and "stage2.label_smoothing=0.1" in c for c in started)
    assert "label_smoothing" not in commands("emovo-adapter-from-stats")[0]
    per_fold = commands("ravdess-full-per-fold")
    assert per_fold[0].startswith("emoadapt extract ../shared/data/unlabeled")
    assert all("--recipe full --unlabeled-store " + str(tmp_path / "features" / "unlabeled-whisper-base") in c
               and "--stage1" not in c for c in per_fold[1:]) and len(per_fold) == 3
    cross = commands("cross-corpus")
    assert len(cross) == 8 and all("--label-map shared7" in c for c in cross)
    assert "--fold all --recipe stats --normalize speaker" in cross[2] and "--corpus ../shared/data/emovo" in cross[3]
    assert len(listed) == 42 and all(len(commands(r)) >= 1 for r in listed)
    bad = subprocess.run(["bash", str(script), "nope"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown row nope" in bad.stderr


def test_loco_recipe_gives_one_command_per_row(tmp_path):
    """recipes/loco-cpu.sh with `echo` in place of emoadapt: every leave-one-corpus-out row of docs/RESULTS.md runs
    `cv --protocol corpus` on the merged corpus, each with its own settings and output folder."""
    script = RECIPE.parent / "loco-cpu.sh"
    env = {**os.environ, "EMOADAPT": "echo emoadapt", "PYTHON": "echo python", "WORK": str(tmp_path), "SEEDS": "0 2"}

    def commands(*rows):
        done = subprocess.run(["bash", str(script), *rows], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    loco = tmp_path / "loco"
    merge, extract = commands("loco-features")
    assert merge.startswith("emoadapt merge ../shared/data/ravdess ../shared/data/emovo ../shared/data/ased")
    assert merge.endswith(f"--label-map shared7 --out {loco}/ravdess-emovo-ased")
    assert extract == f"emoadapt extract {loco}/ravdess-emovo-ased --store {loco}/features-whisper-base --no-progress"
    (loco / "ravdess-emovo-ased").mkdir(parents=True)
    (loco / "ravdess-emovo-ased" / "manifest.csv").write_text("path,label,speaker,corpus\n")
    assert len(commands("loco-features")) == 1  # the merge is not redone
    (speaker,) = commands("loco-stats-speaker-balanced")
    assert "--protocol corpus --recipe stats" in speaker and "--normalize speaker" in speaker
    assert "--set head.class_weight=balanced" in speaker and "--set choose_by=corpus" in speaker
    assert speaker.endswith(f"--out {loco}/stats-speaker-balanced")
    (references,) = commands("loco-references-balanced")
    assert references.startswith("python tools/reference_conditions.py") and f"--run {loco}/stats-speaker-balanced" in references
    (shrunk,) = commands("loco-stats-speaker-shrunk")  # the balanced speaker row, its training speakers shrunk
    assert shrunk.replace(" --set calibration.train_shrink=50", "").replace("-shrunk", "-balanced") == speaker
    (references,) = commands("loco-references-shrunk")
    assert f"--run {loco}/stats-speaker-shrunk" in references
    assert references.endswith(f"{loco}/references-shrunk.json")
    pairs = commands("loco-stage1-pairs")
    assert [c.split("--out ")[1] for c in pairs] == [f"{loco}/{r}" for r in
                                                   ("adapter-s0", "full-test-audio-s0", "adapter-s2", "full-test-audio-s2")]
    assert all("pretrain.test_audio=true" in c for c in pairs[1::2]) and "test_audio" not in pairs[0]
    for row, setting in (("loco-stage1-frozen", "stage2.freeze_adapter_epochs=3"), ("loco-stage1-slowed", "stage2.lr=1e-4")):
        variant = commands(row)  # on each pair's own stage 1, so paired with adapter-s<seed>
        assert [c.split("--stage1-from ")[1].split()[0] for c in variant] == [f"{loco}/full-test-audio-s{s}" for s in (0, 2)]
        assert all(setting in c and "pretrain.test_audio=true" in c for c in variant)
    started = commands("loco-stage1-stats-start")
    assert all("head.start_from_statistics=true" in c for c in started) and "--stage1-from" not in started[0]
    assert started[1].endswith(f"--stage1-from {loco}/full-test-audio-s0 --out {loco}/full-test-audio-stats-start-s0")
    shared = commands("loco-stage1-target-share")  # paired with loco-stage1-calibrated's adapter side
    calibrated = commands("loco-stage1-calibrated")
    assert [c.replace(" --set pretrain.test_audio_share=0.5", "").replace("-share", "").replace(" --folds 1,2,3", "")
            for c in shared] == calibrated[1::2]
    sources = commands("loco-stage1-sources")
    assert [c.split("--out ")[1] for c in sources] == [f"{loco}/full-sources-s0", f"{loco}/full-sources-s2"]
    assert all("--recipe full" in c and "test_audio" not in c for c in sources)
    calibrated, calibrated_sources = commands("loco-stage1-calibrated"), commands("loco-stage1-calibrated-sources")
    assert [c.split("--out ")[1] for c in calibrated_sources] == [f"{loco}/full-sources-speaker-s{s}" for s in (0, 2)]
    # the control is the calibrated pair's stage-1 side without the target's audio, nothing else changed
    assert [c.replace(" --set pretrain.test_audio=true", "").replace("full-test-audio-", "full-sources-")
            for c in calibrated[1::2]] == calibrated_sources
    listed = subprocess.run(["bash", str(script), "--list"], capture_output=True, text=True).stdout.split()
    assert "loco-stage1-pairs" not in listed and "loco-references-balanced" in listed
    outs = [c.split("--out ")[-1] for r in listed[1:] for c in commands(r) if "--out" in c]
    assert len(outs) == len(set(outs)), "two rows write the same run folder"
    bad = subprocess.run(["bash", str(script), "nope"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown row nope" in bad.stderr

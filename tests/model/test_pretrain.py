"""Stage 1 pieces, each alone, then the whole objective on structured synthetic features (CPU, d = 32)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emoadapt.model import (AdapterConfig, LocalAttributeCodebook, PretrainConfig, PretrainObjective,
                            WAPTransformer, cosine_schedule, lengths_to_padding_mask, multi_crop, span_mask,
                            update_teacher)

LAYERS, D = 3, 32
SMALL = AdapterConfig(input_layers=LAYERS, input_dim=D, dim=32, num_heads=4, ffn_dim=64, conv_pos_kernel=16,
                      conv_pos_groups=4, dropout=0.0)



pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)

# --- schedules ----------------------------------------------------------------------------------------------
def test_cosine_schedule_endpoints_and_shape():
    lr = cosine_schedule(5e-4, 1e-6, 1000, warmup_steps=50)
    assert lr.shape == (1000,) and lr[0] == 0.0 and lr[50] == pytest.approx(5e-4) and lr[-1] == pytest.approx(1e-6)
    assert np.all(np.diff(lr[:51]) > 0) and np.all(np.diff(lr[50:]) < 0)

    momentum = cosine_schedule(0.996, 0.9999, 500)
    assert momentum[0] == pytest.approx(0.996) and momentum[-1] == pytest.approx(0.9999)
    assert np.all(np.diff(momentum) > 0)

    temp = cosine_schedule(0.07, 0.07, 200, warmup_steps=20, start_warmup=0.04)  # teacher temperature warm-up
    assert temp[0] == pytest.approx(0.04) and np.all(np.diff(temp[:21]) > 0)
    assert np.allclose(temp[20:], 0.07)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_schedule(1.0, 0.0, 10, warmup_steps=11)


# --- the mask -----------------------------------------------------------------------------------------------
def test_span_mask_hits_the_target_ratio_and_spares_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 401, (3000,), generator=g)
    T = int(lengths.max())
    mask = span_mask(lengths, T, mask_prob=0.65, span=10, generator=g)
    padding = lengths_to_padding_mask(lengths, T)
    assert mask.shape == (3000, T) and not (mask & padding).any()
    assert abs(mask.sum().item() / lengths.sum().item() - 0.65) < 0.05
    short = lengths < 60  # no edge bias: short utterances get the same ratio
    assert abs(mask[short].sum().item() / lengths[short].sum().item() - 0.65) < 0.05
    # masked runs inside an utterance are whole spans (>= 10 frames); only the two edges clip them
    row, n = mask[0], int(lengths[0])
    edges = torch.diff(F.pad(row[:n].int(), (1, 1)))
    starts, ends = torch.where(edges == 1)[0], torch.where(edges == -1)[0]
    inner = (starts > 0) & (ends < n)
    assert ((ends - starts)[inner] >= 10).all()
    assert span_mask(lengths[:5], T, mask_prob=0.0).sum() == 0


# --- the views ----------------------------------------------------------------------------------------------
def test_multi_crop_views_are_slices_of_their_utterance():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([400, 120, 60, 30])
    T = 400
    frames = torch.arange(T).float()[None, :, None].repeat(4, 1, 2) + 1000 * torch.arange(4).float()[:, None, None]
    long, short = multi_crop(frames, lengths, num_long=2, num_short=4, generator=g)
    assert long.frames.shape[0] == 8 and short.frames.shape[0] == 16
    for views, low, high in [(long, lambda n: math.ceil(n / 2), lambda n: n), (short, lambda n: min(50, n), lambda n: min(100, n))]:
        for row in range(views.frames.shape[0]):
            b, n, m = row % 4, int(lengths[row % 4]), int(views.lengths[row])   # view-major order
            assert low(n) <= m <= high(n)
            crop = views.frames[row, :m, 0]
            assert crop[0] >= 1000 * b and crop[-1] < 1000 * b + n                  # inside its own utterance
            assert torch.equal(torch.diff(crop), torch.ones(m - 1))                 # contiguous
            assert not views.frames[row, m:].any() and views.padding_mask[row].sum() == views.frames.shape[1] - m
    long_only, none = multi_crop(frames, lengths, num_short=0, generator=g)
    assert none is None and long_only.frames.shape[0] == 8


# --- the EMA ------------------------------------------------------------------------------------------------
def test_update_teacher_is_an_exponential_moving_average():
    torch.manual_seed(0)
    student, teacher = WAPTransformer(SMALL), WAPTransformer(SMALL)
    before = [p.clone() for p in teacher.parameters()]
    update_teacher(student, teacher, 0.9)
    for t0, t, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s, atol=1e-7)


# --- the codebook -------------------------------------------------------------------------------------------
def clustered(n, centres, generator, noise=0.15):
    labels = torch.randint(len(centres), (n,), generator=generator)
    return F.normalize(centres[labels] + noise * torch.randn(n, centres.shape[1], generator=generator), dim=-1)


def distortion(codebook, x):
    return (1 - (x @ codebook.centroids.T).max(-1).values).mean().item()


def test_codebook_lowers_distortion_on_clustered_data():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    codebook = LocalAttributeCodebook(num_codes=16, dim=16, decay=0.9)  # more codes than clusters, as in use
    test = clustered(2000, centres, g)
    start = distortion(codebook, test)
    history = []
    for _ in range(60):
        x = clustered(256, centres, g)
        codebook.update(x, codebook.assign(x), generator=g)
        history.append(distortion(codebook, test))
    assert history[-1] < 0.5 * start and history[-1] < history[1]
    # each true cluster has a centroid close to it
    assert ((centres @ codebook.centroids.T).max(-1).values > 0.95).all()
    stats = codebook.statistics(codebook.assign(test))
    assert stats["codebook_usage"] > 0.5 and 4 < stats["codebook_perplexity"] <= 16


def test_dead_centroids_are_reseeded_onto_the_data():
    g = torch.Generator().manual_seed(0)
    data_dir = F.normalize(torch.ones(16), dim=0)
    centres = F.normalize(data_dir + 0.15 * torch.randn(4, 16, generator=g), dim=-1)
    codebook = LocalAttributeCodebook(num_codes=32, dim=16, decay=0.9, dead_fraction=0.1)
    codebook.initialised.fill_(True)                        # skip the data seeding: start far from all data
    codebook.centroids.copy_(F.normalize(-data_dir + 0.1 * torch.randn(32, 16, generator=g), dim=-1))
    x = clustered(512, centres, g, noise=0.05)
    assert (x @ codebook.centroids.T).max().item() < 0   # every centroid points away from every frame
    for _ in range(40):
        x = clustered(512, centres, g, noise=0.05)
        codebook.update(x, codebook.assign(x), generator=g)
    nearest = (clustered(4000, centres, g, noise=0.05) @ codebook.centroids.T).max(0).values  # per centroid
    assert (nearest > 0.8).all()                          # every centroid now sits on the data
    assert (codebook.usage > 0).all()


# --- the whole objective on synthetic speech-like features --------------------------------------------------
def synthetic_corpus(n_utterances=48, n_styles=4, n_phones=8, seed=0):
    """Utterances [L+1, T, D] fp16: a large offset shared by all (frozen encoders have one), an utterance-level
    style (one of n_styles, the 'emotion'), frame-level 'phones' held for 20-40 frames, noise; the L+1 cached
    states are different random mixes of the same frames."""
    g = torch.Generator().manual_seed(seed)
    offset = 3.0 * torch.randn(D, generator=g)
    styles, phones = torch.randn(n_styles, D, generator=g), torch.randn(n_phones, D, generator=g)
    mixes = [torch.eye(D) + 0.3 * torch.randn(D, D, generator=g) / D ** 0.5 for _ in range(LAYERS)]
    utterances, style_of = [], []
    for i in range(n_utterances):
        T = int(torch.randint(60, 161, (1,), generator=g))
        seq = torch.cat([torch.full((int(torch.randint(20, 41, (1,), generator=g)),), int(torch.randint(n_phones, (1,), generator=g)))
                         for _ in range(T // 20 + 1)])[:T]
        x = offset + styles[i % n_styles] + phones[seq] + 0.3 * torch.randn(T, D, generator=g)
        utterances.append(torch.stack([x @ m for m in mixes]).half())
        style_of.append(i % n_styles)
    return utterances, torch.tensor(style_of)


def collate(utterances, index):
    T = max(utterances[i].shape[1] for i in index)
    hidden = torch.zeros(len(index), LAYERS, T, D, dtype=torch.float16)
    for j, i in enumerate(index):
        hidden[j, :, :utterances[i].shape[1]] = utterances[i]
    return {"hidden_states": hidden, "lengths": torch.tensor([utterances[i].shape[1] for i in index])}


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus()


def train(corpus, steps, batch_size=16, lr=3e-3, **config):
    utterances, _ = corpus
    torch.manual_seed(0)
    objective = PretrainObjective(SMALL, PretrainConfig(total_steps=steps, num_codes=16, **config))
    opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=lr, weight_decay=0.04)
    g = torch.Generator().manual_seed(1)
    history = []
    for step in range(steps):
        out = objective(collate(utterances, torch.randint(len(utterances), (batch_size,), generator=g).tolist()))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        objective.after_optimizer_step(step)
        history.append({k: float(v.detach()) for k, v in out.items()})
    return objective, history


def curve(history, key, every=5):
    return [round(float(np.mean([h[key] for h in history[i:i + every]])), 3) for i in range(0, len(history), every)]


def test_mask_prediction_loss_falls(corpus):
    _, history = train(corpus, 60, mask_weight=1.0, sd_weight=0.0, la_weight=0.0, ema_start=0.99, ema_end=0.99)
    losses = curve(history, "loss_mask")
    print("L_mask", losses)
    assert losses[-1] < 0.85 * losses[0]


def test_local_attribute_loss_falls(corpus):
    _, history = train(corpus, 60, mask_weight=0.0, sd_weight=0.0, la_weight=1.0, ema_start=0.99, ema_end=0.99)
    losses = curve(history, "loss_la")
    print("L_la", losses, "perplexity", curve(history, "codebook_perplexity"))
    assert losses[-1] < 0.8 * losses[0] and losses[-1] < math.log(16) - 0.2  # below a uniform guess over 16 codes
    assert history[-1]["codebook_perplexity"] > 4                         # many codes in use, no collapse


def test_self_distillation_learns_the_utterance_level_factor(corpus):
    """The term the prototype failed on: it must leave ln(1024) and group utterances by their style."""
    objective, history = train(corpus, 40, mask_weight=0.0, sd_weight=1.0, la_weight=0.0, ema_start=0.9, ema_end=0.9)
    losses = curve(history, "loss_sd")
    print("L_sd", losses, "teacher entropy", curve(history, "teacher_entropy"))
    assert losses[-1] < math.log(1024) - 2.0
    assert history[-1]["teacher_batch_entropy"] > 0.5       # not collapsed onto one output
    utterances, style = corpus
    objective.eval()
    with torch.no_grad():
        batch = collate(utterances, list(range(len(utterances))))
        padding_mask = lengths_to_padding_mask(batch["lengths"])
        z = objective.teacher(batch["hidden_states"], padding_mask)
        embedding = (z * (~padding_mask)[..., None]).sum(1) / batch["lengths"][:, None]
        cluster = objective.sd_loss.teacher_head(embedding).argmax(-1)
    # utterances of one style share their teacher output far more often than utterances of different styles
    same_cluster = cluster[:, None] == cluster[None, :]
    same_style = style[:, None] == style[None, :]
    off_diagonal = ~torch.eye(len(style), dtype=torch.bool)
    agree_same = same_cluster[same_style & off_diagonal].float().mean().item()
    agree_different = same_cluster[~same_style].float().mean().item()
    print(f"same teacher output: same style {agree_same:.2f}, different styles {agree_different:.2f}")
    assert agree_same > 0.5 and agree_same > 3 * agree_different


def test_plain_dino_stalls_at_uniform_on_such_features(corpus):
    """Without batch-standardising the pooled Z, the same run reproduces the prototype: L_sd stays ~ln(1024)."""
    _, history = train(corpus, 25, mask_weight=0.0, sd_weight=1.0, la_weight=0.0, ema_start=0.9, ema_end=0.9,
                       sd_input_bn=False)
    assert abs(np.mean([h["loss_sd"] for h in history[-5:]]) - math.log(1024)) < 0.3


@pytest.mark.parametrize("off", ["mask", "sd", "la"])
def test_each_loss_switches_off(corpus, off):
    utterances, _ = corpus
    weights = {"mask_weight": 1.0, "sd_weight": 1.0, "la_weight": 1.0, f"{off}_weight": 0.0}
    torch.manual_seed(0)
    objective = PretrainObjective(SMALL, PretrainConfig(total_steps=10, num_codes=16, **weights))
    codebook_before = objective.codebook.centroids.clone()
    out = objective(collate(utterances, [0, 1, 2, 3]))
    out["loss"].backward()
    assert out[f"loss_{off}"] == 0
    heads = {"mask": objective.mask_predictor, "sd": objective.sd_loss.student_head, "la": objective.la_predictor}
    assert all(p.grad is None for p in heads[off].parameters())
    for name, head in heads.items():
        if name != off:
            assert out[f"loss_{name}"] > 0
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert torch.equal(objective.codebook.centroids, codebook_before) == (off == "la")
    assert ("teacher_entropy" in out) == (off != "sd")


def test_teacher_never_gets_gradients_and_follows_the_student(corpus):
    utterances, _ = corpus
    torch.manual_seed(0)
    objective = PretrainObjective(SMALL, PretrainConfig(total_steps=10, num_codes=16)).train()
    assert not objective.teacher.training                      # no dropout in the teacher
    teacher_params = list(objective.teacher.parameters()) + list(objective.sd_loss.teacher_head.parameters())
    assert not any(p.requires_grad for p in teacher_params)
    out = objective(collate(utterances, [0, 1, 2, 3, 4, 5]))
    assert set(out) >= {"loss", "loss_mask", "loss_sd", "loss_la", "teacher_entropy", "teacher_batch_entropy",
                        "codebook_usage", "codebook_perplexity", "mask_ratio", "teacher_temp"}
    assert abs(out["mask_ratio"] - 0.65) < 0.1
    assert out["teacher_temp"] == pytest.approx(0.04)
    out["loss"].backward()
    assert all(p.grad is None for p in teacher_params)
    assert objective.mask_embedding.grad is not None and objective.student.layer_logits.grad is not None

    with torch.no_grad():                                      # make the student differ, then step the EMA
        for p in objective.student.parameters():
            p.add_(0.01)
    t_before = [p.clone() for p in objective.teacher.parameters()]
    m = objective.after_optimizer_step(0)
    assert m == pytest.approx(0.996) and int(objective.step) == 1
    for t0, t, s in zip(t_before, objective.teacher.parameters(), objective.student.parameters()):
        assert torch.allclose(t, m * t0 + (1 - m) * s, atol=1e-6)
    with pytest.raises(ValueError, match="nothing to train"):
        PretrainObjective(SMALL, PretrainConfig(mask_weight=0, sd_weight=0, la_weight=0))


def test_stage_two_starts_from_the_teacher():
    from emoadapt.model import build_model
    objective = PretrainObjective(SMALL, PretrainConfig(total_steps=10))
    classifier = build_model("adapter", LAYERS, D, 4, **{k: getattr(SMALL, k) for k in
                                                         ("dim", "num_heads", "ffn_dim", "conv_pos_kernel", "conv_pos_groups")})
    for _ in range(3):  # the student learns and the teacher follows it, so the two differ
        batch = {"hidden_states": torch.randn(4, LAYERS, 60, D), "lengths": torch.tensor([60, 50, 40, 30])}
        objective(batch)["loss"].backward()
        with torch.no_grad():
            for p in objective.student.parameters():
                if p.grad is not None:
                    p -= 1e-2 * p.grad
                    p.grad = None
        objective.after_optimizer_step(int(objective.step))
    teacher, student = objective.teacher.state_dict(), objective.student.state_dict()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)
    classifier.adapter.load_state_dict(teacher)  # same keys and shapes: nothing missing, nothing left over
    assert all(torch.equal(classifier.adapter.state_dict()[k], v) for k, v in teacher.items())
    x, mask = torch.randn(2, LAYERS, 30, D), torch.zeros(2, 30, dtype=torch.bool)
    classifier.eval(), objective.teacher.eval()
    with torch.no_grad():  # the classifier's adapter computes the teacher's Z
        assert torch.allclose(classifier.adapter(x, mask), objective.teacher(x, mask))

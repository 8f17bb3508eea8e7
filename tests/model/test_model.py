"""The adapter, the pooling and the classifiers on small synthetic cached features (CPU, d = 32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emoadapt.errors import EmoadaptError
from emoadapt.model import (AdapterConfig, AttentiveStatisticsPooling, FeatureStandardizer, WAPTransformer,
                            build_model, lengths_to_padding_mask, masked_mean)

LAYERS, D = 4, 24  # cached hidden states per frame (L+1) and their width
SMALL = dict(dim=32, num_heads=4, ffn_dim=64, conv_pos_kernel=16, conv_pos_groups=4)



pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (conftest)

def small_adapter(**overrides) -> WAPTransformer:
    torch.manual_seed(0)
    return WAPTransformer(AdapterConfig(input_layers=LAYERS, input_dim=D, **{**SMALL, **overrides})).eval()


def padded_batch(lengths, seed=0, pad_value=0.0):
    """fp16 hidden states [B, L+1, T, D] as the feature store gives them, padding filled with pad_value."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    x = (3 * torch.randn(len(lengths), LAYERS, T, D, generator=g) + 1).half()
    padding_mask = lengths_to_padding_mask(torch.tensor(lengths), T)
    x = x.masked_fill(padding_mask[:, None, :, None], pad_value)
    return x, padding_mask


LENGTHS = [61, 23, 7, 40]


@torch.no_grad()
def test_adapter_padded_batch_equals_one_utterance_at_a_time():
    adapter = small_adapter()
    x, padding_mask = padded_batch(LENGTHS, pad_value=1e4)  # garbage in the padding must not leak
    z, layers = adapter(x, padding_mask, return_layers=True)
    assert z.shape == (len(LENGTHS), max(LENGTHS), 32) and z.dtype == torch.float32
    for i, n in enumerate(LENGTHS):
        zi, layers_i = adapter(x[i:i + 1, :, :n], torch.zeros(1, n, dtype=torch.bool), return_layers=True)
        assert (z[i, :n] - zi[0]).abs().max() < 1e-5
        for h, hi in zip(layers, layers_i):
            assert (h[i, :n] - hi[0]).abs().max() < 1e-5
        assert not z[i, n:].any()  # padding rows of Z are zero


@torch.no_grad()
def test_adapter_fixed_layer_uses_only_that_layer():
    adapter = small_adapter(input_layer=2)
    assert not hasattr(adapter, "layer_logits")
    x, padding_mask = padded_batch([30, 12])
    other = x.clone()
    other[:, [0, 1, 3]] = torch.randn_like(other[:, [0, 1, 3]].float()).half()
    assert torch.equal(adapter(x, padding_mask), adapter(other, padding_mask))
    other[:, 2] += 1
    assert not torch.allclose(adapter(x, padding_mask), adapter(other, padding_mask))
    with pytest.raises(ValueError, match="input_layer=7"):
        small_adapter(input_layer=7)


@torch.no_grad()
def test_layer_mix_is_a_softmax_over_the_cached_states():
    adapter = small_adapter(input_norm=False, dropout=0.0)
    x, padding_mask = padded_batch([20])
    adapter.layer_logits.copy_(torch.tensor([0.0, 5.0, -1.0, 2.0]))
    w = F.softmax(adapter.layer_logits, 0)
    x0 = (w[None, :, None, None] * x.float()).sum(1)
    assert torch.allclose(adapter.project(x), adapter.input_proj(x0), atol=1e-5)
    adapter.layer_logits.copy_(torch.tensor([0.0, -50.0, -50.0, -50.0]))  # all weight on layer 0
    assert torch.allclose(adapter.project(x), adapter.input_proj(x[:, 0].float()), atol=1e-4)


@torch.no_grad()
def test_z_is_a_softmax_weighted_sum_of_the_layer_outputs():
    adapter = small_adapter()
    x, padding_mask = padded_batch([33, 9])
    mix, w = adapter.layer_weights()
    assert w.shape == (3,) and torch.allclose(w.sum(), torch.tensor(1.0)) and torch.allclose(w, torch.full((3,), 1 / 3))
    assert torch.allclose(mix.sum(), torch.tensor(1.0))
    z, layers = adapter(x, padding_mask, return_layers=True)
    assert len(layers) == 3 and torch.allclose(z, sum(layers) / 3, atol=1e-6)

    adapter.output_logits.copy_(torch.tensor([2.0, -1.0, 0.5]))       # changing the logits changes the mix ...
    z2, layers2 = adapter(x, padding_mask, return_layers=True)
    w2 = F.softmax(adapter.output_logits, 0)
    assert torch.allclose(z2, sum(w2[l] * layers2[l] for l in range(3)), atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(layers, layers2))     # ... and nothing else
    assert not torch.allclose(z, z2, atol=1e-4)
    adapter.output_logits.copy_(torch.tensor([-30.0, -30.0, 30.0]))   # all weight on the last layer
    assert torch.allclose(adapter(x, padding_mask), layers[2], atol=1e-5)


def test_layer_weights_learn():
    adapter = small_adapter()
    adapter.train()
    x, padding_mask = padded_batch([15, 10])
    adapter(x, padding_mask).pow(2).sum().backward()
    assert adapter.layer_logits.grad.abs().sum() > 0 and adapter.output_logits.grad.abs().sum() > 0


@torch.no_grad()
def test_masked_frames_lose_their_content():
    adapter = small_adapter()
    x, padding_mask = padded_batch([25, 25])
    other = x.clone()
    other[:, :, 5:15] = torch.randn_like(other[:, :, 5:15].float()).half()
    mask = torch.zeros(2, 25, dtype=torch.bool)
    mask[:, 5:15] = True
    emb = torch.randn(32)
    z = adapter(x, padding_mask, mask_positions=mask, mask_embedding=emb)
    assert torch.allclose(z, adapter(other, padding_mask, mask_positions=mask, mask_embedding=emb), atol=1e-6)
    assert not torch.allclose(z, adapter(x, padding_mask), atol=1e-4)


def test_adapter_rejects_features_of_another_shape():
    adapter = small_adapter()
    x, padding_mask = padded_batch([10])
    with pytest.raises(ValueError, match=r"expected hidden states \[B, 4, T, 24\].*got \[1, 3, 10, 24\]"):
        adapter(x[:, :3], padding_mask)
    with pytest.raises(ValueError, match="padding_mask"):
        adapter(x, padding_mask[:, :5])


@torch.no_grad()
def test_sap_is_okabe_and_ignores_padding():
    torch.manual_seed(1)
    sap = AttentiveStatisticsPooling(8, attention_dim=5)
    z = torch.randn(3, 12, 8)
    lengths = [12, 4, 1]
    padding_mask = lengths_to_padding_mask(torch.tensor(lengths))
    u = sap(z.masked_fill(padding_mask[..., None], 1e4), padding_mask)
    assert u.shape == (3, 16)
    for i, n in enumerate(lengths):
        zi = z[i, :n]
        a = F.softmax(sap.score(torch.tanh(sap.attention(zi))).squeeze(-1), 0)[:, None]
        mu = (a * zi).sum(0)
        sigma = torch.sqrt((a * zi ** 2).sum(0) - mu ** 2 + sap.eps)
        assert torch.allclose(u[i], torch.cat([mu, sigma]), atol=1e-5)
        assert (u[i] - sap(zi[None], torch.zeros(1, n, dtype=torch.bool))[0]).abs().max() < 1e-5
    assert torch.allclose(u[2, 8:], torch.full((8,), sap.eps ** 0.5))  # one frame: no spread, sigma = sqrt(eps)


def test_masked_mean():
    x = torch.arange(12.0).view(1, 4, 3).repeat(2, 1, 1)
    padding_mask = lengths_to_padding_mask(torch.tensor([4, 2]))
    assert torch.allclose(masked_mean(x, padding_mask), torch.tensor([[4.5, 5.5, 6.5], [1.5, 2.5, 3.5]]))


@pytest.mark.parametrize("recipe", ["adapter", "superb", "emobox"])
@torch.no_grad()
def test_classifiers_padded_batch_equals_one_at_a_time(recipe):
    torch.manual_seed(0)
    config = SMALL if recipe == "adapter" else {}
    model = build_model(recipe, LAYERS, D, num_classes=5, **config).eval()
    x, padding_mask = padded_batch(LENGTHS, pad_value=-1e4)
    logits = model(x, padding_mask)
    assert logits.shape == (len(LENGTHS), 5)
    for i, n in enumerate(LENGTHS):
        single = model(x[i:i + 1, :, :n], torch.zeros(1, n, dtype=torch.bool))
        assert (logits[i] - single[0]).abs().max() < 1e-5


@pytest.mark.parametrize("recipe", ["adapter", "superb", "emobox"])
def test_classifiers_train(recipe):
    torch.manual_seed(0)
    config = SMALL if recipe == "adapter" else {}
    model = build_model(recipe, LAYERS, D, num_classes=3, **config)
    x, padding_mask = padded_batch([20, 18, 25, 9, 30, 14], seed=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    x = x.float()
    x[:, :, :, 0] += 3 * labels[:, None, None]  # a learnable cue
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(x, padding_mask), labels)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("recipe", ["adapter", "superb", "emobox"])
@torch.no_grad()
def test_standardisation_makes_models_blind_to_per_dimension_scale(recipe):
    """A dimension 50x larger than the rest (Whisper-base's outliers) and a shifted layer: once each model's
    standardiser is fitted on the data, scaling / shifting a cached dimension changes nothing."""
    x, padding_mask = padded_batch(LENGTHS, seed=5)
    x = x.float()
    distorted = x.clone()
    distorted[:, :, :, 3] = distorted[:, :, :, 3] * 50 + 7
    distorted[:, 1] = distorted[:, 1] * 0.1 - 2
    distorted = distorted.masked_fill(padding_mask[:, None, :, None], 0.0)
    outputs = []
    for data in (x, distorted):
        torch.manual_seed(0)
        model = build_model(recipe, LAYERS, D, num_classes=3, **(SMALL if recipe == "adapter" else {})).eval()
        (standardizer,) = [m for m in model.modules() if isinstance(m, FeatureStandardizer)]
        real = data.transpose(1, 2)[~padding_mask]                       # (frames, L+1, D)
        standardizer.fit(real.mean(0), real.std(0, unbiased=False))
        outputs.append(model(data, padding_mask))
    assert (outputs[0] - outputs[1]).abs().max() < 1e-4
    assert not torch.allclose(outputs[0], model(x, padding_mask), atol=1e-3)  # the statistics matter


def test_standardizer_is_identity_until_fitted_and_checks_shapes():
    s = FeatureStandardizer(LAYERS, D)
    x, _ = padded_batch([5])
    assert torch.equal(s.layer(x, 2), x[:, 2].float())
    s.fit(torch.full((LAYERS, D), 2.0), torch.full((LAYERS, D), 4.0))
    assert torch.allclose(s.layer(x, 2), (x[:, 2].float() - 2) / 4, atol=1e-5)
    with pytest.raises(ValueError, match=r"do not fit hidden states \[4, 24\]"):
        s.fit(torch.zeros(3, D), torch.ones(3, D))
    assert set(dict(s.named_buffers())) == {"mean", "inv_std"}  # saved with the model's state dict


def test_build_model_options_and_errors():
    model = build_model("adapter", 7, 512, 4, dim=64, num_heads=2, ffn_dim=128, head_dropout=0.3, input_layer=-1)
    assert model.adapter.config.dim == 64 and model.adapter.config.input_dim == 512
    assert model.config.head_dropout == 0.3 and model.head.out_features == 4
    assert build_model("emobox", 7, 512, 4, hidden_dim=64).pre_net.out_features == 64
    assert build_model("superb", 7, 512, 4).layer_logits.shape == (7,)
    with pytest.raises(EmoadaptError, match="unknown recipe 'wav2vec'; choose one of full, adapter, superb, emobox, stats"):
        build_model("wav2vec", 7, 512, 4)
    with pytest.raises(EmoadaptError, match="recipe 'superb' has no option dim"):
        build_model("superb", 7, 512, 4, dim=3)


def test_default_sizes():
    """docs/METHOD.md: about 6 M parameters for d = 384; the whole trainable stage-2 model (adapter + SAP + classifier)
    under 2% of HuBERT-large's 316 M."""
    for layers, dim in [(7, 512), (25, 1024)]:
        n = sum(p.numel() for p in WAPTransformer(AdapterConfig(input_layers=layers, input_dim=dim)).parameters())
        assert 5.5e6 < n < 7.5e6
    model = build_model("adapter", 25, 1024, num_classes=4)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < 0.02 * 316e6, trainable


def test_stats_pooling_ignores_padding_and_matches_numpy():
    from emoadapt.model import StatsClassifier, StatsConfig
    model = StatsClassifier(StatsConfig(input_layers=3, input_dim=5, num_classes=4))
    a, b = torch.randn(3, 7, 5), torch.randn(3, 4, 5)
    batch = torch.zeros(2, 3, 7, 5)
    batch[0], batch[1, :, :4] = a, b
    batch[1, :, 4:] = 1e3  # padding must not count
    mask = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    pooled = model.pooled(batch, mask)
    for row, x in zip(pooled, (a, b)):
        x = x.double().numpy()
        expected = np.concatenate([x.mean(1), x.std(1)], axis=-1).ravel()
        assert np.allclose(row.numpy(), expected)


@pytest.mark.parametrize("classes_present", [[0, 1, 2, 3], [0, 2], [1, 2, 3]])
def test_a_fitted_logistic_regression_lives_in_the_stats_model(classes_present):
    """The model's softmax equals scikit-learn's predict_proba on the same statistics, with two classes (one row
    of coefficients) and with a class absent from training (never predicted)."""
    from emoadapt.training.closed_form import fit_logistic, load_logistic
    from emoadapt.model import StatsClassifier, StatsConfig
    g = torch.Generator().manual_seed(0)
    model = StatsClassifier(StatsConfig(input_layers=2, input_dim=3, num_classes=4)).eval()
    hidden = torch.randn(40, 2, 9, 3, generator=g)
    y = np.array([classes_present[i % len(classes_present)] for i in range(40)])
    hidden += torch.as_tensor(y, dtype=torch.float32)[:, None, None, None]  # learnable
    mask = torch.zeros(40, 9, dtype=torch.bool)
    x = model.pooled(hidden, mask).numpy()
    scaler, logistic = fit_logistic(x, y, 1.0)
    load_logistic(model, scaler, logistic)
    with torch.no_grad():
        probs = torch.softmax(model(hidden, mask).double(), -1).numpy()
    assert np.allclose(probs[:, logistic.classes_], logistic.predict_proba(scaler.transform(x)), atol=1e-5)
    absent = sorted(set(range(4)) - set(classes_present))
    assert (probs[:, absent] < 1e-6).all() if absent else True


def test_balanced_class_weights_give_a_rare_class_its_share():
    """class_weight balanced: a class with a tenth of the clips is predicted about as often as it is true, where
    the unweighted fit all but ignores it (overlapping classes)."""
    from emoadapt.training.closed_form import fit_logistic
    rng = np.random.default_rng(0)
    y = np.array([0] * 450 + [1] * 50)
    x = rng.normal(size=(500, 4)) + 0.8 * y[:, None]
    plain = fit_logistic(x, y, 1.0)
    balanced = fit_logistic(x, y, 1.0, class_weight="balanced")
    recall = [float((m.predict(s.transform(x))[y == 1] == 1).mean()) for s, m in (plain, balanced)]
    assert recall[0] < 0.3 < 0.6 < recall[1], recall


def test_head_can_see_the_input_statistics_beside_sap():
    """head.input_statistics: the head gets [SAP(Z); LN(utterance statistics of the standardised input)], and a
    padded batch still gives each utterance what it gets alone."""
    from emoadapt.training.settings import load_config, recipe_options, validate
    from emoadapt.model import build_model
    config = load_config(None, ["head.input_statistics=true", "adapter.dim=32", "adapter.num_heads=4",
                                "adapter.ffn_dim=64", "adapter.conv_pos_kernel=8", "adapter.conv_pos_groups=4",
                                "adapter.input_layers=3", "adapter.input_dim=16"])
    validate(config, "adapter")
    torch.manual_seed(0)
    model = build_model("adapter", 3, 16, 4, **recipe_options(config, "adapter")).eval()
    assert model.head.in_features == 2 * 32 + 2 * 3 * 16
    x = torch.randn(2, 3, 20, 16)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[1, 12:] = True
    with torch.no_grad():
        both = model.embed(x, mask)
        alone = model.embed(x[1:, :, :12], mask[1:, :12])
        plain = build_model("adapter", 3, 16, 4, **{**recipe_options(config, "adapter"), "input_statistics": False})
    assert torch.allclose(both[1], alone[0], atol=1e-5)
    assert plain.head.in_features == 64


def test_fine_tuning_masks_act_in_training_only():
    """head.time_mask_prob / head.channel_mask_prob (wav2vec2's fine-tuning masks on the projected frames): they
    change what a training forward sees, never what evaluation sees, and cover about the asked share."""
    from emoadapt.training.settings import load_config, validate
    from emoadapt.model import channel_mask, span_mask
    masked = dict(time_mask_prob=0.5, time_mask_span=4, channel_mask_prob=0.3, channel_mask_span=4)
    torch.manual_seed(0)
    model = build_model("adapter", LAYERS, D, 4, **SMALL, **masked)
    torch.manual_seed(0)
    plain = build_model("adapter", LAYERS, D, 4, **SMALL)
    assert model.mask_embedding.shape == (32,) and not hasattr(plain, "mask_embedding")
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "mask_embedding"})
    x, padding_mask = padded_batch(LENGTHS)
    with torch.no_grad():
        model.eval(), plain.eval()
        assert torch.equal(model(x, padding_mask), plain(x, padding_mask))
        model.train(), plain.train()
        torch.manual_seed(1)
        trained_masked = model(x, padding_mask)
        torch.manual_seed(1)
        assert not torch.allclose(trained_masked, plain(x, padding_mask))
    torch.manual_seed(2)
    times = span_mask(torch.full((400,), 200), 200, 0.5, 4)
    channels = channel_mask(400, 128, 0.3, 4)
    assert times.float().mean() == pytest.approx(0.5, abs=0.03) and channels.shape == (400, 128)
    assert channels.float().mean() == pytest.approx(0.3, abs=0.03)
    for bad in ("head.time_mask_prob=1.0", "head.channel_mask_span=0"):
        with pytest.raises(EmoadaptError, match="mask"):
            validate(load_config(None, [bad]), "adapter")

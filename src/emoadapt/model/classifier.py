"""Emotion classifiers on cached hidden states: the method's (adapter + SAP) and two peer recipes.

Every model has the same calls: ``model(hidden_states (B, L+1, T, D), padding_mask (B, T)) -> logits (B, C)`` and
``model.embed(...) -> (B, E)``, the utterance vector its last linear layer sees; and
:func:`emoadapt.model.recipes.build_model` makes any of them by recipe name, so the trainer and the evaluation never know which one it is.

- ``adapter``: WAP-Transformer adapter -> attentive statistics pooling -> dropout -> linear (docs/METHOD.md section 5).
- ``superb``:  SUPERB's emotion task: learned softmax layer weights -> Linear D->256 -> mean pool -> linear.
- ``emobox``:  EmoBox's head on one layer (the last by default): Linear D->256 + ReLU per frame -> mean pool -> linear.
- ``stats``:   mean and std over time of every hidden state -> standardised -> logistic regression (closed form).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adapter import AdapterConfig, FeatureStandardizer, WAPTransformer
from .masking import channel_mask, span_mask
from .pooling import AttentiveStatisticsPooling, masked_mean, utterance_statistics


# --- the method ---------------------------------------------------------------------------------------------
@dataclass
class ClassifierConfig:
    num_classes: int = 4
    attention_dim: int = 128   # SAP's hidden size (W: d -> 128)
    head_dropout: float = 0.1  # dropout on u before the linear classifier
    input_statistics: bool = False  # also give the head the mean and std over time of every standardised input
    #                                 hidden state (what the stats recipe sees), layer-normed, beside SAP(Z): the
    #                                 adapter then has to add to what utterance statistics already carry
    start_from_statistics: bool = False  # with input_statistics: the head starts as the stats recipe (its logistic
    #                                 regression fitted on the training speakers, emoadapt.closed_form) and the
    #                                 SAP(Z) part at zero, so training starts from the stats recipe's predictions
    # training only, on the adapter's projected frames (wav2vec2's fine-tuning masks, HF's mask_time_* /
    # mask_feature_*): time spans replaced by a learned embedding, feature channels zeroed
    time_mask_prob: float = 0.0
    time_mask_span: int = 10
    channel_mask_prob: float = 0.0
    channel_mask_span: int = 16
    adapter: AdapterConfig = field(default_factory=AdapterConfig)


class EmotionClassifier(nn.Module):
    """Stage 2: adapter (initialised from the stage-1 teacher) + SAP + dropout + linear."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.adapter = WAPTransformer(config.adapter)
        self.pooling = AttentiveStatisticsPooling(config.adapter.dim, config.attention_dim)
        self.dropout = nn.Dropout(config.head_dropout)
        features = self.pooling.output_dim
        statistics = 2 * config.adapter.input_layers * config.adapter.input_dim
        if config.start_from_statistics and not config.input_statistics:
            raise ValueError("start_from_statistics needs input_statistics=true (the statistics it starts from)")
        if config.start_from_statistics:  # a fixed standardisation, as the fitted logistic regression's
            self.register_buffer("statistics_mean", torch.zeros(statistics))
            self.register_buffer("statistics_scale", torch.ones(statistics))
        elif config.input_statistics:
            self.statistics_norm = nn.LayerNorm(statistics)
        if config.input_statistics:
            features += statistics
        self.head = nn.Linear(features, config.num_classes)
        for name, prob, span in (("time", config.time_mask_prob, config.time_mask_span),
                                 ("channel", config.channel_mask_prob, config.channel_mask_span)):
            if not 0 <= prob < 1 or span < 1:
                raise ValueError(f"{name}_mask_prob must be in [0, 1) and {name}_mask_span >= 1 "
                                 f"(got {prob}, {span})")
        if config.time_mask_prob > 0:  # only then: models trained without it load as before
            self.mask_embedding = nn.Parameter(torch.empty(config.adapter.dim).uniform_())  # HF's masked_spec_embed

    def forward(self, hidden_states, padding_mask):
        return self.head(self.dropout(self.embed(hidden_states, padding_mask)))  # (B, C)

    def contextualized(self, hidden_states, padding_mask):
        """Z (B, T, d), with the time and channel masks applied to the projected frames in training."""
        c = self.config
        x = self.adapter.project(hidden_states)
        positions = None
        if self.training and c.channel_mask_prob > 0:
            x = x.masked_fill(channel_mask(x.shape[0], x.shape[2], c.channel_mask_prob, c.channel_mask_span)
                              .to(x.device).unsqueeze(1), 0.0)
        if self.training and c.time_mask_prob > 0:
            positions = span_mask((~padding_mask).sum(1), x.shape[1], c.time_mask_prob, c.time_mask_span)
        return self.adapter.contextualize(x, padding_mask, mask_positions=positions,
                                          mask_embedding=getattr(self, "mask_embedding", None))

    def embed(self, hidden_states, padding_mask):
        """The utterance vector the classifier sees: u = [mu; sigma] (B, 2d) of SAP(Z), followed by the input's
        utterance statistics when ``input_statistics``."""
        z = self.contextualized(hidden_states, padding_mask)  # (B, T, d)
        u = self.pooling(z, padding_mask)               # (B, 2d)
        if not self.config.input_statistics:
            return u
        s = self.input_statistics(hidden_states, padding_mask, u.dtype)
        if self.config.start_from_statistics:
            s = (s - self.statistics_mean.to(s.dtype)) / self.statistics_scale.to(s.dtype)
        else:
            s = self.statistics_norm(s)
        return torch.cat([u, s], dim=-1)

    def input_statistics(self, hidden_states, padding_mask, dtype=torch.float32):
        """(B, (L+1) * 2D): per layer, the mean and std over real frames of the standardised input."""
        standardized = torch.stack([self.adapter.standardize.layer(hidden_states, l, dtype)
                                    for l in range(self.config.adapter.input_layers)], dim=1)
        return utterance_statistics(standardized, padding_mask, dtype=dtype)


# --- peer recipes -------------------------------------------------------------------------------------------
@dataclass
class SuperbConfig:
    input_layers: int = 25
    input_dim: int = 1024
    num_classes: int = 4
    projector_dim: int = 256   # s3prl's emotion expert projects to 256 before pooling


class SuperbClassifier(nn.Module):
    """SUPERB ER (s3prl): weighted sum of all hidden states -> Linear -> mean pool -> linear."""

    def __init__(self, config: SuperbConfig):
        super().__init__()
        self.config = config
        self.standardize = FeatureStandardizer(config.input_layers, config.input_dim)
        self.layer_logits = nn.Parameter(torch.zeros(config.input_layers))
        self.projector = nn.Linear(config.input_dim, config.projector_dim)
        self.head = nn.Linear(config.projector_dim, config.num_classes)

    def forward(self, hidden_states, padding_mask):
        return self.head(self.embed(hidden_states, padding_mask))

    def embed(self, hidden_states, padding_mask):
        """The utterance vector the classifier sees: the mean over real frames of the projected mix (B, 256)."""
        _check_input(hidden_states, self.config.input_layers, self.config.input_dim)
        w = F.softmax(self.layer_logits, dim=0)
        x = sum(w[l] * self.standardize.layer(hidden_states, l, w.dtype) for l in range(self.config.input_layers))
        return masked_mean(self.projector(x), padding_mask)


@dataclass
class EmoBoxConfig:
    input_layers: int = 25
    input_dim: int = 1024
    num_classes: int = 4
    input_layer: int = -1      # EmoBox feeds one layer: the encoder's last hidden state
    hidden_dim: int = 256


class EmoBoxClassifier(nn.Module):
    """EmoBox's baseline head: per-frame Linear + ReLU, mean over real frames, linear."""

    def __init__(self, config: EmoBoxConfig):
        super().__init__()
        if not -config.input_layers <= config.input_layer < config.input_layers:
            raise ValueError(f"input_layer={config.input_layer} is outside the {config.input_layers} cached hidden states")
        self.config = config
        self.standardize = FeatureStandardizer(config.input_layers, config.input_dim)
        self.pre_net = nn.Linear(config.input_dim, config.hidden_dim)
        self.post_net = nn.Linear(config.hidden_dim, config.num_classes)

    def forward(self, hidden_states, padding_mask):
        return self.post_net(self.embed(hidden_states, padding_mask))

    def embed(self, hidden_states, padding_mask):
        """The utterance vector the classifier sees: the mean over real frames of ReLU(pre_net(x)) (B, hidden)."""
        _check_input(hidden_states, self.config.input_layers, self.config.input_dim)
        x = self.standardize.layer(hidden_states, self.config.input_layer, self.pre_net.weight.dtype)  # (B, T, D)
        return masked_mean(F.relu(self.pre_net(x)), padding_mask)


@dataclass
class StatsConfig:
    input_layers: int = 25
    input_dim: int = 1024
    num_classes: int = 4
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0)  # inverse L2 strengths tried; validation UA picks one
    # sets of hidden states (indices into the store's layers) tried with every C, the best one kept (the others'
    # weights are 0); empty: every layer. Chosen the same way as C (validation speakers, or choose_by=corpus)
    layer_grid: list[list[int]] = field(default_factory=list)
    class_weight: str = "none"  # "balanced": every class weighs the same in the fit, however many clips it has

    def __post_init__(self):
        if self.class_weight not in ("none", "balanced"):
            raise ValueError(f"class_weight {self.class_weight!r}: choose none or balanced")


class StatsClassifier(nn.Module):
    """Utterance statistics and a linear classifier: per utterance, the mean and standard deviation over time of
    every cached hidden state ([L+1] x 2D values), standardised with the training utterances' statistics, then a
    multinomial logistic regression. Fitted in closed form (emoadapt.closed_form), never by gradient steps; its
    strength is chosen on the validation speakers."""

    def __init__(self, config: StatsConfig):
        super().__init__()
        self.config = config
        features = 2 * config.input_layers * config.input_dim
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_scale", torch.ones(features))
        self.head = nn.Linear(features, config.num_classes)

    def pooled(self, hidden_states, padding_mask):
        """(B, L+1, T, D) -> (B, (L+1) * 2D): per layer [mean over real frames; population std], in float64."""
        _check_input(hidden_states, self.config.input_layers, self.config.input_dim)
        return utterance_statistics(hidden_states, padding_mask, torch.float64)

    def forward(self, hidden_states, padding_mask):
        return self.head(self.embed(hidden_states, padding_mask))

    def embed(self, hidden_states, padding_mask):
        """The utterance vector the classifier sees: the standardised utterance statistics (B, (L+1) * 2D)."""
        u = (self.pooled(hidden_states, padding_mask) - self.feature_mean) / self.feature_scale
        return u.to(self.head.weight.dtype)


def _check_input(hidden_states, input_layers, input_dim):
    if hidden_states.dim() != 4 or hidden_states.shape[1] != input_layers or hidden_states.shape[3] != input_dim:
        raise ValueError(f"expected hidden states [B, {input_layers}, T, {input_dim}] (B, L+1, T, D), "
                         f"got {list(hidden_states.shape)}")

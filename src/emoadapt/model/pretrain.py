"""Stage 1: task-agnostic adapter training on unlabeled speech (teacher-student, docs/METHOD.md section 4).

Each piece lives in one place and can be called alone:

- the schedules ........ :func:`cosine_schedule` (lr, teacher EMA momentum, teacher temperature)
- the mask ............. :func:`emoadapt.model.masking.span_mask` (student only)
- the views ............ :func:`multi_crop` (DINO multi-crop at frame level)
- the EMA .............. :func:`update_teacher`, called by :meth:`PretrainObjective.after_optimizer_step`
- L_mask ............... :func:`time_instance_norm` (targets) + :func:`mask_prediction_loss`
- L_sd ................. :class:`SelfDistillationLoss` (owns its projection heads and its centre)
- L_la ................. :class:`LocalAttributeCodebook` (online k-means) + :func:`local_attribute_loss`
- all together ......... :class:`PretrainObjective`: ``forward(batch) -> dict of losses and diagnostics``

Shapes: B utterances, T frames (50 Hz), d adapter width. ``padding_mask`` is True at padding.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from .adapter import AdapterConfig, WAPTransformer
from .masking import span_mask
from .pooling import lengths_to_padding_mask, masked_mean


@dataclass
class PretrainConfig:
    # loss weights: L = mask_weight*L_mask + sd_weight*L_sd + la_weight*L_la; 0 switches a term off entirely
    mask_weight: float = 1.0
    sd_weight: float = 1.0
    la_weight: float = 1.0
    # student masking: spans of 10 frames (200 ms), start probability chosen so ~65% of real frames are masked
    mask_prob: float = 0.65
    mask_span: int = 10
    # L_mask (data2vec): Smooth-L1 on the mean of the teacher's instance-normalised layer outputs
    mask_loss_beta: float = 1.0
    # L_sd (DINO): multi-crop views, projection head, temperatures, centre
    num_long_crops: int = 2               # teacher and student see these
    num_short_crops: int = 4              # student only
    long_crop_min_fraction: float = 0.5   # a long crop covers >= 50% of the utterance
    short_crop_frames: tuple[int, int] = (50, 100)  # 1-2 s at 50 Hz, clipped to the utterance
    sd_hidden_dim: int = 1024
    sd_bottleneck_dim: int = 256
    sd_out_dim: int = 1024
    sd_input_bn: bool = True              # batch-standardise the pooled Z before the head (False: plain DINO)
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_fraction: float = 0.1  # linear 0.04 -> 0.07 over the first 10% of updates
    center_momentum: float = 0.9
    # L_la (DinoSR-style local attributes): online k-means over the teacher's frames
    num_codes: int = 256
    codebook_decay: float = 0.9
    dead_code_fraction: float = 0.1       # a code is dead when its usage EMA < 0.1 x the uniform share 1/K
    la_temp: float = 0.1
    # teacher = EMA of the student; momentum rises on a cosine schedule
    ema_start: float = 0.996
    ema_end: float = 0.9999
    # optimisation (read by the training loop)
    total_steps: int = 10_000
    lr: float = 5e-4
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    warmup_fraction: float = 0.05
    batch_size: int = 32
    max_crop_seconds: float = 8.0


# --- schedules ----------------------------------------------------------------------------------------------
def cosine_schedule(base, final, total_steps, warmup_steps=0, start_warmup=0.0):
    """One value per step (DINO's helper): linear start_warmup -> base over warmup_steps, then cosine base -> final.

    The last value is exactly ``final``.
    """
    warmup_steps = int(warmup_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]")
    warmup = np.linspace(start_warmup, base, warmup_steps, endpoint=False)
    steps = np.arange(total_steps - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps) - 1, 1)))
    return np.concatenate([warmup, cosine])


# --- the views ----------------------------------------------------------------------------------------------
class Views(NamedTuple):
    """Crops as one padded batch, view-major: rows k*B .. (k+1)*B-1 are crop k of every utterance."""
    frames: torch.Tensor        # (V*B, T_v, ...)
    lengths: torch.Tensor       # (V*B,)
    padding_mask: torch.Tensor  # (V*B, T_v), True at padding


def multi_crop(frames, lengths, *, num_long=2, num_short=4, long_min_fraction=0.5, short_frames=(50, 100),
               generator=None):
    """DINO multi-crop at frame level: (B, T, ...) frames -> (long Views, short Views or None).

    A long crop takes uniformly 50-100% of the utterance; a short one 50-100 frames (1-2 s), never more than the
    utterance. Starts are uniform over the positions where the crop fits. Padding of the crops is zero.
    """
    lengths = torch.as_tensor(lengths).cpu()
    B = lengths.shape[0]
    n = lengths.expand(num_long, B)
    low = torch.ceil(long_min_fraction * n.double()).long().clamp(min=1)
    long_lengths = low + (torch.rand(num_long, B, generator=generator) * (n - low + 1)).long()
    long = _crop(frames, lengths, long_lengths, generator)
    if num_short == 0:
        return long, None
    lo, hi = short_frames
    short_lengths = lo + (torch.rand(num_short, B, generator=generator) * (hi - lo + 1)).long()
    short_lengths = torch.minimum(short_lengths, lengths.expand(num_short, B))
    return long, _crop(frames, lengths, short_lengths, generator)


def _crop(frames, lengths, crop_lengths, generator):
    V, B = crop_lengths.shape
    starts = (torch.rand(V, B, generator=generator) * (lengths - crop_lengths + 1)).long()   # (V, B)
    T = int(crop_lengths.max())
    t = torch.arange(T)
    index = (starts[..., None] + t).clamp(max=frames.shape[1] - 1)                        # (V, B, T)
    rows = torch.arange(B)[None, :, None].expand(V, B, T)
    padding = t >= crop_lengths[..., None]                                                 # (V, B, T)
    device = frames.device
    crops = frames[rows.to(device), index.to(device)]                                      # (V, B, T, ...)
    crops = crops.masked_fill(padding.to(device).view(V, B, T, *[1] * (frames.dim() - 2)), 0)
    return Views(crops.flatten(0, 1), crop_lengths.flatten().to(device), padding.flatten(0, 1).to(device))


# --- the EMA ------------------------------------------------------------------------------------------------
@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float):
    """teacher = momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for p_s, p_t in zip(student.parameters(), teacher.parameters(), strict=True):
        p_t.mul_(momentum).add_(p_s.detach(), alpha=1.0 - momentum)


# --- L_mask ---------------------------------------------------------------------------------------------------
def time_instance_norm(x, padding_mask, eps=1e-5):
    """Normalise each utterance's channels over its real frames (data2vec's instance norm), padding -> 0."""
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
    n = keep.sum(1, keepdim=True).clamp(min=1.0)
    mean = (x * keep).sum(1, keepdim=True) / n
    var = ((x - mean).pow(2) * keep).sum(1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + eps) * keep


def mask_prediction_loss(prediction, target, beta=1.0):
    """Smooth-L1 between the student's predictions and the teacher targets (N, d) at the masked frames."""
    return F.smooth_l1_loss(prediction, target, beta=beta)


# --- L_sd -------------------------------------------------------------------------------------------------------
class DINOHead(nn.Module):
    """[BatchNorm] -> 3-layer MLP -> L2-normalised bottleneck -> weight-normalised linear (norm fixed to 1)."""

    def __init__(self, in_dim, out_dim=1024, hidden_dim=1024, bottleneck_dim=256, input_bn=True):
        super().__init__()
        # Standardise each embedding dimension over the batch first. Mean-pooled frames of a frozen encoder are
        # nearly parallel across utterances; without this the head gives every utterance the same output, the
        # centre turns that into a uniform teacher and L_sd sits at ln(out_dim) (docs/METHOD.md, departures; tests reproduce it).
        self.input_bn = nn.BatchNorm1d(in_dim, affine=False) if input_bn else nn.Identity()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        g.data.fill_(1.0)
        g.requires_grad = False  # DINO's norm_last_layer: the logits are cosines in [-1, 1]

    def forward(self, x):
        x = F.normalize(self.mlp(self.input_bn(x)), dim=-1)
        return self.last_layer(x)


class SelfDistillationLoss(nn.Module):
    """DINO loss on utterance embeddings. Owns the student head, its EMA teacher twin and the centre.

    Cross-entropy between the teacher's softmax((g_t - c) / tau_t) and the student's log_softmax(g_s / tau_s),
    averaged over every (teacher view, student view) pair of different crops.
    """

    def __init__(self, in_dim: int, config: PretrainConfig):
        super().__init__()
        self.student_temp = config.student_temp
        self.center_momentum = config.center_momentum
        self.num_teacher_views = config.num_long_crops
        self.num_student_views = config.num_long_crops + config.num_short_crops
        self.student_head = DINOHead(in_dim, config.sd_out_dim, config.sd_hidden_dim, config.sd_bottleneck_dim,
                                     input_bn=config.sd_input_bn)
        self.teacher_head = copy.deepcopy(self.student_head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, config.sd_out_dim))

    def forward(self, student_embedding, teacher_embedding, teacher_temp):
        """student_embedding (V_s*B, d) with the long views first, teacher_embedding (V_t*B, d), both view-major.

        Returns the loss and diagnostics; updates the centre when training.
        """
        student_out = (self.student_head(student_embedding) / self.student_temp).chunk(self.num_student_views)
        with torch.no_grad():
            teacher_out = self.teacher_head(teacher_embedding)
            teacher_probs = F.softmax((teacher_out - self.center) / teacher_temp, dim=-1)
        total, pairs = 0.0, 0
        for i, q in enumerate(teacher_probs.chunk(self.num_teacher_views)):
            for v, s in enumerate(student_out):
                if v == i:
                    continue  # same crop: nothing to learn
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                pairs += 1
        if self.training:
            self.update_center(teacher_out)
        with torch.no_grad():
            mean_probs = teacher_probs.mean(0)
            stats = {
                # ~ln(K): the teacher is uniform for every input (nothing learned); ~0: sharp
                "teacher_entropy": -(teacher_probs * torch.log(teacher_probs + 1e-12)).sum(-1).mean(),
                # ~0: every input goes to the same output (collapse); high: outputs spread over dimensions
                "teacher_batch_entropy": -(mean_probs * torch.log(mean_probs + 1e-12)).sum(),
            }
        return total / pairs, stats

    @torch.no_grad()
    def update_center(self, teacher_out):
        batch_center = teacher_out.mean(0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)


# --- L_la -------------------------------------------------------------------------------------------------------
class LocalAttributeCodebook(nn.Module):
    """Online k-means over L2-normalised teacher frames; a frame's nearest centroid is its local attribute.

    ``update`` moves each used centroid towards the mean of its frames by EMA (decay 0.9) and re-normalises it.
    Usage is an EMA of each code's share of frames; a code whose usage falls below ``dead_fraction / K`` (it has
    won almost no frames for ~20 updates) is dead and is re-seeded on a random frame of the current batch. The
    very first update seeds every centroid on random frames (k-means' usual start).
    """

    def __init__(self, num_codes: int, dim: int, decay: float = 0.9, dead_fraction: float = 0.1):
        super().__init__()
        self.num_codes, self.decay, self.dead_fraction = num_codes, decay, dead_fraction
        self.register_buffer("centroids", F.normalize(torch.randn(num_codes, dim), dim=-1))
        self.register_buffer("usage", torch.full((num_codes,), 1.0 / num_codes))
        self.register_buffer("initialised", torch.tensor(False))

    @torch.no_grad()
    def assign(self, frames):
        """(N, dim) -> (N,) index of the nearest centroid by cosine."""
        return (F.normalize(frames.float(), dim=-1) @ self.centroids.T).argmax(-1)

    @torch.no_grad()
    def update(self, frames, codes, generator=None):
        """One online k-means step on (N, dim) frames and their (N,) codes from :meth:`assign`."""
        frames = F.normalize(frames.float(), dim=-1)
        N, K = frames.shape[0], self.num_codes
        if N == 0:
            return
        if not self.initialised:
            self.centroids.copy_(frames[_random_rows(N, K, generator, frames.device)])
            self.initialised.fill_(True)
            return
        counts = torch.bincount(codes, minlength=K).to(frames.dtype)                        # (K,)
        sums = torch.zeros_like(self.centroids).index_add_(0, codes, frames)                 # (K, dim)
        used = counts > 0
        means = sums[used] / counts[used, None]
        self.centroids[used] = F.normalize(self.decay * self.centroids[used] + (1 - self.decay) * means, dim=-1)
        self.usage.mul_(self.decay).add_(counts / N, alpha=1 - self.decay)
        dead = self.usage < self.dead_fraction / K
        if dead.any():
            self.centroids[dead] = frames[_random_rows(N, int(dead.sum()), generator, frames.device)]
            self.usage[dead] = 1.0 / K

    @torch.no_grad()
    def statistics(self, codes):
        """How many codes a batch of codes uses (fraction of K) and the perplexity of their distribution."""
        p = torch.bincount(codes, minlength=self.num_codes).float()
        p = p / p.sum().clamp(min=1)
        perplexity = torch.exp(-(p * torch.log(p + 1e-12)).sum())
        return {"codebook_usage": (p > 0).float().mean(), "codebook_perplexity": perplexity}


def _random_rows(n, k, generator, device):
    """k row indices of n: distinct when possible."""
    index = torch.randperm(n, generator=generator)[:k] if k <= n else torch.randint(n, (k,), generator=generator)
    return index.to(device)


def local_attribute_loss(student_frames, centroids, codes, temperature=0.1):
    """CE of predicting each frame's code from cosine similarities to the (fixed) centroids / temperature."""
    logits = F.normalize(student_frames, dim=-1) @ F.normalize(centroids, dim=-1).T / temperature
    return F.cross_entropy(logits, codes)


# --- all together -----------------------------------------------------------------------------------------------
class PretrainObjective(nn.Module):
    """Student adapter, EMA teacher, heads, codebook and losses of stage 1.

    ``forward(batch)`` takes ``{"hidden_states": (B, L+1, T, D), "lengths": (B,)}`` (or ``"padding_mask"``
    instead of lengths) and returns a dict: ``loss`` (to backpropagate), ``loss_mask``, ``loss_sd``, ``loss_la``
    (0 when switched off) and detached diagnostics. Call ``after_optimizer_step(step)`` after each optimiser
    step: it moves the teacher. Only the student side has trainable parameters; the optimiser may take
    ``objective.parameters()`` as is (frozen ones have requires_grad False and never get a gradient).
    Stage 2 starts from ``objective.teacher`` (a :class:`WAPTransformer` with the student's config).
    """

    def __init__(self, adapter_config: AdapterConfig, config: PretrainConfig | None = None):
        super().__init__()
        config = config or PretrainConfig()
        if config.mask_weight <= 0 and config.sd_weight <= 0 and config.la_weight <= 0:
            raise ValueError("every stage-1 loss weight is 0: nothing to train")
        self.config = config
        d = adapter_config.dim
        self.student = WAPTransformer(adapter_config)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        # the mask embedding lives here, not in the adapter: only the stage-1 student ever uses it
        self.mask_embedding = nn.Parameter(torch.empty(d).uniform_())            # data2vec's init
        self.mask_predictor = nn.Linear(d, d)                                     # L_mask head (student only)
        self.sd_loss = SelfDistillationLoss(d, config)                            # L_sd heads + centre
        self.la_predictor = nn.Linear(d, d)                                       # L_la head (student only)
        self.codebook = LocalAttributeCodebook(config.num_codes, d, config.codebook_decay, config.dead_code_fraction)
        total = config.total_steps
        self.momentum_schedule = cosine_schedule(config.ema_start, config.ema_end, total)
        self.teacher_temp_schedule = cosine_schedule(
            config.teacher_temp, config.teacher_temp, total,
            warmup_steps=round(config.teacher_temp_warmup_fraction * total), start_warmup=config.warmup_teacher_temp)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # updates done; saved with the model
        self.teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never uses dropout (data2vec, DINO)
        return self

    def forward(self, batch):
        cfg = self.config
        hidden_states = batch["hidden_states"]
        lengths = batch["lengths"] if "lengths" in batch else (~batch["padding_mask"]).sum(1)
        lengths = torch.as_tensor(lengths, device=hidden_states.device)
        use_mask, use_sd, use_la = cfg.mask_weight > 0, cfg.sd_weight > 0, cfg.la_weight > 0
        zero = hidden_states.new_zeros((), dtype=torch.float32)
        out = {}

        # 1. per-frame projection of the whole utterances; it commutes with cropping, so crop after it (cheap)
        x_student = self.student.project(hidden_states)                       # (B, T, d)
        with torch.no_grad():
            x_teacher = self.teacher.project(hidden_states)                   # (B, T, d)
        frames = torch.stack([x_student, x_teacher], dim=2)                    # (B, T, 2, d): same crops for both

        # 2. views: DINO multi-crop when L_sd is on, else the whole utterances as one view
        if use_sd:
            long, short = multi_crop(frames, lengths, num_long=cfg.num_long_crops, num_short=cfg.num_short_crops,
                                     long_min_fraction=cfg.long_crop_min_fraction, short_frames=cfg.short_crop_frames)
        else:
            long = Views(frames, lengths, lengths_to_padding_mask(lengths, frames.shape[1]))
            short = None

        # 3. teacher: long views, unmasked, no gradient -> frame targets, codes, utterance embeddings
        with torch.no_grad():
            z_teacher, layers_teacher = self.teacher.contextualize(long.frames[:, :, 1], long.padding_mask,
                                                                   return_layers=True)
            if use_mask or use_la:
                target = sum(time_instance_norm(h, long.padding_mask) for h in layers_teacher) / len(layers_teacher)
            if use_la:
                codes = self.codebook.assign(target)                          # (V*B, T_v) local attributes
                centroids = self.codebook.centroids.clone()                    # what the student is scored against
                real = ~long.padding_mask
                out.update(self.codebook.statistics(codes[real]))
                if self.training:
                    self.codebook.update(target[real], codes[real])          # online k-means step

        # 4. student: the same long views, masked
        mask = span_mask(long.lengths, long.frames.shape[1], cfg.mask_prob, cfg.mask_span)
        z_student = self.student.contextualize(long.frames[:, :, 0], long.padding_mask, mask_positions=mask,
                                               mask_embedding=self.mask_embedding)
        masked_frames, real_frames = mask.sum(), long.lengths.sum()

        # 5. the three losses
        loss_mask = zero
        if use_mask and mask.any():
            loss_mask = mask_prediction_loss(self.mask_predictor(z_student[mask]), target[mask], cfg.mask_loss_beta)
        loss_la = zero
        if use_la and mask.any():
            loss_la = local_attribute_loss(self.la_predictor(z_student[mask]), centroids, codes[mask], cfg.la_temp)
        loss_sd = zero
        if use_sd:
            student_embedding = [masked_mean(z_student, long.padding_mask)]
            if short is not None:
                short_mask = span_mask(short.lengths, short.frames.shape[1], cfg.mask_prob, cfg.mask_span)
                z_short = self.student.contextualize(short.frames[:, :, 0], short.padding_mask,
                                                     mask_positions=short_mask, mask_embedding=self.mask_embedding)
                student_embedding.append(masked_mean(z_short, short.padding_mask))
                masked_frames, real_frames = masked_frames + short_mask.sum(), real_frames + short.lengths.sum()
            teacher_temp = float(self.teacher_temp_schedule[min(int(self.step), len(self.teacher_temp_schedule) - 1)])
            loss_sd, sd_stats = self.sd_loss(torch.cat(student_embedding), masked_mean(z_teacher, long.padding_mask),
                                             teacher_temp)
            out.update(sd_stats, teacher_temp=torch.tensor(teacher_temp))

        loss = cfg.mask_weight * loss_mask + cfg.sd_weight * loss_sd + cfg.la_weight * loss_la
        out.update(loss=loss, loss_mask=loss_mask.detach(), loss_sd=loss_sd.detach(), loss_la=loss_la.detach(),
                   mask_ratio=(masked_frames / real_frames.clamp(min=1)).detach().float())
        return out

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> float:
        """Move the teacher (adapter and L_sd head) towards the student; returns the momentum used."""
        momentum = float(self.momentum_schedule[min(step, len(self.momentum_schedule) - 1)])
        update_teacher(self.student, self.teacher, momentum)
        update_teacher(self.sd_loss.student_head, self.sd_loss.teacher_head, momentum)
        self.step.fill_(step + 1)
        return momentum

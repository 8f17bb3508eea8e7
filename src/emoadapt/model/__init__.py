"""The method's model on cached features: adapter, pooling, classifiers (stage 2) and the stage-1 objective."""
from .adapter import AdapterConfig, FeatureStandardizer, WAPTransformer
from .classifier import (ClassifierConfig, EmoBoxClassifier, EmoBoxConfig, EmotionClassifier, StatsClassifier,
                         StatsConfig, SuperbClassifier, SuperbConfig)
from .recipes import RECIPES, Recipe, build_model, head_settings, recipe, register_recipe
from .pooling import AttentiveStatisticsPooling, lengths_to_padding_mask, masked_mean, utterance_statistics
from .pretrain import (LocalAttributeCodebook, PretrainConfig, PretrainObjective, SelfDistillationLoss,
                       cosine_schedule, multi_crop, update_teacher)
from .masking import channel_mask, span_mask

__all__ = [
    "AdapterConfig", "FeatureStandardizer", "WAPTransformer",
    "AttentiveStatisticsPooling", "lengths_to_padding_mask", "masked_mean", "utterance_statistics",
    "ClassifierConfig", "EmotionClassifier", "SuperbConfig", "SuperbClassifier", "EmoBoxConfig", "EmoBoxClassifier",
    "StatsConfig", "StatsClassifier",
    "RECIPES", "Recipe", "recipe", "register_recipe", "head_settings", "build_model",
    "PretrainConfig", "PretrainObjective", "SelfDistillationLoss", "LocalAttributeCodebook",
    "cosine_schedule", "span_mask", "channel_mask", "multi_crop", "update_teacher",
]

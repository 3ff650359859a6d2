"""NumCLIP components, each registered in mmpretrain's MODELS registry."""
from .adapter import ResidualAdapter
from .backbone import OpenCLIPVisionBackbone
from .classifier import NumCLIP
from .clip_loader import CheckpointMismatchError, build_open_clip, resolve_pretrained
from .heads import NumCLIPHead, OrdinalHead, OrdinalRegressionHead
from .losses import FCRCImageTextLoss, FCRCTextImageLoss, L1RegressionLoss, ordinal_distance_weights
from .prompt_learner import ConceptPromptLearner, InterpolatedRankPromptLearner
from .regressor import SSRRegressor
from .text_encoder import OpenCLIPTextEncoder

__all__ = [
    'CheckpointMismatchError', 'ConceptPromptLearner', 'FCRCImageTextLoss', 'FCRCTextImageLoss',
    'InterpolatedRankPromptLearner', 'L1RegressionLoss', 'NumCLIP', 'NumCLIPHead', 'OpenCLIPTextEncoder',
    'OpenCLIPVisionBackbone', 'OrdinalHead', 'OrdinalRegressionHead', 'ResidualAdapter', 'SSRRegressor',
    'build_open_clip', 'ordinal_distance_weights', 'resolve_pretrained'
]

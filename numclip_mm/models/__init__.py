"""NumCLIP components, each registered in mmpretrain's MODELS registry."""
from .._setup import prepare_runtime

prepare_runtime()  # before the imports below: torchvision must be importable first

from .adapter import ResidualAdapter  # noqa: E402
from .backbone import OpenCLIPVisionBackbone  # noqa: E402
from .classifier import NumCLIP  # noqa: E402
from .clip_loader import CheckpointMismatchError, build_open_clip, resolve_pretrained  # noqa: E402
from .heads import NumCLIPHead, OrdinalHead, OrdinalRegressionHead  # noqa: E402
from .losses import FCRCImageTextLoss, FCRCTextImageLoss, L1RegressionLoss, ordinal_distance_weights  # noqa: E402
from .prompt_learner import ConceptPromptLearner, InterpolatedRankPromptLearner  # noqa: E402
from .regressor import SSRRegressor  # noqa: E402
from .text_encoder import OpenCLIPTextEncoder  # noqa: E402

__all__ = [
    'CheckpointMismatchError', 'ConceptPromptLearner', 'FCRCImageTextLoss', 'FCRCTextImageLoss',
    'InterpolatedRankPromptLearner', 'L1RegressionLoss', 'NumCLIP', 'NumCLIPHead', 'OpenCLIPTextEncoder',
    'OpenCLIPVisionBackbone', 'OrdinalHead', 'OrdinalRegressionHead', 'ResidualAdapter', 'SSRRegressor',
    'build_open_clip', 'ordinal_distance_weights', 'resolve_pretrained'
]

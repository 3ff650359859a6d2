from .fcrc import FCRCImageTextLoss, FCRCTextImageLoss, ordinal_distance_weights
from .regression import L1RegressionLoss

__all__ = ['FCRCImageTextLoss', 'FCRCTextImageLoss', 'L1RegressionLoss', 'ordinal_distance_weights']

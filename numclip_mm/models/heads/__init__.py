from .numclip_head import NumCLIPHead
from .regression_head import OrdinalRegressionHead

__all__ = ['NumCLIPHead', 'OrdinalRegressionHead']

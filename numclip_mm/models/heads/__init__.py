from .numclip_head import NumCLIPHead
from .ordinal_head import OrdinalHead
from .regression_head import OrdinalRegressionHead

__all__ = ['NumCLIPHead', 'OrdinalHead', 'OrdinalRegressionHead']

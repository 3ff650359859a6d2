"""Ordinal metrics, the prediction dump (registered on import) and conformal prediction intervals."""
from .._setup import prepare_runtime

prepare_runtime()  # before the imports below: torchvision must be importable first

from ..conformal import Calibration, fit_calibration, get_calibration, sidecar_path  # noqa: E402
from .dump import DumpOrdinalPredictions, load_predictions, samples_to_frame, write_predictions  # noqa: E402
from .ordinal_metric import OrdinalMetric, average_ranks, quadratic_weighted_kappa, spearman  # noqa: E402

__all__ = [
    'OrdinalMetric', 'DumpOrdinalPredictions', 'load_predictions', 'samples_to_frame', 'write_predictions',
    'average_ranks', 'quadratic_weighted_kappa', 'spearman', 'Calibration', 'fit_calibration', 'get_calibration',
    'sidecar_path'
]

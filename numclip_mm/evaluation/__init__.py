"""Ordinal metrics, the prediction dump (registered on import) and conformal prediction intervals."""
from .conformal import Calibration, fit_calibration, get_calibration, sidecar_path
from .dump import DumpOrdinalPredictions, load_predictions, samples_to_frame, write_predictions
from .ordinal_metric import OrdinalMetric, average_ranks, quadratic_weighted_kappa, spearman

__all__ = [
    'OrdinalMetric', 'DumpOrdinalPredictions', 'load_predictions', 'samples_to_frame', 'write_predictions',
    'average_ranks', 'quadratic_weighted_kappa', 'spearman', 'Calibration', 'fit_calibration', 'get_calibration',
    'sidecar_path'
]

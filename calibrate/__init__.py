"""rnnquant.calibrate: streaming activation statistics, outlier-channel detection, reports.

    stats = collect(model, batches, CalibConfig())     # hooks at every point the adapter declares
    calib = to_calibration(stats)                      # summaries + outlier lists
    save_calibration(calib, "calib/")                  # calib.safetensors, calib.json, report.md, PNGs
    calib = load_calibration("calib/", model)          # refuses another model's calibration
"""
from .artifact import Calibration, load_calibration, save_calibration, to_calibration
from .collect import CalibConfig, CalibrationStats, calibration_batches, collect, find_outliers
from .inject import inject_outliers
from .stats import ChannelStats

__all__ = [
    "CalibConfig", "Calibration", "CalibrationStats", "ChannelStats", "calibrate", "calibration_batches", "collect",
    "find_outliers", "inject_outliers", "load_calibration", "save_calibration", "to_calibration",
]


def calibrate(model, ids, config: CalibConfig | None = None, progress: bool = False) -> Calibration:
    """The whole stage on a token stream: batches -> collect -> summaries with fingerprints."""
    import hashlib

    config = config or CalibConfig()
    batches = calibration_batches(ids, config.samples, config.seq_len, config.batch_size)
    stats = collect(model, batches, config, progress=progress)
    stats.meta = {
        "model_fingerprint": model.provenance.fingerprint,
        "model_type": model.model_type,
        "data_fingerprint": hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
    }
    return to_calibration(stats)

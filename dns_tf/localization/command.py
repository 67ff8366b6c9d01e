"""``dns-tf evaluate --segments GROUND_TRUTH.json PREDICTIONS.json``: scores predicted segments."""

from __future__ import annotations

import json
import sys

from dns_tf.localization.metrics import localization_metrics
from dns_tf.localization.segments import SegmentFormatError, read_segments


def run_segments(truth_path: str, predictions_path: str, as_json: bool = False) -> int:
    """Prints segment F1 at IoU 0.5 and the segment µAP; exit code 1 on a bad file."""
    try:
        truth = read_segments(truth_path)
        predictions = read_segments(predictions_path, scored=True)
    except (OSError, SegmentFormatError) as error:
        print(f"dns-tf evaluate: error: {error}", file=sys.stderr)
        return 1
    metrics = localization_metrics(truth, predictions)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{metrics['pairs']} pairs with ground truth: segment F1@IoU0.5 "
              f"{metrics['segment_f1_iou50']:.4f} (precision {metrics['precision_iou50']:.4f}, "
              f"recall {metrics['recall_iou50']:.4f}), segment muAP {metrics['segment_muap']:.4f}")
    return 0

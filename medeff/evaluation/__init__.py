"""medeff.evaluation: clinical evaluation of classification scores and segmentation masks.

``evaluate_classification`` and ``evaluate_segmentation`` compute a JSON-ready results dict with confidence
intervals; ``render_report`` writes it as HTML, PDF, JSON and CSV. No training code is imported here.
"""

from __future__ import annotations

from medeff.evaluation.classification import evaluate_classification
from medeff.evaluation.report import FORMATS, load_results, render_report, save_results
from medeff.evaluation.roc import delong, delong_paired_test
from medeff.evaluation.segmentation import evaluate_segmentation
from medeff.evaluation.surface import EmptyConventions, label_metrics

__all__ = ["evaluate_classification", "evaluate_segmentation", "render_report", "save_results", "load_results",
           "FORMATS", "delong", "delong_paired_test", "label_metrics", "EmptyConventions"]

"""Baselines that need no network: reference points for the EfficientNets on the same splits."""

from medeff.baselines.knn import ThumbnailKNN, knn_config, knn_predict_index

__all__ = ["ThumbnailKNN", "knn_config", "knn_predict_index"]

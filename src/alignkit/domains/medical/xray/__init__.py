"""Chest X-ray report-image pretraining: readers, image IO, models and evaluation (issue 3)."""

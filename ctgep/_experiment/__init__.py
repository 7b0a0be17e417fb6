"""Experiments: model cards, datasets and training runs."""

"""Thin callbacks over :func:`mlflow_flux.watch` for training frameworks; optional extras the core never imports."""

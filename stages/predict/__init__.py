"""Predictions from a trained checkpoint on new videos or a store (``twostage predict``)."""

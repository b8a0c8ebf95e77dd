"""Threshold read (format v3): one transplanted MLP neuron per edited layer adds ≈ α·ReLU(g·x − t)·ŝ."""

from .edit import ThresholdRead

METHOD = ThresholdRead()

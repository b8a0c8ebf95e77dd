"""Gated read (format v2): each edited writer reads a fitted h instead of w̄, so the edit fires on harm only."""

from .edit import GatedRead

METHOD = GatedRead()

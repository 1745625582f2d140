"""Portable statements: one hand-written SQL text with ``:name`` placeholders on both engines."""

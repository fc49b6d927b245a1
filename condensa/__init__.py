"""Compression strategies."""

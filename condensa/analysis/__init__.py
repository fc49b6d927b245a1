"""Analyses that train many models (unlike metrics, which only measure): Feldman-Zhang memorization."""

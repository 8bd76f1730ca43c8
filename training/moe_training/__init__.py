"""Trainer for moe's one-vs-all expert bundles (see training/README.md)."""

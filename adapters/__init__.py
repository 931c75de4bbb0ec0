"""Adapters: where data enters and leaves a node (databases, files)."""

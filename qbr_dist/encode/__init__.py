"""Frozen content encoders (text, image) and the Ray Data job that runs them over shards."""

"""Distributed runtime: Ray Train workers, each driving a DeepSpeed engine."""

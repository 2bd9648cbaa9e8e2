"""Semantic quantization: distributed k-means, residual quantizers, semantic IDs."""

"""Semantic quantization: distributed k-means, residual quantizers, semantic IDs."""

# Files of the quantize stage folder (and, for CODES, of the retokenize one).
CODES, CODEBOOKS, STATS = "codes.parquet", "codebooks.safetensors", "quant_stats.json"

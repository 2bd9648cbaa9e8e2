"""qbr-dist: Q-BERT4Rec on Ray + DeepSpeed."""
__version__ = "0.1.0"

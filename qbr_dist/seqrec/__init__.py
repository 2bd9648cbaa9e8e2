"""Sequential recommenders over item tokens: BERT4Rec (ID tokens) and, later, Q-BERT (semantic codes)."""

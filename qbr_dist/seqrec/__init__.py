"""Sequential recommenders over item tokens: BERT4Rec (ID tokens) and Q-BERT4Rec (semantic codes)."""

TRAINED_MODELS = ("qbert4rec", "bert4rec")  # the training stages whose weights recommend (the first by default)

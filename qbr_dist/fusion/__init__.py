"""Stage 1 of Q-BERT4Rec: cross-modal fusion of ID, text, image and structure into one vector per item."""

"""Stage 1 of Q-BERT4Rec: cross-modal fusion of ID, text, image and structure into one vector per item."""

STATS = "fusion_stats.json"  # modality weights, gates, depths and the loss curve, in the fusion stage folder

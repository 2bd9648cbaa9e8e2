"""Looking into a run: what the semantic codes stand for, and why an item is recommended."""

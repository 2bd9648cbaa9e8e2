"""Data layer: dataset fetchers, catalog/interaction readers, sequence splits."""

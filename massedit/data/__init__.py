"""Text and data sets: statistics corpora, the embedded WikiText excerpt, data locations."""

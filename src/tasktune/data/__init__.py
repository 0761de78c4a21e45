"""Data layer: files -> conversations -> loss-masked token ids -> packed, collated batches."""

"""Self-supervised pre-training (MAE) of the supernet's largest encoder."""

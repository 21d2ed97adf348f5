"""Hardware-aware architecture search: supernet training, latency model, evolutionary search."""

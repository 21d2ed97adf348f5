"""Models: the weight-sharing ViT supernet. Knows no MLflow and no Dagster."""

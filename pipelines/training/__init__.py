"""Training sets, LightGBM training and MLflow logging."""

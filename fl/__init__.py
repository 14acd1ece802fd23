"""Training: data preparation, the model and its artifact, the Flower apps, baselines, reports."""

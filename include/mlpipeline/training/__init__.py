"""Model training: hyperparameter search, final fit, MLflow tracking and registration."""

"""What every stage leans on: the home folder, audit ledger, access, secrets, MLflow models."""

"""The feedback loop: inference log, feedback, drift, A/B tests, rollback, model lifecycle."""

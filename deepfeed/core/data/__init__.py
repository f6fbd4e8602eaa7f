"""Corpus intake: ingest, the raw store, cleaning and its checks, PII scrubbing, k-anonymity, DP."""

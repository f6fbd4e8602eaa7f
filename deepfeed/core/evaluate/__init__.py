"""Scoring candidates, paired intervals, the promotion gate and the evaluation report."""

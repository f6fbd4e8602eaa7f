"""Operator tools: the hardware planner, the environment doctor, tiny test models."""

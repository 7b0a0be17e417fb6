"""Observation: recording trajectories, figures and weight alignment."""

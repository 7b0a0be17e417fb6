"""Dynamics: vector fields, activations and the low-level field operations."""

"""Simulation: phase solvers and the one phase integrator."""

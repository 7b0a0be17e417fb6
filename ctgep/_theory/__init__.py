"""Theory: reference gradients, adjoint ODEs and the theorem checks."""

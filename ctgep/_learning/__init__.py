"""Learning rules: turn phases into parameter updates."""

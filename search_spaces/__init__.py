"""bitsweep package."""

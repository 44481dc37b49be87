"""bitsweep benchmarks (not tests): each reports ratios against a baseline of the same run."""

"""Table 1 and the figures from a run's results, beside the paper's numbers."""

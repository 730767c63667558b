"""Results collection, scaling-curve fits with uncertainty, plots and the report."""

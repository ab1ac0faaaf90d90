"""Analyses of the study: significance tests, popularity bias, sparsity, convergence, false negatives."""

"""Hybrid pruning: score channels with a criterion, remove whole residual blocks (depth) and channels (width)."""

"""Matchers: find all pairs of codes within a radius (and top-k) under one interface."""

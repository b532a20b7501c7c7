"""Measure browser model variants in headless Chromium (see harness.measure)."""

"""Bare baselines: the same jobs written plainly and fast without botrelay."""

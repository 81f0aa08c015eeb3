"""botrelay's benchmark suite: ``python -m bench`` (``--smoke`` for a quick check)."""

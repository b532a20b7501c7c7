"""Judging a variant: the native side of each pair (onnxruntime runs), evaluation samples, and the metrics that
compare a browser's outputs with the reference and check them against the recipe's budget."""

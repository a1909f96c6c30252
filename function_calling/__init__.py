"""Function calling beyond the gateway's pass-through: BFCL evaluation (``octogate fc eval``)."""

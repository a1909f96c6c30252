"""``octogate fc eval``: BFCL cases (``bfcl``) sent through a running gateway (``runner``)."""

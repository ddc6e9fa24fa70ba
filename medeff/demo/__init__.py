"""Built-in phantom data and the end-to-end demo (``medeff demo``)."""

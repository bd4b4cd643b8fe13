"""The thumb-drive image: laid out once (layout), written to many drives at once (write)."""

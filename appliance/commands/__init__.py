"""One module per sub-command; each only parses arguments and calls the package's functions."""

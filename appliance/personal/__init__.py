"""The personal mode: one user's workshop Jupyter on a remote machine, HTTPS with a password."""

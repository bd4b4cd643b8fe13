"""The class JupyterHub: roster, passwords and their slips (the deploy play lives in provision/)."""

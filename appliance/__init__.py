"""Build a deep learning workshop from one repository: appliance, thumb drive, local mode."""

__version__ = "0.1.0"

"""The workshop on Kubernetes through the Zero to JupyterHub Helm chart: the chart's values written
from workshop.yml (values.py, checked against chart.py's pinned version) and node sizing (sizing.py)."""

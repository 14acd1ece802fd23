"""The live dashboard: ``panel serve dashboards/app.py``."""

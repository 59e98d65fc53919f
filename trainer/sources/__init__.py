"""Training-data sources other than files: SQL databases through SQLAlchemy URLs."""

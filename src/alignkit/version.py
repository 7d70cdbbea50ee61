"""The package version (read by ``alignkit.__version__`` and written into exported models)."""
__version__ = "0.1.0"

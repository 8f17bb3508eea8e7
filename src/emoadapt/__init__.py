"""emoadapt: parameter-efficient speech emotion recognition (arXiv 2509.23795)."""

__version__ = "0.1.0"

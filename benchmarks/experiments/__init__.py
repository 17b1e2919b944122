"""One-off experiments behind figures and choices in benchmarks/README.md; not part of
``gpugd bench``. Each runs as ``python -m benchmarks.experiments.<name> --help``."""

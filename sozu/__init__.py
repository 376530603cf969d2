"""sozu: a prefork reverse proxy for HTTP/1.1, HTTPS and TCP that never needs a restart."""

__version__ = "0.1.0"

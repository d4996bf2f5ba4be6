"""orchestratord: the HTTP server (Litestar on Granian), its CLI and a Python client."""

"""HTTP/2: terminated connections from clients (ALPN h2) and h2c connections to backends (gRPC routes)."""

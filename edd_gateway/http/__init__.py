"""
The HTTP/1.1 reverse proxy: request heads parsed by llhttp (httptools),
routed by the live route table, streamed to pooled backend connections.
"""

"""The routes file whose rows the routes-sync tests follow, pure and on PostgreSQL."""

FILE = """\
routes:
  - host: cloud-api.example.com
    path: /
    target: backend:80
  - host: cloud-api.example.com
    path: /compute/
    target: edd-compute:80
    strip_prefix: true
  - host: cloud-api.example.com
    path: /exact
    match: exact
    target: exact:80
  - host: welcome.example.com
    path: /
    target: internal:welcome
"""

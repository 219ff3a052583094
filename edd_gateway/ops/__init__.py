"""
What the operator sees: the observation seam the connection paths report
endings to, the Prometheus metrics and the access log built on it, the
wiring of the running parts to the metrics and readiness, and the admin
endpoint (C{/healthz}, C{/readyz}, C{/metrics}).
"""

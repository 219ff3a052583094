"""
On-demand ACME (RFC 8555) for custom domains: the client wrapper, the
challenge responders, the certificate store in PostgreSQL (keys sealed at
rest), the lease that lets one replica issue at a time, and renewal.
"""

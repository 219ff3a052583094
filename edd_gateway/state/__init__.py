"""
The live state of the cloud as the gateway sees it: containers, their
ingress rules and their owners' SSH keys, built by sources (a local YAML
file, PostgreSQL, NATS events) into immutable snapshots swapped in whole.
"""

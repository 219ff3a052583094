"""
Files the gateway reads while it runs: the YAML loader that keeps line
numbers for C{file:line: reason} errors, and the watcher that calls back
when a file (a Kubernetes ConfigMap or Secret volume included) changes.
"""

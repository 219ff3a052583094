"""Integration tests: anything that opens a real socket or starts a process (the gateway, curl, ssh, openssl,
PostgreSQL, nats-server, sshd).  Each skips with its reason when a tool is missing, unless
C{EDD_GATEWAY_REQUIRE_INTEGRATION=1}."""

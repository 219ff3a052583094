"""Unit tests: fast, in memory (StringTransport, MemoryReactorClock, iosim); no sockets, no processes, no servers."""

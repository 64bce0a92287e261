"""Sans-I/O cores: no sockets, clocks, threads, devices or C libraries. Time comes in as `now`."""

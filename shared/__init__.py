"""Code shared by the botrelay ingress and workers: settings, payloads, topology, broker, logs."""

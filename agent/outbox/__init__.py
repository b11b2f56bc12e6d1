"""Out: the durable spool and the forwarding of its records to sinks."""

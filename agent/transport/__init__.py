"""MQTT in: connections, the fast PUBLISH splitter, sources and the bounded intake."""

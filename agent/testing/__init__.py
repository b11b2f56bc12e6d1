"""Test support for the agent and for plugin authors: a real mosquitto, conformance checks."""

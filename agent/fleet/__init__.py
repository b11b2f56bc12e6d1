"""A fleet of agents: signed desired state over MQTT, safe apply with rollback, reported state.

bundle   keys, signing and verification of desired states (Ed25519)
topics   the topic layout under ``fleet.topic``
state    what survives a restart: the last good version, its files, the counters
compose  a bundle's pipelines + the local config = the config to validate and apply
manager  the agent's side: subscribe, verify, stage, apply, health-gate, roll back, report
cli      ``edge-agent fleet keygen | sign | publish | status``
"""

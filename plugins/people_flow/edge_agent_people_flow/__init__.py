"""edge-agent plugin: people flow over camera detection metadata."""

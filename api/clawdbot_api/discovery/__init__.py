"""The operator <-> sidecar discovery protocol (generated from discovery.proto)."""

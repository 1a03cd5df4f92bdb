"""The sidecar's own gRPC API (clawdbot.sidecar.v1.Generate), generated from generate.proto."""

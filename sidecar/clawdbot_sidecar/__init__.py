"""clawdbot_sidecar."""

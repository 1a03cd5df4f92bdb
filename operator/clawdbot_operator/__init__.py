"""clawdbot_operator."""

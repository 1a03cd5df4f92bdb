"""clawdbot_cli."""

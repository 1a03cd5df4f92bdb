"""clawdbot_api."""

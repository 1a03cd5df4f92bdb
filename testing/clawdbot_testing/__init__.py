"""Test and demo fixtures of the project, kept out of the product packages.

``clawdbot_testing.cloud`` is the loopback stand-in for a cloud LLM API (OpenAI's protocol
over a real socket) that the tests, the e2e suite and ``make demo`` route to. Nothing in the
operator, the sidecar or the runtime imports this package.
"""

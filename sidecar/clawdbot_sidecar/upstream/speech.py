"""One call to the policy's local speech-to-text server (``spec.localSpeech``).

Any OpenAI-compatible server that serves ``/audio/transcriptions`` and
``/audio/translations`` will do (faster-whisper, whisper.cpp and vLLM's servers speak it);
the request is the app's form again, with the policy's model name when it gives one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clawdbot_api.openai_wire import usage_of
from clawdbot_api.v1alpha1 import LocalSpeech
from clawdbot_sidecar.accounting.ledger import Outcome
from clawdbot_sidecar.config import Limits
from clawdbot_sidecar.errors import RequestError
from clawdbot_sidecar.upstream.client import Upstream
from clawdbot_sidecar.upstream.form import encode_form
from clawdbot_sidecar.upstream.local import Reply

__all__ = ["SpeechTarget"]


class SpeechTarget:
    """The local speech server behind the policy."""

    def __init__(self, client: Upstream) -> None:
        self.client = client

    async def call(
        self, body: Mapping[str, Any], speech: LocalSpeech | None, limits: Limits, out: Outcome
    ) -> Reply:
        """The server's JSON answer; raises UpstreamError, or a 400 when the policy names
        no speech server (a configuration to fix, not a server to wait for)."""
        if speech is None:
            raise RequestError(
                400,
                "no local speech server is configured (spec.localSpeech), and this audio "
                "is not sent to the cloud (see spec.redaction.uninspectable and "
                "spec.cloud.audioModel)",
                code="speech_not_configured",
                reason="no-local-speech",
            )
        request = dict(body)
        if speech.model is not None:
            request["model"] = speech.model
        url = f"{speech.base_url.rstrip('/')}/{out.endpoint}"
        answer = await self.client.post_form(
            url, encode_form(request), {}, limits.local_timeout_s, limits.local_connect_timeout_s
        )
        out.prompt_tokens, out.completion_tokens = usage_of(answer)
        return Reply(body=answer)

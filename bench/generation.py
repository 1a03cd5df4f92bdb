"""Generation benchmark: tokens/s of a decoder with its KV cache vs recomputing every step.

The model is the project's tiny GPT-style decoder (``clawdbot-demo-model
--kind gpt``: 2 layers, 64 wide, Optimum's text-generation-with-past contract). For each
completion length, the same greedy generation from the same prompt runs two ways in one
onnxruntime session (one intra-op thread):

- ``cache``: the prompt once with an empty cache, then one token per step with the presents
  fed back (what the server does);
- ``recompute``: every step runs the whole sequence from an empty cache (what a server
  without a cache must do).

End-of-text is masked out so both generate exactly the requested number of tokens, and the
two token sequences are checked to be identical before any number is printed.

A second table serves the same model with ``clawdbot-runtime serve`` (one intra-op thread)
and sends ``/v1/completions`` (greedy, ``ignore_eos``, fixed length) from 1 or 8 concurrent
clients whose prompts differ in length, with dynamic batching off (``--max-batch-size 1``)
and on (``8``): tokens/s over the HTTP front, the batcher and the cache path, and how many
generations each onnxruntime run carried on average.

    .venv/bin/python bench/generation.py [--lengths 32,128,250] [--repeats 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime as ort
from batching import Server

from clawdbot_runtime.decoder_spec import LOGITS, DecoderSpec
from clawdbot_runtime.model import MODEL_FILE, OnnxModel, SessionSettings
from clawdbot_runtime.providers import select_providers
from clawdbot_testing.models.tinygpt import build_tiny_gpt

PROMPT = "the kettle is"
# Prompts of different lengths, so concurrent generations sit at different cache lengths.
CLIENT_PROMPTS = [
    "the kettle is",
    "a request that carries private data",
    "the train leaves at nine",
    "small models run well on the processor, and large models",
    "the garden",
    "every decision is written to the audit log",
    "she read the letter twice",
    "when a new version of a model is ready, the old one",
]


def generate(
    session: ort.InferenceSession, spec: DecoderSpec, prompt: list[int], n: int, *, cache: bool
) -> list[int]:
    """``n`` greedy tokens after ``prompt`` (end-of-text never chosen)."""
    banned = list(spec.eos_token_ids)
    sequence, tokens = list(prompt), []
    past, length, new = spec.empty_past(), 0, list(prompt)
    for _ in range(n):
        if cache:
            outputs = session.run(spec.output_names, spec.feeds(new, past, length))
            past, length = outputs[1:], length + len(new)
        else:
            outputs = session.run([LOGITS], spec.feeds(sequence, spec.empty_past(), 0))
        logits = outputs[0][0, -1]
        logits[banned] = -np.inf
        token = int(np.argmax(logits))
        tokens.append(token)
        sequence.append(token)
        new = [token]
    return tokens


async def generations_per_run(http: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(model runs, generation steps served by them) so far, from the server's /metrics."""
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    values = []
    for kind in ("count", "sum"):
        match = re.search(
            rf'^clawdbot_runtime_requests_per_batch_{kind}{{model="tiny-gpt"}} (\S+)$',
            text,
            re.MULTILINE,
        )
        values.append(float(match.group(1)) if match else 0.0)
    return values[0], values[1]


async def complete(http: aiohttp.ClientSession, url: str, prompt: str, tokens: int) -> int:
    """One greedy fixed-length completion; the completion tokens it reports."""
    body = {
        "model": "tiny-gpt",
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    async with http.post(f"{url}/v1/completions", json=body) as reply:
        reply.raise_for_status()
        return int((await reply.json())["usage"]["completion_tokens"])


async def served(repository: Path, tokens: int) -> None:
    """tokens/s over /v1/completions, batching off and on, at concurrency 1 and 8."""
    print(
        f"\nserved: /v1/completions, {tokens} tokens each (ignore_eos), prompts of "
        "different lengths"
    )
    print(f"{'batching':>8} | {'clients':>7} | {'tok/s':>6} | {'generations/run':>15}")
    for label, batch in (("off", "1"), ("on", "8")):
        server = await Server.start(repository, ["--cpu-threads", "1", "--max-batch-size", batch])
        try:
            async with aiohttp.ClientSession() as http:
                await complete(http, server.url, PROMPT, tokens)  # warm-up
                for clients in (1, 8):
                    runs0, steps0 = await generations_per_run(http, server.url)
                    started = time.perf_counter()
                    done = await asyncio.gather(
                        *(complete(http, server.url, p, tokens) for p in CLIENT_PROMPTS[:clients])
                    )
                    rate = sum(done) / (time.perf_counter() - started)
                    runs, steps = await generations_per_run(http, server.url)
                    merged = (steps - steps0) / max(runs - runs0, 1)
                    print(f"{label:>8} | {clients:>7} | {rate:>6.0f} | {merged:>15.1f}")
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="32,128,250", help="completion lengths (tokens)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the best counts")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per served request")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_gpt(Path(tmp))
        settings = SessionSettings(
            providers=select_providers("cpu", ort.get_available_providers()), cpu_threads=1
        )
        model = OnnxModel.load("tiny-gpt", 1, folder, settings)
        assert model.decoder is not None
        spec, tokenizer = model.decoder.spec, model.decoder.tokenizer
        session = ort.InferenceSession(
            str(folder / MODEL_FILE), settings.options(), providers=["CPUExecutionProvider"]
        )
        prompt = tokenizer.encode(PROMPT, add_special_tokens=True)
        room = spec.context_length - len(prompt)
        print(
            f"model: tiny-gpt ({spec.num_layers} layers, {spec.kv_heads} KV heads x "
            f"{spec.head_dim}, context {spec.context_length}); prompt {len(prompt)} tokens; "
            f"onnxruntime {ort.__version__}, 1 intra-op thread"
        )
        print(f"{'tokens':>6} | {'cache tok/s':>11} | {'recompute tok/s':>15} | {'speed-up':>8}")
        for n in (min(int(x), room) for x in args.lengths.split(",")):
            for cache in (True, False):  # warm the arenas for this length
                generate(session, spec, prompt, n, cache=cache)
            best: dict[bool, float] = {}
            results: dict[bool, list[int]] = {}
            for cache in (True, False):
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    results[cache] = generate(session, spec, prompt, n, cache=cache)
                    rate = n / (time.perf_counter() - started)
                    best[cache] = max(best.get(cache, 0.0), rate)
            if results[True] != results[False]:
                raise SystemExit(f"{n} tokens: the cached generation differs from recomputing")
            print(
                f"{n:>6} | {best[True]:>11.0f} | {best[False]:>15.0f} | "
                f"{best[True] / best[False]:>7.1f}x"
            )
        asyncio.run(served(Path(tmp), args.tokens))


if __name__ == "__main__":
    main()

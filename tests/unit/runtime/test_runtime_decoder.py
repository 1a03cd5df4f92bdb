"""The decoder contract (Optimum text-generation-with-past), its KV cache, tokenizer and
chat template, on the tiny GPT-style model the project builds itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from runtime_support import (
    full_sequence_logits,
    greedy_without_cache,
    write_linear,
)

from clawdbot_runtime.decoder_spec import DecoderSpec
from clawdbot_runtime.errors import ModelLoadError
from clawdbot_runtime.hf_text import ChatTemplateError, HfTokenizer
from clawdbot_runtime.model import MODEL_FILE, OnnxModel, SessionSettings
from clawdbot_runtime.providers import select_providers
from clawdbot_runtime.tensors import Array, TensorSpec
from clawdbot_testing.models.cli import main as demo_model
from clawdbot_testing.models.tinygpt import EOS_TOKEN, build_tiny_gpt

SETTINGS = SessionSettings(
    providers=select_providers("cpu", ["CPUExecutionProvider"], allow_cpu_fallback=False),
    cpu_threads=1,
)
PROMPTS = [
    "the kettle is",
    "a request that",
    f"{EOS_TOKEN}<|user|>is my data safe?<|assistant|>",
]


def load(folder: Path, name: str = "tiny-gpt") -> OnnxModel:
    return OnnxModel.load(name, 1, folder, SETTINGS)


@pytest.fixture(scope="module")
def gpt(gpt_template: Path) -> OnnxModel:
    return load(gpt_template / "1")


def greedy_with_cache(
    model: OnnxModel, ids: list[int], steps: int
) -> tuple[list[int], list[Array]]:
    """Prefill once, then one token per step with the presents fed back (the server's feeds)."""
    assert model.decoder is not None
    spec = model.decoder.spec
    past, length, new = spec.empty_past(), 0, list(ids)
    tokens: list[int] = []
    all_logits: list[Array] = []
    for _ in range(steps):
        outputs = model.run(spec.feeds(new, past, length), spec.output_names)
        past = [outputs[name] for name in spec.present_names]
        length += len(new)
        logits = outputs["logits"][0, -1]
        token = int(np.argmax(logits))
        tokens.append(token)
        all_logits.append(logits)
        if token in spec.eos_token_ids:
            break
        new = [token]
    return tokens, all_logits


def test_folder_is_laid_out_like_an_optimum_export(gpt_template: Path) -> None:
    folder = gpt_template / "1"
    names = {p.name for p in folder.iterdir()}
    assert names == {
        MODEL_FILE,
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    graph = onnx.load(str(folder / MODEL_FILE)).graph

    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in graph.input}
    outputs = {o.name: dims(o) for o in graph.output}
    config = json.loads((folder / "config.json").read_text())
    kv, dim, layers = config["num_key_value_heads"], config["head_dim"], config["num_hidden_layers"]
    assert inputs["input_ids"] == ["batch_size", "sequence_length"]
    assert inputs["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
    assert inputs["position_ids"] == ["batch_size", "sequence_length"]
    assert outputs["logits"] == ["batch_size", "sequence_length", config["vocab_size"]]
    for i in range(layers):
        for kind in ("key", "value"):
            assert inputs[f"past_key_values.{i}.{kind}"] == [
                "batch_size",
                kv,
                "past_sequence_length",
                dim,
            ]
            assert outputs[f"present.{i}.{kind}"] == [
                "batch_size",
                kv,
                "past_sequence_length + sequence_length",
                dim,
            ]
    assert len(inputs) == 3 + 2 * layers and len(outputs) == 1 + 2 * layers
    assert config["num_attention_heads"] > kv  # grouped-query attention, as Llama-style models


def test_load_detects_the_decoder_contract(gpt: OnnxModel) -> None:
    assert gpt.decoder is not None and gpt.lm is None and gpt.generates_text
    spec = gpt.decoder.spec
    assert (spec.num_layers, spec.kv_heads, spec.head_dim) == (2, 2, 16)
    assert spec.context_length == 256 and spec.has_position_ids
    eos = gpt.decoder.tokenizer.token_id(EOS_TOKEN)
    user = gpt.decoder.tokenizer.token_id("<|user|>")
    # generation_config.json's list (EOS and the next turn's marker) wins over config.json.
    assert spec.eos_token_ids == (eos, user) and spec.bos_token_id == eos
    assert gpt.batchable  # every input and output has a dynamic dim 0


@pytest.mark.parametrize("prompt", PROMPTS)
def test_kv_cache_gives_the_same_tokens_as_recomputing(gpt: OnnxModel, prompt: str) -> None:
    assert gpt.decoder is not None
    spec, tokenizer = gpt.decoder.spec, gpt.decoder.tokenizer
    ids = tokenizer.encode(prompt, add_special_tokens=True)
    cached, cached_logits = greedy_with_cache(gpt, ids, 40)
    geometry = (spec.num_layers, spec.kv_heads, spec.head_dim)
    fresh, fresh_logits = greedy_without_cache(
        gpt.session, ids, 40, spec.eos_token_ids[0], geometry
    )
    assert cached == fresh
    assert len(cached) >= 5
    for a, b in zip(cached_logits, fresh_logits, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_the_cache_and_positions_matter(gpt: OnnxModel) -> None:
    """The equality above could fail: a step with a wrong cache or position moves logits."""
    assert gpt.decoder is not None
    spec = gpt.decoder.spec
    ids = gpt.decoder.tokenizer.encode("the weather is mild today", add_special_tokens=True)
    geometry = (spec.num_layers, spec.kv_heads, spec.head_dim)
    truth = full_sequence_logits(gpt.session, ids, *geometry)[-1]
    prefill = gpt.run(spec.feeds(ids[:-1], spec.empty_past(), 0), spec.output_names)
    past = [prefill[name] for name in spec.present_names]
    right = gpt.run(spec.feeds(ids[-1:], past, len(ids) - 1), ["logits"])["logits"][0, -1]
    np.testing.assert_allclose(right, truth, rtol=1e-4, atol=1e-4)
    # No cache at all: the last token alone, at its true position.
    alone = gpt.run(spec.feeds(ids[-1:], spec.empty_past(), 0), ["logits"])["logits"][0, -1]
    # The right cache, but the position the token would have without one.
    feeds = spec.feeds(ids[-1:], past, len(ids) - 1)
    feeds["position_ids"] = np.zeros((1, 1), dtype=np.int64)
    shifted = gpt.run(feeds, ["logits"])["logits"][0, -1]
    for wrong in (alone, shifted):
        assert np.abs(wrong - truth).max() > 0.05


def test_tokenizer_round_trips_and_decodes_incrementally(gpt: OnnxModel) -> None:
    assert gpt.decoder is not None
    tokenizer = gpt.decoder.tokenizer
    text = "the cloud décide, naïve wörld ☃ ok"  # characters the corpus never had
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # real BPE merges, not one token per byte
    prompt = tokenizer.encode("say:", add_special_tokens=False)
    decoder = tokenizer.decoder(prompt)
    pieces = [decoder.add(token) for token in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert "" in pieces  # some tokens held half a character back


def test_chat_template_renders_with_jinja(gpt: OnnxModel) -> None:
    assert gpt.decoder is not None
    tokenizer = gpt.decoder.tokenizer
    assert tokenizer.has_chat_template
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert tokenizer.render_chat(messages) == (
        f"{EOS_TOKEN}<|system|>be brief<|user|>hello<|assistant|>"
    )
    ids = tokenizer.encode(tokenizer.render_chat(messages), add_special_tokens=False)
    markers = [tokenizer.token_id(t) for t in (EOS_TOKEN, "<|system|>", "<|user|>")]
    assert ids[0] == markers[0] and markers[1] in ids and markers[2] in ids


def test_chat_template_fallback_and_errors(tmp_path: Path, gpt_template: Path) -> None:
    folder = tmp_path / "1"
    shutil.copytree(gpt_template / "1", folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    plain = HfTokenizer(folder)
    assert not plain.has_chat_template
    assert plain.render_chat([{"role": "user", "content": "hi"}]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    # A template may refuse a conversation; the refusal carries its own message.
    config["chat_template"] = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}x"
    )
    config_path.write_text(json.dumps(config))
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        HfTokenizer(folder).render_chat([{"role": "system", "content": "x"}])
    # A template that does not parse fails the load, naming the file.
    config["chat_template"] = "{% for m in messages %}"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"chat template in tokenizer_config\.json"):
        load(folder)
    # chat_template.jinja next to the tokenizer wins over tokenizer_config.json.
    (folder / "chat_template.jinja").write_text("{{ messages[-1]['content'] }}!")
    assert HfTokenizer(folder).render_chat([{"role": "user", "content": "hey"}]) == "hey!"


def test_graph_without_past_inputs_is_refused_naming_the_input(tmp_path: Path) -> None:
    folder = build_tiny_gpt(tmp_path, with_past=False)
    with pytest.raises(ModelLoadError) as refused:
        load(folder)
    message = refused.value.message
    assert "model 'tiny-gpt' version 1" in message
    assert "no input 'past_key_values.0.key'" in message
    assert "text-generation-with-past" in message


def test_config_with_more_layers_than_the_graph_is_refused(
    tmp_path: Path, gpt_template: Path
) -> None:
    folder = tmp_path / "1"
    shutil.copytree(gpt_template / "1", folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"no input 'past_key_values\.2\.key'"):
        load(folder)
    config["num_hidden_layers"], config["num_key_value_heads"] = 2, 4
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"has 2 key/value heads but config\.json says 4"):
        load(folder)


def test_an_encoder_export_stays_a_tensor_model(tmp_path: Path, gpt_template: Path) -> None:
    """config.json + tokenizer.json alone do not make a decoder (a BERT classifier has both)."""
    folder = write_linear(tmp_path, "classifier", 1)
    shutil.copy(gpt_template / "1" / "tokenizer.json", folder)
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["BertForSequenceClassification"], "model_type": "bert"})
    )
    model = load(folder, "classifier")
    assert model.decoder is None and not model.generates_text
    # A causal LM's config on the same graph is held to the contract instead.
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelLoadError, match="no input 'input_ids'"):
        load(folder, "classifier")


def test_contract_reads_hugging_face_config_spellings() -> None:
    inputs = [
        TensorSpec("input_ids", "INT64", (-1, -1)),
        TensorSpec("attention_mask", "INT64", (-1, -1)),
        *(
            TensorSpec(f"past_key_values.{i}.{k}", "FP16", (-1, -1, -1, -1))
            for i in range(2)
            for k in ("key", "value")
        ),
    ]
    outputs = [
        TensorSpec("logits", "FP16", (-1, -1, 50257)),
        *(
            TensorSpec(f"present.{i}.{k}", "FP16", (-1, -1, -1, -1))
            for i in range(2)
            for k in ("key", "value")
        ),
    ]
    # GPT-2's names: n_layer, n_head, n_embd, n_positions; no position_ids in this graph.
    gpt2 = {"n_layer": 2, "n_head": 12, "n_embd": 768, "n_positions": 1024, "eos_token_id": 50256}
    spec = DecoderSpec.from_graph(gpt2, inputs, outputs, [])
    assert (spec.kv_heads, spec.head_dim, spec.context_length) == (12, 64, 1024)
    assert spec.kv_datatype == "FP16" and not spec.has_position_ids
    assert spec.empty_past()[0].dtype == np.float16
    assert "position_ids" not in spec.feeds([1, 2], spec.empty_past(), 0)
    with pytest.raises(ValueError, match="eos_token_id"):
        DecoderSpec.from_graph({**gpt2, "eos_token_id": None}, inputs, outputs, [])
    extra = [*inputs, TensorSpec("use_cache_branch", "BOOL", (1,))]
    with pytest.raises(ValueError, match="takes input 'use_cache_branch'"):
        DecoderSpec.from_graph(gpt2, extra, outputs, [])


def test_build_demo_model_gpt_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert demo_model(["--kind", "gpt", str(tmp_path / name)]) == 0
    first, second = tmp_path / "a/tiny-gpt/1", tmp_path / "b/tiny-gpt/1"
    for file in (MODEL_FILE, "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (first / file).read_bytes() == (second / file).read_bytes()
    assert (first / MODEL_FILE).stat().st_size < 2 * 1024 * 1024

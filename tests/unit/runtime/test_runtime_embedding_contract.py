"""The embedding contract (Optimum feature-extraction / sentence-transformers exports): which
folders it claims, what it reads from them, and sentence-transformers' pooling modes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from clawdbot_runtime.embedding_spec import EmbeddingSpec, pool
from clawdbot_runtime.errors import ModelLoadError
from clawdbot_runtime.model import MODEL_FILE, OnnxModel, SessionSettings
from clawdbot_runtime.providers import select_providers
from clawdbot_runtime.tensors import TensorSpec
from clawdbot_testing.models.cli import main as demo_model
from clawdbot_testing.models.tinyembed import CONTEXT, HIDDEN

SETTINGS = SessionSettings(
    providers=select_providers("cpu", ["CPUExecutionProvider"], allow_cpu_fallback=False),
    cpu_threads=1,
)


def load(folder: Path, name: str = "tiny-embed") -> OnnxModel:
    return OnnxModel.load(name, 1, folder, SETTINGS)


def copy(template: Path, tmp_path: Path, name: str = "enc") -> Path:
    folder = tmp_path / name / "1"
    shutil.copytree(template / "1", folder)
    return folder


def edit_graph(folder: Path, *, rename: str | None = None, add_mean_output: bool = False) -> None:
    """Rename the encoder's output (e.g. to a classifier's ``logits``) or add a
    ``sentence_embedding`` output, as other exports of the same network would have."""
    model = onnx.load(str(folder / MODEL_FILE))
    graph = model.graph
    if rename is not None:
        for node in graph.node:
            node.output[:] = [rename if o == "last_hidden_state" else o for o in node.output]
        graph.output[0].name = rename
    if add_mean_output:
        graph.node.append(
            helper.make_node(
                "ReduceMean", ["last_hidden_state"], ["sentence_embedding"], axes=[1], keepdims=0
            )
        )
        graph.output.append(
            helper.make_tensor_value_info(
                "sentence_embedding", TensorProto.FLOAT, ["batch_size", HIDDEN]
            )
        )
    onnx.save_model(model, str(folder / MODEL_FILE))


def test_folder_is_laid_out_like_a_sentence_transformers_export(embed_template: Path) -> None:
    folder = embed_template / "1"
    for name in (
        MODEL_FILE,
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ):
        assert (folder / name).is_file(), name
    assert (folder / "2_Normalize").is_dir()
    graph = onnx.load(str(folder / MODEL_FILE)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.output] == ["last_hidden_state"]
    dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch_size", "sequence_length", HIDDEN]
    # Like real exports, the tokenizer file carries a truncation length the server ignores.
    assert (
        json.loads((folder / "tokenizer.json").read_text())["truncation"]["max_length"] == CONTEXT
    )


def test_load_detects_the_embedding_contract(embed_template: Path) -> None:
    model = load(embed_template / "1")
    assert model.embedding is not None and model.decoder is None and not model.generates_text
    spec = model.embedding.spec
    assert spec.source == "last_hidden_state" and spec.pools and spec.pooling == ("mean",)
    assert (spec.max_tokens, spec.dimension) == (CONTEXT, HIDDEN)
    assert spec.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert model.batchable


def test_a_bert_classifier_stays_a_tensor_model(embed_template: Path, tmp_path: Path) -> None:
    """Same files, same inputs, but ``logits`` out: served on the v2 routes as before."""
    folder = copy(embed_template, tmp_path)
    edit_graph(folder, rename="logits")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    model = load(folder)
    assert model.embedding is None and model.decoder is None
    assert [s.name for s in model.outputs] == ["logits"]


def test_an_export_with_sentence_embedding_uses_it(embed_template: Path, tmp_path: Path) -> None:
    folder = copy(embed_template, tmp_path)
    edit_graph(folder, add_mean_output=True)
    # The graph pools itself: a Pooling folder left out of the export does not matter.
    shutil.rmtree(folder / "1_Pooling")
    model = load(folder)
    assert model.embedding is not None
    spec = model.embedding.spec
    assert spec.source == "sentence_embedding" and not spec.pools
    feeds = spec.feeds([[2, 40, 41, 3]])
    outputs = model.run(feeds, ["sentence_embedding", "last_hidden_state"])
    embedded = spec.embed(outputs, feeds["attention_mask"])
    mean = outputs["last_hidden_state"][0].mean(axis=0)
    np.testing.assert_allclose(embedded[0], mean / np.linalg.norm(mean), atol=1e-6)


def test_pooling_config_is_read(embed_template: Path, tmp_path: Path) -> None:
    folder = copy(embed_template, tmp_path)
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    config["pooling_mode_max_tokens"] = True
    pooling.write_text(json.dumps(config))
    spec = load(folder).embedding
    assert spec is not None
    # Several modes concatenate in sentence-transformers' order.
    assert spec.spec.pooling == ("cls", "max") and spec.spec.dimension == 2 * HIDDEN
    pooling.write_text(json.dumps({"pooling_mode": "lasttoken"}))
    reloaded = load(folder).embedding
    assert reloaded is not None and reloaded.spec.pooling == ("lasttoken",)
    pooling.write_text(json.dumps({"pooling_mode": "median"}))
    with pytest.raises(ModelLoadError, match="pooling mode 'median'"):
        load(folder)
    # A Pooling module that modules.json names must be there.
    shutil.rmtree(folder / "1_Pooling")
    with pytest.raises(ModelLoadError, match=r"whose 1_Pooling/config\.json is missing"):
        load(folder)
    # Without any Pooling module: mean pooling.
    (folder / "modules.json").unlink()
    fallback = load(folder).embedding
    assert fallback is not None and fallback.spec.pooling == ("mean",)


def test_a_dense_module_needs_the_exported_sentence_embedding(
    embed_template: Path, tmp_path: Path
) -> None:
    folder = copy(embed_template, tmp_path)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match=r"Dense module.*--library sentence_transformers"):
        load(folder)
    edit_graph(folder, add_mean_output=True)
    assert load(folder).embedding is not None


def test_lengths_come_from_the_position_table_and_sentence_config(tmp_path: Path) -> None:
    inputs = [TensorSpec(n, "INT64", (-1, -1)) for n in ("input_ids", "attention_mask")]
    outputs = [TensorSpec("last_hidden_state", "FP32", (-1, -1, 768))]
    roberta = {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}
    spec = EmbeddingSpec.from_folder(tmp_path, roberta, inputs, outputs, 50265)
    assert (spec.max_tokens, spec.dimension, spec.pad_token_id) == (512, 768, 1)
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 384}))
    assert EmbeddingSpec.from_folder(tmp_path, roberta, inputs, outputs, 50265).max_tokens == 384
    (tmp_path / "sentence_bert_config.json").unlink()
    with pytest.raises(ValueError, match="no max_position_embeddings"):
        EmbeddingSpec.from_folder(tmp_path, {"model_type": "bert"}, inputs, outputs, 100)
    # A tokenizer_config.json length is used when the config has none, unless it means "none".
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 256}))
    assert EmbeddingSpec.from_folder(tmp_path, {}, inputs, outputs, 100).max_tokens == 256
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1e30}))
    with pytest.raises(ValueError, match="no max_position_embeddings"):
        EmbeddingSpec.from_folder(tmp_path, {}, inputs, outputs, 100)


def test_graph_contract_is_checked(tmp_path: Path) -> None:
    ids = TensorSpec("input_ids", "INT64", (-1, -1))
    mask = TensorSpec("attention_mask", "INT64", (-1, -1))
    hidden = TensorSpec("last_hidden_state", "FP32", (-1, -1, 8))
    assert EmbeddingSpec.applies([ids, mask], [hidden])
    assert not EmbeddingSpec.applies([ids], [hidden])  # no mask: cannot pad, tensors only
    assert not EmbeddingSpec.applies(
        [ids, mask, TensorSpec("pixel_values", "FP32", (-1,))], [hidden]
    )
    assert not EmbeddingSpec.applies([ids, mask], [TensorSpec("logits", "FP32", (-1, 2))])
    config = {"max_position_embeddings": 16}
    with pytest.raises(ValueError, match="input 'attention_mask' is INT32"):
        EmbeddingSpec.from_folder(
            tmp_path, config, [ids, TensorSpec("attention_mask", "INT32", (-1, -1))], [hidden], 10
        )
    with pytest.raises(ValueError, match="output 'last_hidden_state' must be float"):
        EmbeddingSpec.from_folder(
            tmp_path, config, [ids, mask], [TensorSpec("last_hidden_state", "FP32", (-1, 8))], 10
        )


def test_pooling_modes_match_sentence_transformers() -> None:
    tokens = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3) - 10
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    kept = [tokens[0, :3], tokens[1, :2]]
    np.testing.assert_allclose(pool(tokens, mask, ["cls"]), tokens[:, 0])
    np.testing.assert_allclose(pool(tokens, mask, ["mean"]), [k.mean(axis=0) for k in kept])
    np.testing.assert_allclose(pool(tokens, mask, ["max"]), [k.max(axis=0) for k in kept])
    np.testing.assert_allclose(
        pool(tokens, mask, ["mean_sqrt_len_tokens"]),
        [k.sum(axis=0) / np.sqrt(len(k)) for k in kept],
    )
    weighted = [
        (k * np.arange(1, len(k) + 1)[:, None]).sum(axis=0) / np.arange(1, len(k) + 1).sum()
        for k in kept
    ]
    np.testing.assert_allclose(pool(tokens, mask, ["weightedmean"]), weighted, rtol=1e-6)
    np.testing.assert_allclose(pool(tokens, mask, ["lasttoken"]), [k[-1] for k in kept])
    both = pool(tokens, mask, ["cls", "mean"])
    assert both.shape == (2, 6)
    np.testing.assert_allclose(both[:, 3:], [k.mean(axis=0) for k in kept])


def test_build_demo_model_embed_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert demo_model(["--kind", "embed", str(tmp_path / name)]) == 0
    first, second = tmp_path / "a/tiny-embed/1", tmp_path / "b/tiny-embed/1"
    for file in (MODEL_FILE, "tokenizer.json", "config.json", "1_Pooling/config.json"):
        assert (first / file).read_bytes() == (second / file).read_bytes()
    assert (first / MODEL_FILE).stat().st_size < 2 * 1024 * 1024

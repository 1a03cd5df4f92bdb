"""The demo chat model the project builds itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from clawdbot_runtime.lm_spec import CharTokenizer, LanguageModelSpec
from clawdbot_runtime.model import MODEL_FILE


def test_demo_model_continues_its_training_text(demo_template: Path) -> None:
    folder = demo_template / "1"
    spec = LanguageModelSpec.read(folder)
    assert spec is not None
    tokenizer = CharTokenizer(spec)
    session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    ids = [spec.bos_token_id] * spec.context_length + tokenizer.encode("the kettle is ")
    for _ in range(4):
        window = np.array([ids[-spec.context_length :]], dtype=np.int64)
        (logits,) = session.run(["logits"], {"input_ids": window})
        ids.append(int(np.argmax(logits[0])))
    # Seven characters of context pin the continuation down for a few tokens.
    assert tokenizer.decode(ids) == "the kettle is on, "


def test_demo_model_batches_along_dim_0(demo_template: Path) -> None:
    session = ort.InferenceSession(
        str(demo_template / "1" / MODEL_FILE), providers=["CPUExecutionProvider"]
    )
    rows = np.array([[5, 6, 7], [8, 9, 10]], dtype=np.int64)
    (both,) = session.run(["logits"], {"input_ids": rows})
    (one,) = session.run(["logits"], {"input_ids": rows[1:]})
    np.testing.assert_allclose(both[1:], one, rtol=1e-6)

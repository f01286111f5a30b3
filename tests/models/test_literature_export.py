"""The classifiers of tsvm, aae, mtc and pixelgan script (the export's first choice) and export to
ONNX with the same probabilities as predict_proba, on grey and on colour images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labeler.export import write_onnx
from labeler.models import MODELS, Budget

SMALL = {
    "hidden": [16],
    "d_hidden": (8,),
    "latent_dim": 4,
    "pixel_width": 4,
    "pixel_layers": 1,
    "components": 5,
}


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)])
@pytest.mark.parametrize("name", ["tsvm", "aae", "mtc", "pixelgan"])
def test_scripted_and_onnx_classifiers_match_predict_proba(name, shape, tmp_path):
    import onnxruntime

    rng = np.random.default_rng(0)
    x = rng.random((30, *shape), dtype=np.float32)
    cls = MODELS[name]
    fields = cls.Config.__dataclass_fields__
    model = cls(shape, 3, config=cls.Config(**{k: v for k, v in SMALL.items() if k in fields}))
    model.fit(x, np.arange(9), np.arange(9) % 3, Budget(steps=3))
    expected = model.predict_proba(x)
    module = model.classifier_module().eval()
    with torch.no_grad():
        scripted = torch.jit.script(module)(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(scripted, expected, atol=1e-5)
    path = write_onnx(module, shape, tmp_path / "model.onnx")
    out = onnxruntime.InferenceSession(str(path)).run(None, {"images": x})[0]
    np.testing.assert_allclose(out, expected, atol=1e-5)

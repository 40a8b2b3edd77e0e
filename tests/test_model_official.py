"""Official DHumanDiff checkpoints: strict, lossless round trip, clear key errors, unsafe pickles refused."""

from pathlib import Path

import pytest
import torch

from dhumandiff.errors import CheckpointError
from dhumandiff.model.convert import convert_official
from dhumandiff.model.dhumandiff_model import DHumanDiff
from dhumandiff.model.official import OFFICIAL_FILES, export_official, safe_torch_load
from model_fixtures import official_release

def test_official_files_use_official_key_names(tmp_path):
    _, weights, _ = official_release(tmp_path)
    ip = safe_torch_load(weights / "ip_adapter_ca.pt")
    assert "1.to_k_ip1.weight" in ip and "1.to_v_ip2.weight" in ip and not any(k.startswith("0.") for k in ip)
    res = safe_torch_load(weights / "face_projection.pt")
    assert {"latents", "proj_in.weight", "layers.0.0.to_kv.weight", "layers.0.1.1.weight"} <= set(res)
    proj2 = safe_torch_load(weights / "face_projection2.pt")
    assert {"proj.0.weight", "proj.2.weight", "norm.weight", "perceiver_resampler.proj_in.weight"} <= set(proj2)
    assert set(safe_torch_load(weights / "mapping.pt")) == {"layernorm.weight", "layernorm.bias", "fc1.weight",
                                                             "fc1.bias", "fc2.weight", "fc2.bias"}


def test_strict_round_trip(tmp_path):
    sdxl, weights, original = official_release(tmp_path)
    out = convert_official(sdxl, weights, tmp_path / "converted")
    loaded = DHumanDiff.from_pretrained(out)
    for name in ("resampler", "face_proj", "subject_mlp", "unet", "text_encoder", "text_encoder_2", "vae"):
        a, b = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(a) == set(b), name
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k}"
    # back to the official format: byte-for-byte the same tensors under the same keys
    export_official(loaded, tmp_path / "again")
    for fname in OFFICIAL_FILES.values():
        a, b = safe_torch_load(weights / fname), safe_torch_load(tmp_path / "again" / fname)
        assert set(a) == set(b), fname
        assert all(torch.equal(a[k], b[k]) for k in a), fname
    # and the converted model computes the same thing
    ids = original.tokenize(["a man and a woman on the beach"])
    ft = torch.randn(1, 2, original.config.face_proj["output_dims"])
    pos = torch.tensor([[2, 5]])
    with torch.no_grad():
        torch.testing.assert_close(original.encode_prompt(ids, ft, pos)[0], loaded.encode_prompt(ids, ft, pos)[0])


@pytest.mark.parametrize("fname,edit,needle", [
    ("ip_adapter_ca.pt", "drop", "missing keys"),
    ("ip_adapter_ca.pt", "extra", "unexpected keys"),
    ("mapping.pt", "extra", "unexpected keys"),
    ("face_projection.pt", "drop", "missing keys"),
    ("face_projection2.pt", "extra", "unexpected keys"),
])
def test_missing_or_extra_key_is_a_clear_error(tmp_path, fname, edit, needle):
    sdxl, weights, _ = official_release(tmp_path)
    state = safe_torch_load(weights / fname)
    if edit == "drop":
        state.pop(sorted(k for k in state if k.endswith("weight"))[-1])
    else:
        state["bogus.weight"] = torch.zeros(3)
    torch.save(state, weights / fname)
    with pytest.raises(CheckpointError, match=needle):
        convert_official(sdxl, weights, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a failed conversion must not leave an output folder"


def test_missing_official_file_is_named(tmp_path):
    sdxl, weights, _ = official_release(tmp_path)
    (weights / "mapping.pt").unlink()
    with pytest.raises(CheckpointError, match="mapping.pt not found"):
        convert_official(sdxl, weights, tmp_path / "out")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_malicious_pickle_is_refused_without_running_its_payload(tmp_path):
    sdxl, weights, _ = official_release(tmp_path)
    marker = tmp_path / "payload_ran"
    state = safe_torch_load(weights / "mapping.pt")
    state["evil"] = _Payload(str(marker))
    torch.save(state, weights / "mapping.pt")
    with pytest.raises(CheckpointError, match="refused"):
        convert_official(sdxl, weights, tmp_path / "out")
    assert not marker.exists(), "the pickle payload was executed"

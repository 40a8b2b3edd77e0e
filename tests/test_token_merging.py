"""Token merging (ToMe) in the UNet's self-attention: exact bookkeeping, off means off, and exported graphs (static
shapes) that match the merging reference. Speed and identity per ratio: ``benchmarks/token_merging.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dhumandiff.cli.main import main
from dhumandiff.export.specs import get_spec
from dhumandiff.model.generate import load_model
from dhumandiff.model.token_merging import ToMeSelfAttnProcessor, bipartite_merge

ROOT = Path(__file__).resolve().parent.parent
FACES = ["--face-a", str(ROOT / "examples" / "face_a.png"), "--face-b", str(ROOT / "examples" / "face_b.png")]


def test_merge_then_unmerge_is_exact_where_merged_tokens_are_equal():
    torch.manual_seed(0)
    window = torch.randn(2, 8, 8, 16)  # one value per 2x2 window: every source equals its window's destination
    x = window.repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(2, 256, 16)
    merge, unmerge = bipartite_merge(x, 16, 16, 128)
    merged = merge(x)
    assert merged.shape == (2, 256 - 128, 16)
    assert torch.allclose(unmerge(merged), x, atol=1e-6)
    merge0, unmerge0 = bipartite_merge(x + torch.randn_like(x), 16, 16, 0)
    assert torch.equal(unmerge0(merge0(x)), x)  # r = 0: a permutation there and back


@torch.no_grad()
def test_tiny_merges_the_full_size_layers_only_and_off_restores_the_model():
    model = load_model("tiny")
    spec = get_spec("unet", model)
    unet, inputs = spec.build(model).eval(), spec.example(model, batch=2)
    plain = unet(*inputs.values())[0]
    full_size = [n for n in model.unet.attn_processors if n.endswith("attn1.processor")
                 and n.startswith(("down_blocks.0.", f"up_blocks.{len(model.unet.up_blocks) - 1}."))]
    assert model.set_token_merging(0.5) == len(full_size) >= 2  # only the 16x16-latent layers merge
    procs = [p for n, p in model.unet.attn_processors.items() if isinstance(p, ToMeSelfAttnProcessor)]
    assert {p.size for p in procs} == {(16, 16)}
    merged = unet(*inputs.values())[0]
    cos = torch.nn.functional.cosine_similarity(merged.flatten(), plain.flatten(), dim=0)
    assert 0.9 < cos < 1.0 - 1e-7  # changed, not broken
    assert model.set_token_merging(None) == 0 and model.token_merging is None
    assert torch.equal(unet(*inputs.values())[0], plain)


def test_onnx_export_records_it_and_parity_rebuilds_the_merging_reference(tmp_path, capsys):
    bundle = tmp_path / "tome"
    assert main(["export", "onnx", "tiny", "--token-merging", "0.5", "--out", str(bundle)]) == 0
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["export"]["token_merging"] == {"ratio": 0.5, "max_downsample": 1}
    assert manifest["export"]["validation"]["unet"]["max_abs"] < 1e-4
    assert main(["parity", str(bundle)]) == 0
    report = json.loads((tmp_path / "tome.parity.json").read_text())
    assert report["end_to_end"]["passed"] and report["end_to_end"]["psnr_db"] >= 40.0
    out = tmp_path / "p.png"
    assert main(["generate", *FACES, "--prompt", "a man and a woman", "--bundle", str(bundle), "--steps", "4",
                 "--out", str(out)]) == 0
    assert np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out)).shape == (64, 64, 3)


@pytest.mark.slow
def test_openvino_export_of_the_merging_unet_matches(tmp_path):
    bundle = tmp_path / "tome-ov"
    assert main(["export", "openvino", "tiny", "--token-merging", "0.3", "--out", str(bundle)]) == 0
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["export"]["token_merging"]["ratio"] == 0.3
    assert manifest["export"]["validation"]["unet"]["max_abs"] < 1e-4


@pytest.mark.parametrize("argv,fragment", [
    (["export", "onnx", "tiny", "--token-merging", "0.9"], "--token-merging must be a share of tokens in (0, 0.75]"),
    (["export", "onnx", "tiny", "--token-merging", "0.5", "--dynamic"], "static shapes"),
    (["export", "onnx", "tiny", "--token-merging", "0.5", "--token-merging-depth", "3"],
     "--token-merging-depth must be 1, 2, 4 or 8"),
    (["generate", *FACES, "--prompt", "a man and a woman", "--bundle", "{bundle}", "--token-merging", "0.5"],
     "a bundle merges tokens as it was exported"),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path, capsys, argv, fragment):
    from dhumandiff.runtimes.embedded import embedded_bundle

    out = tmp_path / "out"
    argv = [a.replace("{bundle}", str(embedded_bundle())) for a in argv]
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and fragment in err[0], err
    assert not out.exists()

"""`dhumandiff generate`: writes a portrait, is deterministic, and refuses bad input with one line + exit code."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dhumandiff.cli.main import main
from dhumandiff.data.world import make_identities, render_face

from training_fixtures import random_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_tiny().save_pretrained(tmp_path_factory.mktemp("m") / "tiny-random")


def _gen(model_dir, out, *extra, face_a=None, face_b=None, prompt="a man and a woman on the beach"):
    args = ["generate", "--model", str(model_dir), "--face-a", str(face_a or REPO / "examples/face_a.png"),
            "--face-b", str(face_b or REPO / "examples/face_b.png"), "--prompt", prompt, "--out", str(out),
            "--steps", "2", *extra]
    return main(args)


def test_generate_writes_a_deterministic_portrait(model_dir, tmp_path):
    assert _gen(model_dir, tmp_path / "a.png", "--seed", "3") == 0
    assert _gen(model_dir, tmp_path / "b.png", "--seed", "3") == 0
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b)), "same seed must give the same image"
    assert _gen(model_dir, tmp_path / "c.png", "--seed", "4") == 0
    assert not np.array_equal(np.asarray(a), np.asarray(Image.open(tmp_path / "c.png")))
    assert _gen(model_dir, tmp_path / "d.png", "--mode", "cascade", "--seed", "3") == 0


def _three_faces(path: Path) -> Path:
    ids = make_identities(3, seed=5)
    canvas = Image.new("RGB", (336, 112), (200, 200, 210))
    for i, ident in enumerate(ids):
        canvas.paste(render_face(ident, size=112), (112 * i, 0))
    canvas.save(path)
    return path


def _gradient(path: Path) -> Path:
    x = np.linspace(0, 255, 112, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(x, (112, 1))] * 3, -1)).save(path)
    return path


@pytest.mark.parametrize("case,code,needle", [
    ("missing", 3, "does not exist"),
    ("zero_bytes", 3, "empty"),
    ("not_an_image", 3, "not an image"),
    ("truncated", 3, "corrupt or truncated"),
    ("no_face", 4, "no face found"),
    ("three_faces", 5, "--face-index"),
    ("empty_prompt", 6, "prompt is empty"),
    ("no_person_word", 6, "name both people"),
    ("layout_zero_area", 7, "zero area"),
    ("layout_outside", 7, "outside the image"),
    ("layout_overlap", 7, "overlap"),
    ("layout_bad_json", 7, "not valid JSON"),
])
def test_bad_input_is_one_line_and_an_exit_code(model_dir, tmp_path, capsys, case, code, needle):
    face_a, extra, prompt = None, [], "a man and a woman on the beach"
    if case == "missing":
        face_a = tmp_path / "nope.png"
    elif case == "zero_bytes":
        face_a = tmp_path / "empty.png"
        face_a.write_bytes(b"")
    elif case == "not_an_image":
        face_a = tmp_path / "notes.png"
        face_a.write_text("this is not a photo")
    elif case == "truncated":
        face_a = tmp_path / "cut.png"
        face_a.write_bytes((REPO / "examples/face_a.png").read_bytes()[:300])
    elif case == "no_face":
        face_a = _gradient(tmp_path / "gradient.png")
    elif case == "three_faces":
        face_a = _three_faces(tmp_path / "three.png")
    elif case == "empty_prompt":
        prompt = "   "
    elif case == "no_person_word":
        prompt = "a man on the beach"
    elif case.startswith("layout"):
        extra = ["--layout", {"layout_zero_area": "[[0.1,0.1,0.1,0.9],[0.5,0.1,0.9,0.9]]",
                              "layout_outside": "[[-0.5,0.1,0.4,0.9],[0.5,0.1,0.9,0.9]]",
                              "layout_overlap": "[[0.1,0.1,0.9,0.9],[0.1,0.1,0.9,0.9]]",
                              "layout_bad_json": "[[0.1,0.1"}[case]]
    out = tmp_path / "out.png"
    rc = _gen(model_dir, out, *extra, face_a=face_a, prompt=prompt)
    err = capsys.readouterr().err
    assert rc == code, err
    lines = [line for line in err.splitlines() if line.strip().startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not out.exists(), "no output file may be written on an error"


def test_face_index_picks_one_of_several_faces(model_dir, tmp_path):
    three = _three_faces(tmp_path / "three.png")
    assert _gen(model_dir, tmp_path / "o.png", "--face-index-a", "1", face_a=three) == 0

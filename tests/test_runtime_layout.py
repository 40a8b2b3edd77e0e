"""Layout boxes -> region masks, and every refusal with a fix suggestion."""

from __future__ import annotations

import numpy as np
import pytest

from dhumandiff.errors import LayoutError
from dhumandiff.contract.layout import Layout, automatic_layout, make_layout, parse_layout, region_mask
from dhumandiff.utils import regions


def test_automatic_layout_is_left_and_right_half() -> None:
    lay = automatic_layout()
    assert lay.boxes == tuple(tuple(float(v) for v in b) for b in regions.default_boxes())
    m = region_mask(lay, (16, 16))
    assert m.shape == (1, 2, 16, 16) and m.dtype == np.float32
    assert m[0, 0, 8, 1:8].all() and not m[0, 0, :, 8:].any()
    assert m[0, 1, 8, 8:15].all() and not m[0, 1, :, :8].any()
    assert not m[0, :, 0, :].any()  # top margin
    assert set(np.unique(m)) <= {0.0, 1.0}


def test_masks_are_the_shared_ones() -> None:
    """Training and the torch reference build masks with dhumandiff.utils.regions: same bits here."""
    lay = make_layout([[0.1, 0.05, 0.55, 0.9], [0.45, 0.2, 0.93, 1.0]])
    for hw in ((16, 16), (8, 12), (128, 128)):
        ref = regions.region_mask(np.asarray(lay.boxes), *hw)[None]
        np.testing.assert_array_equal(region_mask(lay, hw), ref)


def test_mask_rasterisation_rule() -> None:
    lay = Layout((0.0, 0.0, 0.5, 0.25), (0.25, 0.5, 1.0, 1.0))
    m = region_mask(lay, (4, 8))
    exp_a = np.zeros((4, 8))
    exp_a[0:1, 0:4] = 1
    exp_b = np.zeros((4, 8))
    exp_b[2:4, 2:8] = 1
    np.testing.assert_array_equal(m[0, 0], exp_a)
    np.testing.assert_array_equal(m[0, 1], exp_b)


def test_cells_whose_centre_is_inside_count() -> None:
    m = region_mask(Layout((0.1, 0.1, 0.3, 0.3), (0.6, 0.6, 0.9, 0.9)), (10, 10))
    assert m[0, 0].sum() == 4 and m[0, 0, 1:3, 1:3].all()
    with pytest.raises(LayoutError, match=r"person A .* is too small for the 10x10 latent grid .*make it larger"):
        region_mask(Layout((0.12, 0.12, 0.14, 0.14), (0.6, 0.6, 0.9, 0.9)), (10, 10))


def test_overlap_is_one_in_both_channels() -> None:
    m = region_mask(make_layout([[0.0, 0.0, 0.6, 1.0], [0.4, 0.0, 1.0, 1.0]]), (10, 10))
    assert (m[0, 0, :, 4:6] == 1).all() and (m[0, 1, :, 4:6] == 1).all()


def test_pixel_boxes_are_normalised() -> None:
    lay = make_layout([[0, 0, 32, 64], [32, 0, 64, 64]], image_size=(64, 64))
    assert lay.person_a == (0.0, 0.0, 0.5, 1.0) and lay.person_b == (0.5, 0.0, 1.0, 1.0)
    lay = make_layout([[0, 0, 50, 100], [50, 0, 100, 100]], image_size=(100, 200), units="pixel")
    assert lay.person_a == (0.0, 0.0, 0.25, 1.0)
    # auto: whole numbers above 1 are pixels, fractions are normalised (so 1.2 is "outside", not pixels)
    with pytest.raises(LayoutError, match=r"outside the image; normalised .*pixel boxes: use whole numbers"):
        make_layout([[0, 0, 1.2, 1], [0.5, 0, 1, 1]], image_size=(64, 64))


@pytest.mark.parametrize(
    "boxes,pattern",
    [
        ([[0.0, 0.0, 1.2, 1.0], [0.5, 0, 1, 1]],
         r"person A .* lies outside the image; normalised coordinates must be in \[0, 1\]"),
        ([[-0.1, 0.0, 0.5, 1.0], [0.5, 0, 1, 1]], r"person A .* lies outside the image"),
        ([[0.0, 0.0, 0.5, 1.0], [0.5, 0.5, 0.5, 1.0]],
         r"person B .* has zero area; give \[x0, y0, x1, y1\] with x1 > x0"),
        ([[0.0, 0.0, 0.5, 1.0], [0.5, 0.9, 1.0, 0.2]], r"person B .* has zero area"),
        ([[0.1, 0.1, 0.9, 0.9], [0.1, 0.1, 0.9, 0.9]], r"overlap completely .*give each person their own area"),
        ([[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.5, 0.5]], r"overlap completely"),
        ([[0.0, 0.0, 0.5, 1.0]], r"exactly two boxes, one per person \(got 1\)"),
        ([[0.0, 0.0, 0.5], [0.5, 0, 1, 1]], r"person A must be 4 numbers"),
        ([[0.0, 0.0, 0.5, float("nan")], [0.5, 0, 1, 1]], r"person A must hold finite numbers"),
    ],
)
def test_refusals(boxes: list, pattern: str) -> None:
    with pytest.raises(LayoutError, match=pattern) as e:
        make_layout(boxes)
    assert "\n" not in str(e.value)


def test_pixel_boxes_outside_the_image() -> None:
    with pytest.raises(LayoutError, match=r"lies outside the 64x64 image; keep x in \[0, 64\]"):
        make_layout([[0, 0, 32, 64], [32, 0, 80, 64]], image_size=(64, 64))
    with pytest.raises(LayoutError, match="pixel boxes need the image size"):
        make_layout([[0, 0, 32, 64], [32, 0, 64, 64]])


def test_boxes_that_merge_at_latent_resolution() -> None:
    # distinct boxes, but person B's only cells are also person A's at a 4x4 grid
    lay = Layout((0.0, 0.0, 0.9, 0.9), (0.8, 0.8, 0.95, 0.95))
    with pytest.raises(LayoutError, match=r"person B's box is entirely covered by the other box"):
        region_mask(lay, (4, 4))


def test_parse_layout_forms() -> None:
    a = parse_layout("[[0.05,0.1,0.5,0.95],[0.5,0.1,0.95,0.95]]")
    b = parse_layout('{"person_a": [0.05,0.1,0.5,0.95], "person_b": [0.5,0.1,0.95,0.95]}')
    assert a == b and a.person_b == (0.5, 0.1, 0.95, 0.95)
    assert parse_layout("[[0,0,32,64],[32,0,64,64]]", image_size=(64, 64)).person_b[0] == 0.5


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("[[0,0,0.5,1],", r"--layout is not valid JSON .*e\.g\. --layout"),
        ('{"person_a": [0,0,0.5,1]}', r"needs exactly the keys person_a and person_b \(missing \['person_b'\]"),
        ('{"a": [0,0,0.5,1], "person_a": [0,0,0.5,1], "person_b": [0.5,0,1,1]}', r"unknown \['a'\]"),
        ('"left"', r"must be a list of two boxes or an object"),
    ],
)
def test_parse_layout_refusals(text: str, pattern: str) -> None:
    with pytest.raises(LayoutError, match=pattern):
        parse_layout(text)


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("[" * 50_000 + "]" * 50_000, r"--layout is 100000 characters long; a layout is two boxes"),
        ("[" * 20_000 + "]" * 20_000, r"--layout is nested 20000 levels deep"),
        ('{"person_a": ' + "[" * 9 + "]" * 9 + "}", r"nested 10 levels deep"),
        ("[[0," + "7" * 5000 + ",0.5,1],[0.5,0,1,1]]", r"number with 5000 digits"),
        ("[[0,0,-" + "9" * 400 + ",1],[0.5,0,1,1]]", r"number with 400 digits"),
        ("[[0.1,0.1,0.4,0.9],[0.5,0.1,1e99999,0.9]]", r"must hold finite numbers \(got \[0\.5, 0\.1, inf, 0\.9\]\)"),
        ("x" * 5000, r"--layout is not valid JSON"),  # too long for a file name: text, not a crash
        ("layout\0.json", r"--layout is not valid JSON"),
    ],
)
def test_parse_layout_bounds_its_cost(text: str, pattern: str) -> None:
    """Deep nesting, huge numbers and huge texts are refused as layouts (exit 7), never RecursionError, Python's
    int-conversion ValueError or OverflowError."""
    with pytest.raises(LayoutError, match=pattern) as e:
        parse_layout(text)
    assert len(str(e.value)) < 300


def test_python_layout_with_a_huge_int_or_list() -> None:
    with pytest.raises(LayoutError, match=r"finite numbers \(got \[1000000000"):
        parse_layout([[10**400, 0, 1, 1], [0, 0, 0.5, 1]])
    with pytest.raises(LayoutError, match=r"finite numbers \(got a list too large to show\)"):
        parse_layout([[10**5000, 0, 1, 1], [0, 0, 0.5, 1]])
    with pytest.raises(LayoutError, match=r"must be 4 numbers .*\.\.\.\);") as e:
        parse_layout([list(range(100_000)), [0, 0, 0.5, 1]])
    assert len(str(e.value)) < 300


def test_layout_files_are_bounded(tmp_path) -> None:  # noqa: ANN001
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 30_000 + "]" * 30_000)
    with pytest.raises(LayoutError, match=r"nested 30000 levels deep"):
        parse_layout(str(deep))
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 300_000 + b"[[0,0,0.5,1],[0.5,0,1,1]]")
    with pytest.raises(LayoutError, match=r"big\.json is 300025 bytes; a layout is two boxes"):
        parse_layout(str(big))
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))
    with pytest.raises(LayoutError, match=r"photo\.jpg is not UTF-8 text"):
        parse_layout(str(binary))
    good = tmp_path / "good.json"
    good.write_text("[[0,0,0.5,1],[0.5,0,1,1]]")
    assert parse_layout(str(good)).person_b == (0.5, 0.0, 1.0, 1.0)

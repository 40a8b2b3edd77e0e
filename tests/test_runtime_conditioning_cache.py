"""The per-guest conditioning cache (``runtimes/conditioning_cache.py``) over real tiny ONNX bundles: the same image
with and without it, the face graphs skipped on a second portrait of the same photos, forget/clear, the bounds."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

from runtime_fixtures import CountingRunner, TinyBundle, build_tiny_bundle, face_images  # noqa: E402

from dhumandiff.runtimes import load_bundle  # noqa: E402
from dhumandiff.runtimes.conditioning_cache import (  # noqa: E402
    ConditioningCache,
    PersonKey,
    TextKey,
    photo_digest,
)

PROMPT = "a photo of a man and a woman at the beach"
OTHER = "a photo of the woman and the man at a wedding"
FACE_GRAPHS = {"identity_encoder", "image_encoder", "face_projection"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyBundle]:
    root = tmp_path_factory.mktemp("cache-bundles")
    return {"sd": build_tiny_bundle(root / "sd", "onnx", seed=0), "xl": build_tiny_bundle(root / "xl", "onnx",
                                                                                             sdxl=True, seed=2)}


@pytest.fixture(scope="module")
def faces() -> tuple[Any, Any]:
    return face_images()


def _cached(path: Path, cache: ConditioningCache | None = None) -> Any:
    gen = load_bundle(path, num_threads=1, conditioning_cache=ConditioningCache() if cache is None else cache)
    gen.runner = CountingRunner(gen.runner)
    return gen


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("variant", ["sd", "xl"])
def test_same_image_with_and_without_the_cache_and_the_second_portrait_skips_the_faces(
    tiny: dict[str, TinyBundle], faces: tuple[Any, Any], variant: str
) -> None:
    plain = load_bundle(tiny[variant].path, num_threads=1)
    assert plain.conditioning_cache is None  # off unless asked for
    gen = _cached(tiny[variant].path)
    a, b = faces

    first = gen(a, b, PROMPT, seed=3, steps=2)
    assert first.settings["conditioning_cache"] == "miss"
    assert gen.runner.calls["identity_encoder"] == 2 and gen.runner.calls["text_encoder"] == 2
    ref = plain(a, b, PROMPT, seed=3, steps=2)
    assert ref.settings["conditioning_cache"] == "off" and "photo_sha256" not in ref.settings
    np.testing.assert_array_equal(np.asarray(first.image), np.asarray(ref.image))
    np.testing.assert_array_equal(first.latents, ref.latents)

    # another scene for the same two photos: no detector, no face graph, only the prompt's text row is encoded;
    # the photos come as PNG bytes this time (the key is the decoded pixels, not how they came)
    gen.runner.calls.clear()
    second = gen(_png(a), _png(b), OTHER, seed=4, steps=2)
    assert second.settings["conditioning_cache"] == "hit"
    assert not FACE_GRAPHS & set(gen.runner.calls), gen.runner.calls
    assert gen.runner.calls["text_encoder"] == 1  # the negative prompt's row is cached too
    assert gen.runner.calls.get("text_encoder_2", 0) == (1 if variant == "xl" else 0)
    assert second.timings["encode_faces"] < 0.01 and second.timings["encode_faces"] < first.timings["encode_faces"]
    again = plain(a, b, OTHER, seed=4, steps=2)
    np.testing.assert_array_equal(np.asarray(second.image), np.asarray(again.image))
    np.testing.assert_array_equal(second.latents, again.latents)
    assert second.settings["photo_sha256"] == [photo_digest(a), photo_digest(b)]

    # the persons swapped: still both cached (one entry per photo), and still the uncached image
    swapped = gen(b, a, PROMPT, seed=5, steps=2)
    assert swapped.settings["conditioning_cache"] == "hit"
    np.testing.assert_array_equal(np.asarray(swapped.image), np.asarray(plain(b, a, PROMPT, seed=5, steps=2).image))


def test_forget_drops_one_guests_photos_and_clear_drops_everything(
    tiny: dict[str, TinyBundle], faces: tuple[Any, Any]
) -> None:
    cache = ConditioningCache()
    gen = _cached(tiny["sd"].path, cache)
    a, b = faces
    res = gen(a, b, PROMPT, seed=0, steps=1)
    sha_a, sha_b = res.settings["photo_sha256"]
    assert cache.photos() == {sha_a, sha_b} and len(cache) == 3  # two persons + the negative prompt's row
    assert any(isinstance(k, TextKey) for k in cache._items)

    assert cache.forget(sha_a) == 1
    assert cache.photos() == {sha_b} and len(cache) == 2
    assert cache.forget(sha_a) == 0
    gen.runner.calls.clear()
    assert gen(a, b, PROMPT, seed=0, steps=1).settings["conditioning_cache"] == "partial"
    assert gen.runner.calls["identity_encoder"] == 1  # only person a is encoded again

    # a face index is part of the key: the same photo with index 0 is another entry, dropped with the photo
    gen(a, b, PROMPT, seed=0, steps=1, face_index_a=0)
    assert sum(isinstance(k, PersonKey) and k.photo == sha_a for k in cache._items) == 2
    assert cache.forget(sha_a, sha_b) == 3 and cache.photos() == set()

    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.stats()["hits"] == 0


def test_one_cache_shared_by_two_bundles_never_mixes_them(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    cache = ConditioningCache()
    sd, xl = _cached(tiny["sd"].path, cache), _cached(tiny["xl"].path, cache)
    assert sd.bundle_id != xl.bundle_id
    sd(*faces, PROMPT, seed=0, steps=1)
    first_xl = xl(*faces, PROMPT, seed=0, steps=1)
    assert first_xl.settings["conditioning_cache"] == "miss" and xl.runner.calls["identity_encoder"] == 2
    np.testing.assert_array_equal(
        np.asarray(first_xl.image), np.asarray(load_bundle(tiny["xl"].path, num_threads=1)(*faces, PROMPT, seed=0,
                                                                                           steps=1).image))
    assert len(cache) == 6


def test_a_negative_prompt_that_warns_is_not_cached(tiny: dict[str, TinyBundle], faces: tuple[Any, Any]) -> None:
    """A cached value never swallows a warning: a truncated negative prompt warns on every portrait."""
    cache = ConditioningCache()
    gen = _cached(tiny["sd"].path, cache)
    long = "a photo of the man and the woman " * 30
    for _ in range(2):
        with pytest.warns(UserWarning, match="truncat|77|token"):
            gen(*faces, PROMPT, seed=0, steps=1, negative_prompt=long)
    assert not any(isinstance(k, TextKey) and k.negative_prompt == long for k in cache._items)
    assert gen.runner.calls["text_encoder"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the short default one is cached, silently
        gen(*faces, PROMPT, seed=0, steps=1)
        gen(*faces, PROMPT, seed=0, steps=1)
    assert gen.runner.calls["text_encoder"] == 4 + 2 + 1


def test_bounds_evict_the_least_recently_used_and_values_are_read_only() -> None:
    def person(photo: str, n: int = 256) -> tuple[PersonKey, tuple[np.ndarray, np.ndarray, bool]]:
        return PersonKey("bundle", photo, None, "face-crop"), (np.ones((1, n), np.float32), np.zeros(4, np.float32),
                                                               False)

    entry = 256 * 4 + 16
    cache = ConditioningCache(max_entries=10, max_bytes=3 * entry)
    for p in "abc":
        cache.put(*person(p))
    assert cache.photos() == set("abc") and cache.nbytes == 3 * entry
    assert cache.get(person("a")[0]) is not None  # a is now the most recently used
    cache.put(*person("d"))
    assert cache.photos() == set("acd") and cache.stats()["evictions"] == 1 and cache.nbytes == 3 * entry
    cache.put(*person("big", 4096))  # larger than the whole bound: not kept, nothing evicted for it
    assert cache.photos() == set("acd")

    few = ConditioningCache(max_entries=2)
    for p in "xyz":
        few.put(*person(p))
    assert few.photos() == {"y", "z"} and len(few) == 2

    key, value = person("e")
    cache.put(key, value)
    value[0][...] = 7  # the caller's array is not the cached one
    got = cache.get(key)
    assert got is not None and float(got[0].max()) == 1.0
    with pytest.raises(ValueError):
        got[0][...] = 7
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            ConditioningCache(max_entries=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            ConditioningCache(max_bytes=bad)  # type: ignore[arg-type]


def test_a_crop_that_warned_warns_again_on_a_hit() -> None:
    """A real photo given to the embedded default with a face picked: the crop warns; a cached portrait of the
    same photo gives the same warning again (the detector runs again for it) and the same image."""
    from skimage import data as skdata

    from dhumandiff.runtimes.embedded import embedded_bundle

    bundle = embedded_bundle()
    if bundle is None:
        pytest.skip("this install ships no embedded bundle")
    real, other = skdata.astronaut(), Path(__file__).resolve().parents[1] / "examples" / "face_b.png"
    gen = _cached(bundle)
    images = []
    for expected in ("miss", "hit"):
        with pytest.warns(UserWarning, match="looks like a real photo.*generating anyway"):
            res = gen(real, other, "a man and a woman on the beach", steps=1, face_index_a=0)
        assert res.settings["conditioning_cache"] == expected
        images.append(np.asarray(res.image))
    assert gen.runner.calls["identity_encoder"] == 2  # encoded once per person, not again on the hit
    with pytest.warns(UserWarning, match="looks like a real photo"):
        plain = load_bundle(bundle, num_threads=1)(real, other, "a man and a woman on the beach", steps=1,
                                                   face_index_a=0)
    np.testing.assert_array_equal(images[1], np.asarray(plain.image))

"""The `ocr` reward with the real tesseract (Debian tesseract-ocr): the edit-distance score on hand-worked
pairs, >= 0.95 on clean renders of the text task, lower and lower as more letters are corrupted, and a clear
error when the binary is missing."""

import shutil

import cv2
import numpy as np
import pytest

from visalign.images import images_to_tensor
from visalign.rewards import load_reward
from visalign.rewards import ocr as ocr_module
from visalign.rewards.ocr import TesseractMissing, edit_distance, ocr_score
from visalign.world import text
from visalign.world.grammar import PromptError

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="the tesseract binary is absent (Debian package tesseract-ocr; "
                                            "`make test` and .ci/run install it)")


@pytest.mark.parametrize("a, b, d", [("CAT", "CAT", 0), ("CAT", "CUT", 1), ("KITTEN", "SITTING", 3),
                                     ("", "ABC", 3), ("ABCD", "BCDA", 2), ("STOP", "POTS", 4)])
def test_edit_distance_hand_worked(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_score_is_one_minus_normalised_distance():
    assert ocr_score("CAT", "CAT") == 1.0
    assert ocr_score("CAT", "CUT") == pytest.approx(1 - 1 / 3)
    assert ocr_score("CAT", "CATS") == pytest.approx(1 - 1 / 4)  # normalised by the longer string
    assert ocr_score("CAT", "") == 0.0 and ocr_score("", "") == 1.0
    assert ocr_score("GO", "XXXXXX") == 0.0  # never below 0


def test_missing_binary_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without tesseract
    with pytest.raises(TesseractMissing) as e:
        load_reward("ocr")
    msg = str(e.value)
    assert "tesseract-ocr" in msg and "apt-get install" in msg and "\n" not in msg


def _score(reward, images: np.ndarray, words: list[str]) -> np.ndarray:
    out = reward(images_to_tensor(images), [text.TextSpec(w).prompt for w in words])
    assert len(out.details["read"]) == len(words)
    return out.scores.numpy()


@needs_tesseract
def test_clean_renders_score_at_least_095():
    rng = np.random.default_rng(0)
    words = list(text.WORDS[::3])  # 93 words: single letters, train and held-out words, every length
    images = np.stack([text.render(w, rng) for w in words])
    scores = _score(load_reward("ocr", workers=2, chunk=16), images, words)
    assert scores.mean() >= 0.95, [(w, s) for w, s in zip(words, scores) if s < 1]


def _blank_last(word: str, k: int, rng) -> np.ndarray:
    """The render of `word` with its last k letters painted over in white (the letter boxes from OpenCV's
    text metrics at the renderer's font)."""
    canvas = text.render(word, jitter=False).copy()
    prefix = word[: len(word) - k]
    w_prefix = cv2.getTextSize(prefix, text.FONT, text.FONT_SCALE, text.THICKNESS)[0][0] if prefix else 0
    canvas[:, text.LEFT + w_prefix + 1:] = 255
    return canvas


@needs_tesseract
def test_reward_drops_as_more_letters_are_corrupted():
    rng = np.random.default_rng(1)
    reward = load_reward("ocr")
    words = [w for w in text.WORDS if len(w) == 4][::2]  # 4-letter words
    # overwrite k letters with other letters (a render of the misspelt word), and blank out the last k letters
    letters = list(text.ALPHABET)
    swapped, blanked = [], []
    for k in range(4):
        imgs = []
        for w in words:
            pos = rng.choice(4, size=k, replace=False)
            wrong = "".join(letters[(letters.index(c) + 7) % 26] if i in pos else c for i, c in enumerate(w))
            imgs.append(text.render(wrong, rng))
        swapped.append(_score(reward, np.stack(imgs), words).mean())
        blanked.append(_score(reward, np.stack([_blank_last(w, k, rng) for w in words]), words).mean())
    assert swapped[0] >= 0.95 and blanked[0] >= 0.95
    assert all(a > b + 0.1 for a, b in zip(swapped, swapped[1:])), swapped  # ~1, 0.75, 0.5, 0.25
    assert all(a > b + 0.1 for a, b in zip(blanked, blanked[1:])), blanked
    assert swapped[3] < 0.45 and blanked[3] < 0.45


@needs_tesseract
def test_blank_images_score_zero_and_bad_prompts_are_refused():
    reward = load_reward("ocr")
    blank = np.full((2, 32, 64, 3), 255, np.uint8)
    assert _score(reward, blank, ["CAT", "A"]).tolist() == [0.0, 0.0]
    with pytest.raises(PromptError, match="outside the OCR alphabet"):
        reward(images_to_tensor(blank[:1]), ['a sign that says "c@t"'])
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        load_reward("ocr", workers=0)
    with pytest.raises(ValueError, match="chunk must be >= 1 images per tesseract process, or null .* got 0"):
        load_reward("ocr", chunk=0)


def test_a_batch_is_split_evenly_over_the_workers_by_default(monkeypatch):
    # one tesseract process per worker (a process start costs ~5 image reads); an explicit chunk cuts finer
    sizes = []
    monkeypatch.setattr(ocr_module, "tesseract_binary", lambda: "tesseract")
    monkeypatch.setattr(ocr_module, "read_chunk", lambda c, *a: sizes.append(len(c)) or [""] * len(c))
    images = np.full((9, 32, 64, 3), 255, np.uint8)
    assert load_reward("ocr", workers=2).read(images) == [""] * 9 and sorted(sizes) == [4, 5]
    sizes.clear()
    load_reward("ocr", workers=2, chunk=4).read(images)
    assert sorted(sizes) == [1, 4, 4]


def _fake_tesseract(tmp_path, monkeypatch, script: str):
    exe = tmp_path / "tesseract"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    return load_reward("ocr", chunk=4)


def test_a_crashed_chunk_is_read_image_by_image(tmp_path, monkeypatch):
    # tesseract 5 dies of SIGFPE on some noise-like images: the chunk's process fails, each image is re-read
    reward = _fake_tesseract(tmp_path, monkeypatch, 'if [ "$1" = stdin ]; then cat >/dev/null; echo "C A"; '
                                                    'exit 0; fi\nkill -FPE $$\n')
    out = reward(images_to_tensor(np.full((5, 32, 64, 3), 255, np.uint8)), [text.TextSpec("CAT").prompt] * 5)
    assert out.details["read"] == ["CA"] * 5 and out.scores.tolist() == pytest.approx([1 - 1 / 3] * 5)
    # an image on which even its own process crashes reads as nothing
    reward = _fake_tesseract(tmp_path, monkeypatch, "kill -FPE $$\n")
    out = reward(images_to_tensor(np.full((2, 32, 64, 3), 255, np.uint8)), [text.TextSpec("CAT").prompt] * 2)
    assert out.details["read"] == ["", ""] and out.scores.tolist() == [0.0, 0.0]


def test_a_failing_tesseract_is_an_error_not_a_zero_reward(tmp_path, monkeypatch):
    reward = _fake_tesseract(tmp_path, monkeypatch, 'echo "Error opening data file eng.traineddata" >&2\nexit 1\n')
    with pytest.raises(RuntimeError, match="tesseract failed \\(exit 1\\): Error opening data file"):
        reward(images_to_tensor(np.full((2, 32, 64, 3), 255, np.uint8)), [text.TextSpec("CAT").prompt] * 2)

"""The text task of the world: a short word in bold black capitals on a plain white sign.

Prompt grammar (one form):    a sign that says "WORD"      WORD = 1 to 4 letters of the OCR alphabet A-Z
The model reads the template words and then the letters one token each (`prompt_tokens`), so a word it has
never seen is still a sequence of known tokens: the held-out words test composition, as the OCR task of
Flow-GRPO tests rendering of unseen text. Words are split once into train and held-out (a seeded quarter
of the multi-letter words); single letters are all train, so every letter is seen in training.

Images are H x W = 32 x 64 (a sign is wide), drawn with OpenCV's Hershey simplex font, 2 px strokes, at 4x resolution and
area-downsampled (anti-aliasing, as the shapes renderer; tesseract reads ~99% of clean renders), left-aligned so that letter k sits at about the
same place whatever the word's length, with a jitter of a few pixels.
"""

from __future__ import annotations

import random
import re

import cv2
import numpy as np

from .grammar import PromptError

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # what the OCR reward reads (tesseract's whitelist, rewards/ocr.py ALPHABET)
MAX_LETTERS = 4
TEMPLATE_WORDS = ("a", "sign", "that", "says")
HEIGHT, WIDTH = 32, 64

# Our list of short English words (plus the 26 single letters); 2-4 letters, every letter of A-Z used.
WORDS = tuple(dict.fromkeys(list(ALPHABET) + """
GO UP NO ON IT IS AT TO IN OF ME WE HE BE DO SO MY BY OK OX AX HI US AN AM OR IF
CAT DOG SUN RED BOX CAR BUS HAT MAP PEN CUP BED EGG FOX OWL BEE ANT PIG COW HEN RAT BAT JAM TEA ICE OIL GAS
ART ACE AGE AIR ARM BAG BAR BIG BIT BOW BOY BUY CAN CAP DAY DEN DIG DRY EAR EAT END EYE FAN FAR FEW FIG FIN
FIT FLY FUN GAP GEM GUM GYM HAM HIT HOP HOT HUG HUT INK JAR JET JOB JOG JOY KEY KID KIT LAB LAP LAW LEG LID
LIP LOG LOW MAN MIX MUD NAP NET NEW NUT OAK ODD OLD OUT OWN PAN PAW PAY PET PIE PIN POT PUT RAG RAM RAY RIB
ROD ROW RUG RUN SAD SAW SEA SET SIT SKY SON SPY TAB TAG TAN TAP TAX TEN TIE TIP TOE TOP TOY TUB TWO USE VAN
VET WAX WEB WET WIG WIN YAK YES ZIP ZOO
STOP OPEN EXIT SALE CAFE BOOK FISH BIRD LION BEAR FROG DUCK GOAT MILK CAKE RAIN SNOW WIND FIRE STAR MOON TREE
LEAF ROSE SHIP BOAT ROAD PARK SHOP BANK HOME DOOR LAMP DESK SOFA KING QUIZ JUMP WALK TALK HELP LOVE HOPE GOLD
BLUE PINK GRAY JAZZ WAVE ZONE CITY FARM GATE HILL LAKE MENU TAXI HOTEL FOOD WOLF DEER CROW SWAN MAZE QUAY
VASE VOTE YARD YOGA ZERO JUNK KIWI APEX ECHO OVEN NEWS PLAY PUSH PULL WIFI BUZZ
""".split()))
WORDS = tuple(w for w in WORDS if len(w) <= MAX_LETTERS)


class TextSpec:
    """A parsed text prompt: the word the sign must show."""

    def __init__(self, text: str):
        self.text = text

    @property
    def prompt(self) -> str:
        return f'a sign that says "{self.text}"'


_PROMPT = re.compile(r'^\s*a sign that says\s+"([^"]*)"\s*$')


def check_text(text: str) -> str:
    """The word itself: 1 to 4 characters of the OCR alphabet A-Z (PromptError naming what is wrong)."""
    bad = sorted({c for c in text if c not in ALPHABET})
    if bad:
        raise PromptError(f"text {text!r} has characters outside the OCR alphabet: {''.join(bad)!r}; accepted: "
                          f"capital letters A-Z")
    if not 1 <= len(text) <= MAX_LETTERS:
        raise PromptError(f"text {text!r} has {len(text)} letters; accepted: 1 to {MAX_LETTERS}")
    return text


def parse_prompt(prompt: str) -> TextSpec:
    """'a sign that says "CAT"' -> TextSpec('CAT'); anything else -> a one-line PromptError."""
    m = _PROMPT.match(prompt)
    if m is None:
        raise PromptError(f'text prompt {prompt!r} does not parse; accepted: a sign that says "WORD" '
                          f"(WORD = 1 to {MAX_LETTERS} capital letters A-Z)")
    return TextSpec(check_text(m.group(1)))


def prompt_tokens(prompt: str) -> list[str]:
    """The model's tokens of a prompt: the template words, then one token per letter ([] for "")."""
    if not prompt.strip():
        return []
    return list(TEMPLATE_WORDS) + list(parse_prompt(prompt).text)


def vocabulary() -> tuple[str, ...]:
    """Every token a text prompt may contain, in a fixed order (the tokenizer's ids follow it)."""
    return TEMPLATE_WORDS + tuple(ALPHABET)


def split_words(split: str) -> list[str]:
    """'train' or 'eval' words: a seeded quarter of the multi-letter words is held out (never trained on)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split '{split}' is not one of train, eval")
    multi = sorted(w for w in WORDS if len(w) > 1)
    random.Random("visalign-text-words").shuffle(multi)
    held = sorted(multi[: round(0.25 * len(multi))])
    return held if split == "eval" else [w for w in WORDS if w not in set(held)]


def prompts(split: str) -> list[str]:
    return [TextSpec(w).prompt for w in split_words(split)]


SUPERSAMPLE = 4
FONT, FONT_SCALE, THICKNESS = cv2.FONT_HERSHEY_SIMPLEX, 0.55, 2  # at 1x: capitals ~12 px high, 4 letters <= 52 px
LEFT, JITTER = 5, 2  # left margin and the +-jitter of the text's position, in pixels at 1x


def render(text: str, rng: np.random.Generator | None = None, jitter: bool = True) -> np.ndarray:
    """A word -> uint8 [32, 64, 3]: black capitals on white, left-aligned and vertically centred."""
    check_text(text)
    s = SUPERSAMPLE
    canvas = np.full((HEIGHT * s, WIDTH * s, 3), 255, np.uint8)
    (_, h), _ = cv2.getTextSize(text, FONT, FONT_SCALE * s, THICKNESS * s)
    dx, dy = (rng.integers(-JITTER, JITTER + 1, 2) if jitter and rng is not None else (0, 0))
    x, y = (LEFT + int(dx)) * s, (HEIGHT * s + h) // 2 + int(dy) * s
    cv2.putText(canvas, text, (x, y), FONT, FONT_SCALE * s, (0, 0, 0), THICKNESS * s, cv2.LINE_AA)
    return cv2.resize(canvas, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)

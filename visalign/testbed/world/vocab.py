"""The closed vocabulary of the shapes world.

Colours are chosen by hue, far apart on the hue circle, and the background is black: blending a colour
with black (anti-aliasing, blur) changes its value but not its hue, so the verifier can name the colour of
every edge pixel it keeps. Everything the renderer, the grammar and the verifier share lives here.
"""

SHAPES = ("circle", "square", "triangle", "star")

# name -> (RGB uint8, hue in degrees). Hue 0..360 as in HSV.
COLORS = {
    "red": ((230, 30, 30), 0.0),
    "orange": ((240, 135, 15), 33.0),
    "yellow": ((235, 225, 25), 57.0),
    "green": ((30, 200, 50), 127.0),
    "blue": ((40, 90, 240), 224.0),
    "purple": ((175, 45, 235), 282.0),
}
COLOR_NAMES = tuple(COLORS)

BACKGROUND = (0, 0, 0)

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
COUNT_WORDS = ("two", "three", "four")  # GenEval's counting task asks for 2..4

RELATIONS = ("left of", "right of", "above", "below")

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

MAX_OBJECTS = 4

# Words that may appear in a prompt besides shapes, colours and numbers.
FUNCTION_WORDS = ("a", "an", "and", "left", "right", "of", "above", "below")


def plural(shape: str) -> str:
    return shape + "s"


def vocabulary() -> tuple[str, ...]:
    """Every word a prompt may contain, in a fixed order (the tokenizer's ids follow it)."""
    words = list(FUNCTION_WORDS) + list(NUMBERS) + list(COLOR_NAMES) + list(SHAPES)
    words += [plural(s) for s in SHAPES]
    return tuple(words)

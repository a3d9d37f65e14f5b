"""The closed vocabulary of GenEval-S Motion, the shapes world as short videos.

A clip is FRAMES frames of RESOLUTION x RESOLUTION: 9 frames because video VAEs with 4x temporal compression
(diffusers' Wan VAE) encode 1 + 4k frames. Shapes and colours are the shapes world's (world/vocab.py), so its
detector reads every frame; motion adds directions, two speeds, staying still and turning a colour.
"""

from ..world.vocab import COLOR_NAMES, COLORS, SHAPES, plural  # noqa: F401  (re-exported: the world's objects)

FRAMES = 9
RESOLUTION = 32

CATEGORIES = ("direction", "two_motions", "speed", "constancy", "change", "counting")

# direction word -> unit step (x, y) in image coordinates, y pointing down
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = ("slowly", "quickly")

NUMBERS = {"two": 2, "three": 3, "four": 4}
COUNT_WORDS = tuple(NUMBERS)

# Words that may appear in a prompt besides shapes, colours, numbers, directions and speeds.
FUNCTION_WORDS = ("a", "an", "and", "moving", "staying", "still", "turning")


def vocabulary() -> tuple[str, ...]:
    """Every word a Motion prompt may contain, in a fixed order (a tokenizer's ids follow it)."""
    words = list(FUNCTION_WORDS) + list(DIRECTIONS) + list(SPEEDS) + list(COUNT_WORDS) + list(COLOR_NAMES)
    words += list(SHAPES) + [plural(s) for s in SHAPES]
    return tuple(words)

"""GenEval-S Motion: the shapes world as short videos (9 frames of 32x32), with an exact verifier.

vocab.py (the closed vocabulary), grammar.py (prompt <-> MotionSpec, the six categories and their splits),
render.py (a spec -> a random clip that satisfies it), verify.py (a clip against a spec), evaluate.py (the
evaluation and an oracle generator), prompts.py and reward.py (the `motion` prompt set and reward; importing
visalign.testbed registers them).
"""

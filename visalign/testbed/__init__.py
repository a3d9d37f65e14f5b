"""The GenEval-S testbed: a plugin of the RL core (visalign/plugins.py loads it by default).

It holds the procedurally rendered world and its verifier (world/), the bundled models' code (models/: the
built-in UNets, the token GPT and VQ tokenizer, the text models, the learned reward's network, the shapes
diffusers pipelines), their pretraining pipelines (pretrain/), the geneval_s and geneval_s_learned rewards
(rewards/), the geneval-s and text prompt sets with the verifier's evaluation (prompts.py, evaluate.py). Importing
it registers all of that into the core's registries; the core imports nothing from it. The bundled weights are
in visalign/weights/.
"""

from .models import registry as _models  # noqa: F401  (registers the models)
from .pretrain import kinds as _pretrain_kinds  # noqa: F401  (registers the pretraining kinds)
from .prompts import geneval_s as _prompt_sets  # noqa: F401  (registers the prompt sets)
from .rewards import geneval_s as _geneval_s, learned as _learned  # noqa: F401  (registers the rewards)
from .motion import prompts as _motion_set, reward as _motion  # noqa: F401  (registers the motion set and reward)

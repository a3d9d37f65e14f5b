"""The testbed's pretraining pipelines (`visalign pretrain`): the built-in UNets (pretrain.py), the VQ tokenizer and
token GPT (token_pretrain.py), the VAE and the SD3 / SD1.5 pipelines (pipeline_pretrain.py), and the learned
GenEval-S reward (reward_pretrain.py); registered as pretraining kinds in visalign.pretraining.PRETRAIN_KINDS by
visalign/testbed/pretrain/kinds.py."""

"""Tiny random models of every supported encoder family, saved with the real uncased tokenizer
(no weights of these families exist offline; speed and structure do not depend on them)."""

import torch
from transformers import AutoConfig

from tinybert.models.loading import TASK_MODELS

# what each family needs beyond BERT's fields to be itself at a tiny size
FAMILY_SETTINGS = {
    "bert": {},
    "roberta": {},
    "xlm-roberta": {},
    "electra": {"embedding_size": 32},  # narrower embeddings, projected to the layers' width
    "deberta-v2": {"relative_attention": True, "position_buckets": 16, "norm_rel_ebd": "layer_norm",
                   "share_att_key": True, "pos_att_type": ["p2c", "c2p"], "position_biased_input": False,
                   "max_relative_positions": -1, "type_vocab_size": 0},  # DeBERTa-v3's settings
    "distilbert": {},
    "modernbert": {"global_attn_every_n_layers": 2, "local_attention": 8, "pad_token_id": 0, "bos_token_id": 101,
                   "cls_token_id": 101, "eos_token_id": 102, "sep_token_id": 102},
}
FAMILIES = list(FAMILY_SETTINGS)


def family_config(family: str, label_space=None, **overrides):
    settings = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=128, max_position_embeddings=128)
    settings.update(FAMILY_SETTINGS[family])
    settings.update(overrides)
    if label_space is not None:
        settings.update(label_space.config_fields())
    return AutoConfig.for_model(family, **settings)


def save_family_model(path, family: str, tokenizer, label_space, seed: int = 0, **overrides):
    """A task model of ``family`` (its head as ``label_space`` says) saved with ``tokenizer``."""
    torch.manual_seed(seed)
    model = TASK_MODELS[label_space.task].from_config(family_config(family, label_space, **overrides))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

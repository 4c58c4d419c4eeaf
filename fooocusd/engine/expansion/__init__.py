"""Prompt expansion ("Fooocus V2"): curated words added to a prompt by a GPT-2-class model.

* ``expander.py``: ``PromptExpander`` (load a folder or the tiny random model; ``expand``);
* ``vocabulary.py``: the logits processor that keeps the output inside the curated words;
* ``words.py``: the curated list, ``fooocusd/data/expansion_words.txt``;
* ``tiny.py``: the built-in tiny random GPT-2 and tokenizer;
* ``service.py``: ``engine.expansion`` → ``PromptExpansion``, and the per-image workloads/record.
"""

from fooocusd.engine.expansion.expander import Expansion, PromptExpander
from fooocusd.engine.expansion.service import (
    ExpandedWorkloads,
    PromptExpansion,
    apply_expansion,
    build_prompt_expansion,
    expansion_record,
)

__all__ = [
    "ExpandedWorkloads",
    "Expansion",
    "PromptExpander",
    "PromptExpansion",
    "apply_expansion",
    "build_prompt_expansion",
    "expansion_record",
]

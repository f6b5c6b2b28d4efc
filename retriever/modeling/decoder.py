"""Decoder-only models (Qwen2/3, Llama, Mistral, Gemma) as embedders: the sequence ends with the EOS token and its
hidden state is the embedding (last-token pooling), queries carry an instruction.

What Tevatron's RepLLaMA and the E5-Mistral / Qwen3-Embedding recipes do, and how retr does it:

* **EOS appended once.** A causal model's last hidden state has seen the whole text only at the last position,
  and the EOS token is the position these models are trained to summarise into. Tokenizers of decoders usually
  add no EOS (Qwen2 adds nothing, Llama only BOS). ``ensure_eos`` makes the tokenizer itself append it (its
  post-processor, as Qwen3-Embedding ships its tokenizer), so truncation keeps room for it, it is added exactly
  once, and the saved tokenizer makes sentence-transformers and transformers produce the very same ids.
* **Padding.** A decoder tokenizer without a pad token pads with EOS (the attention mask tells them apart);
  ``last`` pooling takes the last position whose mask is 1, right or left padded, and a left-padded batch gets
  ``position_ids`` counted from the first real token (``padded_position_ids``), so a text's vector does not
  depend on its batch.
* **Instructions** are query-side templates (``format_instruction``): ``"Instruct: {task}\\nQuery: "`` with
  ``{task}`` filled in becomes the query prefix, stored as the sentence-transformers prompt ``query``.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


class TokenizerError(ValueError):
    """The tokenizer cannot be made to end sequences with EOS (one-line message)."""


def ends_with_eos(tokenizer: Any) -> bool:
    """Whether ``tokenizer("...")`` already ends with its EOS id (False when it has none)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        return False
    ids = tokenizer("a probe text")["input_ids"]
    return bool(ids) and ids[-1] == eos


def ensure_eos(tokenizer: Any) -> None:
    """Make ``tokenizer`` append its EOS token to every sequence, exactly once, unless it already does; give it
    a pad token (its EOS) when it has none. Changes the tokenizer in place (and so what ``save_pretrained``
    writes). ``TokenizerError`` when it has no EOS token or is not a fast (``tokenizers``) tokenizer."""
    if tokenizer.eos_token_id is None:
        raise TokenizerError("the tokenizer has no EOS token to end sequences with (last-token pooling); "
                             "use --pooling mean or a tokenizer with eos_token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if ends_with_eos(tokenizer):
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"{type(tokenizer).__name__} is not a fast tokenizer: cannot append EOS to it")
    from tokenizers import processors

    # one template: the tokens the tokenizer adds now (Llama's BOS) around the text, then EOS
    probe = "a probe text"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
    if start is None:
        raise TokenizerError(f"cannot tell which special tokens {type(tokenizer).__name__} adds")
    before, after = full[:start], full[start + len(plain):]
    specials = {i: tokenizer.convert_ids_to_tokens(i) for i in [*before, *after, tokenizer.eos_token_id]}
    eos = specials[tokenizer.eos_token_id]
    left = " ".join(f"{specials[i]}:0" for i in before)
    right = " ".join(f"{specials[i]}:0" for i in after)
    single = " ".join(x for x in (left, "$A:0", right, f"{eos}:0") if x)
    pair = single + " " + " ".join(x for x in ("$B:1", right.replace(":0", ":1"), f"{eos}:1") if x)
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                           special_tokens=[(t, i) for i, t in specials.items()])
    if "add_eos_token" in getattr(tokenizer, "init_kwargs", {}):
        # transformers 4's Llama-style tokenizers rebuild their post-processor from these flags when loaded
        tokenizer.init_kwargs["add_eos_token"] = True
    if not ends_with_eos(tokenizer):
        raise TokenizerError(f"could not make {type(tokenizer).__name__} append its EOS token")
    ids = tokenizer("a probe text")["input_ids"]
    if ids.count(tokenizer.eos_token_id) != 1:
        raise TokenizerError(f"{type(tokenizer).__name__} now adds EOS {ids.count(tokenizer.eos_token_id)} times")


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """[B, L] positions counted from each row's first real token when some row is left padded (its first
    column is padding while another row's is not), else ``None`` (the model's own arange is right)."""
    if attention_mask.dim() != 2 or bool(attention_mask[:, 0].all()):
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def format_instruction(template: str, task: str | None = None) -> str:
    """The query prefix an instruction template makes: ``{task}`` replaced by ``task``; the escapes ``\\n`` and
    ``\\t`` typed on a command line become a newline and a tab. ``ValueError`` (one line) when the template has
    ``{task}`` and no task is given, or a task is given for a template without ``{task}``."""
    text = template.replace("\\n", "\n").replace("\\t", "\t")
    if "{task}" in text:
        if not task:
            raise ValueError("--query-instruction has {task}: give the task with --task")
        return text.replace("{task}", task)
    if task:
        raise ValueError("--task given but --query-instruction has no {task} placeholder")
    return text

"""``retr init-model``: a randomly initialised BERT with an existing tokenizer (for from-scratch training)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common


def init_model_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Model directory to write.")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="Tokenizer to reuse (directory, hub id or `minilm`).")] = "minilm",
    layers: Annotated[int, typer.Option("--layers", help="Transformer layers.")] = 4,
    hidden: Annotated[int, typer.Option("--hidden", help="Hidden size.")] = 256,
    heads: Annotated[int, typer.Option("--heads", help="Attention heads.")] = 4,
    max_length: Annotated[int, typer.Option("--max-length", help="Max positions and default max sequence length.")] = 256,
    pooling: Annotated[str, typer.Option("--pooling", help="mean, cls or last.")] = "mean",
    normalize: Annotated[bool, typer.Option("--normalize/--no-normalize", help="L2-normalise embeddings.")] = True,
    seed: Annotated[int, typer.Option("--seed", help="Initialisation seed.")] = 0,
) -> None:
    """Write a random-init BERT encoder directory that reuses an existing tokenizer."""
    common.claim_output(output, "model")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from retr.indexing.atomic import atomic_dir
    from retr.retriever.modeling import Encoder, EncoderConfig, resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer), trust_remote_code=False)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=max(512, max_length))
    enc = Encoder(BertModel(cfg), tok, EncoderConfig(pooling=pooling, normalize=normalize,
                                                     query_max_length=max_length, passage_max_length=max_length))
    with atomic_dir(output) as tmp:
        enc.save(tmp)
    n = sum(p.numel() for p in enc.model.parameters())
    common.console().print(f"[green]wrote[/green] {output}: random BERT, {layers} layers, hidden {hidden}, {n / 1e6:.1f}M params")

"""The ``retr`` command. Commands only wire: they parse options into configs and call the library."""
from __future__ import annotations

import os
import sys

import typer

from . import common
from .encode_cmd import encode_command
from .eval_cmd import eval_command
from .index_cmd import index_app
from .init_model_cmd import init_model_command
from .mine_cmd import mine_command
from .search_cmd import search_command
from .train_cmd import train_command

app = typer.Typer(
    name="retr",
    help="Dense retrieval and reranking: index, search, evaluate (BEIR), mine, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(index_app, name="index")
app.command("search", help="Search an index with one query or a BEIR/JSONL query file; write TREC run and JSON.")(search_command)
app.command("eval", help="Evaluate a model on a BEIR dataset: encode -> index -> search -> metrics.")(eval_command)
app.command("encode", help="Encode a corpus (or one shard of it; torchrun-aware) into embeddings for "
            "`retr index --from-embeddings`.")(encode_command)
app.command("mine", help="Mine hard negatives with a BM25 or dense teacher (rank window; never a judged positive or a copy of one).")(mine_command)
app.command("train", help="Train a dual encoder (supervised / unsupervised Contriever) or a cross-encoder.")(train_command)
app.command("init-model", help="Write a random-init BERT that reuses an existing tokenizer.")(init_model_command)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2 (RETR_TRACEBACK=1 shows the trace)."""
    try:
        app()
    except common.user_errors() as e:
        if os.environ.get("RETR_TRACEBACK"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

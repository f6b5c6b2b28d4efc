"""The ``retr`` command. Commands only wire: they parse options into configs and call the library."""
from __future__ import annotations

import os
import signal
import sys

import typer

from . import common
from .audit_cmd import audit_command  # issue 23
from .compare_cmd import compare_command  # issue 23
from .encode_cmd import encode_command
from .eval_cmd import eval_command
from .export_cmd import export_command
from .index_cmd import index_app
from .init_model_cmd import init_model_command
from .mine_cmd import mine_command
from .score_cmd import score_command
from .search_cmd import search_command
from .serve_cmd import serve_command
from .train_cmd import train_command
from .usage_errors import command_path, usage_error_line

app = typer.Typer(
    name="retr",
    help="Dense retrieval and reranking: index, search, evaluate (BEIR), mine, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help, not rich's option table: the table cuts long option names to "--train-negativ…" on an
    # 80-column terminal, while click's layout wraps the help text and always prints the full name.
    rich_markup_mode=None,
    cls=common.HelpGroup,  # each command's whole help in the list, wrapped (click cuts it to one line)
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(index_app, name="index")
app.command("search", help="Search an index with one query or a BEIR/JSONL query file; write TREC run and JSON.")(search_command)
app.command("serve", help="Serve an index over HTTP (POST /search, /batch_search; GET /health, /info, /docs), "
            "with the options of `retr search`; concurrent requests share one encoder forward.")(serve_command)
app.command("eval", help="Evaluate a model on a BEIR dataset: encode -> index -> search -> metrics.")(eval_command)
app.command("encode", help="Encode a corpus (or one shard of it; torchrun-aware) into embeddings for "
            "`retr index --from-embeddings`.")(encode_command)
app.command("mine", help="Mine hard negatives with a BM25 or dense teacher (rank window; never a judged positive or a copy of one).")(mine_command)
app.command("train", help="Train a dual encoder (supervised / unsupervised Contriever) or a cross-encoder.")(train_command)
app.command("score", help="Teacher scores (cross-encoder, dense, BM25 or fusion) for every candidate of a "
            "Tevatron JSONL, for `retr train --distill`.")(score_command)  # issue 20
app.command("export", help="Export a model as ONNX/OpenVINO (pooling and normalisation in the graph) or a "
            "corpus's vectors as Parquet/JSONL, with a parity check against retr's own vectors.")(export_command)
app.command("compare", help="Compare TREC runs with a baseline: per-query metrics, paired t-test and "
            "randomisation test, Holm-corrected.")(compare_command)  # issue 23
app.command("audit", help="Exact and near-duplicate queries and passages shared by training data and an "
            "evaluation split.")(audit_command)  # issue 23
app.command("init-model", help="Write a random-init BERT that reuses an existing tokenizer.")(init_model_command)


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, so ``finally`` blocks and atomic writes clean up on the way
    out, and nothing that catches ``Exception`` (or click, which turns KeyboardInterrupt into a silent exit 130)
    swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, frame) -> None:
    # one-shot: a second signal during clean-up gets the default action (the next run removes what is left)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Stopped(signum)


def _install_signal_handlers() -> dict[int, object]:
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _on_signal)
    except ValueError:  # not the main thread (retr called from a thread): leave signals alone
        pass
    return previous


def format_error(e: BaseException) -> str:
    """One line for a user error; an OSError names its file and says what went wrong in plain words."""
    if isinstance(e, OSError) and e.errno and e.filename:
        from retr.indexing.errors import describe_errno

        return f"{e.filename}: {describe_errno(e.errno)}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _end_progress_bars() -> None:
    """Close progress bars a failed command left open, so the error starts a line of its own."""
    if "tqdm" not in sys.modules:
        return
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:
            pass


LIST_FLAGS = ("--matryoshka-dims",)  # options that take several values after one flag


def join_list_values(argv: list[str]) -> list[str]:
    """``--matryoshka-dims 384 256 128`` -> ``--matryoshka-dims 384,256,128`` (click options take one value
    each); the values end at the next token that is not a number."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in LIST_FLAGS:
            values = []
            while i + 1 < len(argv) and argv[i + 1].replace(",", "").replace(".", "").isdigit():
                values.append(argv[i + 1])
                i += 1
            if values:
                out.append(",".join(values))
        i += 1
    return out


def main() -> None:
    """Entry point: user errors, usage errors included (a bad or missing option value), become one line on
    stderr and exit code 2 (RETR_TRACEBACK=1 shows the trace); SIGINT / SIGTERM remove partial outputs and exit
    130 / 143 with one line. Output locks are released."""
    previous = _install_signal_handlers()
    sys.argv = join_list_values(sys.argv)
    try:
        from retr.retriever.allocator import malloc_from_env

        malloc_from_env()  # RETR_MALLOC=keep: batches reuse freed memory instead of re-faulting it
        code = app(prog_name="retr", standalone_mode=False)  # usage errors are raised to here, not printed
        if isinstance(code, int) and code:  # typer.Exit(n) (e.g. `retr train --nproc`'s torchrun status)
            sys.exit(code)
    except typer.TyperException as e:  # click's usage errors (typer vendors click): exit 2, one line
        if os.environ.get("RETR_TRACEBACK"):
            raise
        _end_progress_bars()
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `retr`: the error's message is the help
            help_text = e.format_message()  # (empty in rich's layout, which printed it while building it)
            if help_text.strip():
                print(help_text)
        else:
            fallback = command_path(typer.main.get_command(app), sys.argv[1:])
            print(f"error: {usage_error_line(e, fallback)}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except Stopped as e:
        _end_progress_bars()
        name = "terminated (SIGTERM)" if e.signum == signal.SIGTERM else "interrupted (SIGINT)"
        print(f"error: {name}; partial outputs removed", file=sys.stderr)
        sys.exit(128 + e.signum)
    except common.user_errors() as e:
        if os.environ.get("RETR_TRACEBACK"):
            raise
        _end_progress_bars()
        print(f"error: {format_error(e)}", file=sys.stderr)
        sys.exit(2)
    finally:
        from retr.indexing import locks

        locks.release_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()

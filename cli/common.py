"""Options shared by several commands, logging set-up, and the one-line error contract (exit code 2)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence

import typer

PRECISIONS = Literal["auto", "fp32", "fp16", "bf16"]
POOLINGS = Literal["mean", "cls", "last"]


class HelpGroup(typer.core.TyperGroup):
    """A command group whose ``--help`` lists each command with the whole first paragraph of its help, wrapped
    (click's plain layout cuts it to one line: "Serve an index over HTTP (POST /search,...")."""

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            text = cmd.short_help or (cmd.help or "").strip().split("\n\n")[0]
            rows.append((name, " ".join(text.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def check_model(value: Optional[str]) -> Optional[str]:
    """Option callback: a model name that looks like a path must be a directory (checked while parsing, before
    a corpus is read or anything encoded); ``bm25`` (a teacher) and hub ids pass unchecked."""
    if value is None or value.lower() == "bm25":
        return value
    from retr.retriever.modeling.resolve import resolve_model_path

    try:
        resolve_model_path(value)
    except (OSError, ImportError) as e:  # a missing directory; `minilm` without its package
        raise typer.BadParameter(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    return value


Model = Annotated[str, typer.Option("--model", "-m", callback=check_model, help="Encoder: a local model directory, a "
                                    "Hugging Face hub id, or `minilm` (the packaged all-MiniLM-L6-v2).")]
OptModel = Annotated[Optional[str], typer.Option("--model", "-m", callback=check_model, help="Encoder (default: the "
                                                 "model recorded in the index's meta.json). Local directory, hub id, "
                                                 "or `minilm`.")]
Data = Annotated[Path, typer.Option("--data", "-d", exists=True, file_okay=False, help="BEIR dataset folder "
                                    "(corpus.jsonl, queries.jsonl, qrels/<split>.tsv).")]
Split = Annotated[str, typer.Option("--split", help="Qrels split to evaluate (file qrels/<split>.tsv).")]
Pooling = Annotated[Optional[POOLINGS], typer.Option("--pooling", help="Pooling: mean, cls or last (default: read from "
                                                     "the model's 1_Pooling/config.json, else mean).")]
Normalize = Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="L2-normalise embeddings "
                                                   "(default: as the model's modules.json says, else on).", show_default=False)]
QueryPrefix = Annotated[Optional[str], typer.Option("--query-prefix", help="Text prepended to every query (e.g. 'query: ').")]
PassagePrefix = Annotated[Optional[str], typer.Option("--passage-prefix", help="Text prepended to every passage (e.g. 'passage: ').")]
QueryInstruction = Annotated[Optional[str], typer.Option("--query-instruction", help="Instruction template put "
                                                          "before every query (not passages), e.g. 'Instruct: "
                                                          "{task}\\nQuery: ' ({task} filled from --task; \\n and "
                                                          "\\t become newline and tab). Becomes the query prefix and "
                                                          "is saved as the sentence-transformers prompt 'query'.")]
Task = Annotated[Optional[str], typer.Option("--task", help="Text for {task} in --query-instruction, e.g. 'Given a "
                                             "web search query, retrieve relevant passages that answer the query'.")]
TorchDtype = Annotated[Optional[str], typer.Option("--torch-dtype", help="dtype the weights are loaded in: auto "
                                                  "(the checkpoint's own) | fp32 | fp16 | bf16 (half the memory of "
                                                  "fp32, for big decoder embedders). Default: transformers' default. "
                                                  "Recorded in an index's meta.json when not fp32.")]
QueryMaxLen = Annotated[Optional[int], typer.Option("--query-max-length", min=1, help="Max query tokens (default: model's max_seq_length).")]
PassageMaxLen = Annotated[Optional[int], typer.Option("--passage-max-length", min=1, help="Max passage tokens (default: model's max_seq_length).")]
Dim = Annotated[Optional[int], typer.Option("--dim", min=1, help="Keep the first DIM components of every embedding "
                                            "(re-normalised when the model normalises): for Matryoshka-trained "
                                            "models (`retr train --matryoshka-dims`). Recorded in the index's "
                                            "meta.json; queries are truncated alike. Default: the full vector.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Texts per encoder forward pass.")]
BlockSize = Annotated[int, typer.Option("--block-size", min=1, help="Passages read, tokenised and encoded per block; "
                                        "vectors go to disk after each block, and a killed run resumes at the last "
                                        "finished one. Memory grows with it (~160 MiB per 8,192 passages).")]
Threads = Annotated[int, typer.Option("--threads", min=0, help="Threads for batch search (FAISS/Lucene); 0 = all cores.")]
AllowMissingDocs = Annotated[bool, typer.Option("--allow-missing-docs", help="Keep qrels rows whose corpus-id is not in "
                                                "corpus.jsonl (BEIR keeps them; ArguAna has 5) instead of failing.")]
Precision = Annotated[PRECISIONS, typer.Option("--precision", help="Inference autocast: auto (fp16 on CUDA, fp32 on "
                                               "CPU), fp32, fp16 or bf16 (about 1.7x faster on CPUs with AVX512-BF16, "
                                               "embeddings differ by ~1e-3).")]
Rerank = Annotated[Optional[str], typer.Option("--rerank", callback=check_model, help="Cross-encoder (directory or hub "
                                               "id) that reranks the first stage's top hits.")]
RerankTopK = Annotated[int, typer.Option("--rerank-top-k", min=1, help="Hits per query the cross-encoder reranks.")]
RerankAlpha = Annotated[Optional[float], typer.Option("--rerank-alpha", min=0.0, max=1.0, help="Order the reranked "
                                                      "hits by alpha * cross-encoder + (1 - alpha) * first-stage score "
                                                      "(both min-max normalised per query); default: the cross-encoder "
                                                      "alone.")]
Index = Annotated[list[Path], typer.Option("--index", "-i", help="Index directory made by `retr index` (dense or "
                                      "--bm25). Repeat it to search several dense indexes of one model as one (e.g. "
                                      "one per embeddings shard; hits merged by score); one BM25 index plus dense "
                                      "ones = hybrid (fused by --fusion).")]
Fusion = Annotated[Literal["rrf", "weighted"], typer.Option("--fusion", help="Hybrid fusion: rrf (reciprocal rank) or weighted "
                                     "(min-max normalised score sum).")]
FusionAlpha = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Weighted fusion: weight of the dense run (BM25 gets 1-alpha).")]
RrfK = Annotated[int, typer.Option("--rrf-k", min=0, help="RRF constant k in 1/(k + rank).")]
EfSearch = Annotated[Optional[int], typer.Option("--ef-search", min=1, help="HNSW efSearch for this search (no rebuild).")]
Nprobe = Annotated[Optional[int], typer.Option("--nprobe", min=1, help="IVF lists visited for this search (no rebuild).")]
Rescore = Annotated[Optional[int], typer.Option("--rescore", min=1, help="Fetch this many candidates and re-score them "
                                                "exactly from stored vectors (PQ indexes built with --store-vectors).")]
Mmap = Annotated[bool, typer.Option("--mmap", help="Memory-map the index instead of reading it into RAM.")]
K1 = Annotated[float, typer.Option("--k1", min=0.0, help="BM25 k1 (BM25 indexes).")]
B = Annotated[float, typer.Option("--b", min=0.0, max=1.0, help="BM25 b (BM25 indexes).")]
RerankCorpus = Annotated[Optional[Path], typer.Option("--corpus", exists=True, help="With --rerank: the corpus the index was built "
                                                      "from (BEIR folder or corpus.jsonl), for the passages' text.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def encoder_overrides(pooling: str | None = None, normalize: bool | None = None, query_prefix: str | None = None,
                      passage_prefix: str | None = None, query_max_length: int | None = None,
                      passage_max_length: int | None = None, dim: int | None = None,
                      query_instruction: str | None = None, task: str | None = None,
                      torch_dtype: str | None = None) -> dict[str, Any]:
    """The encoder settings given on the command line (``None`` = keep the model's own); an instruction
    template (with its task) becomes the query prefix."""
    if query_instruction is not None or task is not None:
        from retr.retriever.modeling.decoder import format_instruction

        if query_prefix is not None:
            raise ValueError("give --query-prefix or --query-instruction, not both")
        if query_instruction is None:
            raise ValueError("--task fills {task} in --query-instruction: give that too")
        query_prefix = format_instruction(query_instruction, task)
    given = dict(pooling=pooling, normalize=normalize, query_prefix=query_prefix, passage_prefix=passage_prefix,
                 query_max_length=query_max_length, passage_max_length=passage_max_length, truncate_dim=dim,
                 torch_dtype=torch_dtype)
    return {k: v for k, v in given.items() if v is not None}


def given(ctx: typer.Context, names: Sequence[str]) -> list[str]:
    """The options among parameter ``names`` that the user set (command line or environment), as flags."""
    flags = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name in names else None
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            flags.append(max(param.opts, key=len))
    return flags


def reject_given(ctx: typer.Context, names: Sequence[str], why: str) -> None:
    """Refuse, in one line and before any work, options the user set that would do nothing ``why``
    (e.g. "with --from-embeddings"), rather than silently ignore them."""
    flags = given(ctx, names)
    if flags:
        raise typer.BadParameter(f"{', '.join(flags)} {'does' if len(flags) == 1 else 'do'} not apply {why}")


ENCODER_OPTIONS = ("pooling", "normalize", "query_prefix", "passage_prefix", "query_max_length", "passage_max_length")


def setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    # tokenise with every core (the fast tokenizer releases the GIL); users can still set it to false
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        from rich.console import Console

        handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False,
                              log_time_format="[%X]")
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("retr").setLevel(level)
    for noisy in ("transformers", "sentence_transformers", "faiss", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:
        pass


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: printed as one line, exit code 2, no traceback."""
    from retr.indexing.atomic import ArtifactError
    from retr.retriever.data.errors import DataError

    return (DataError, ArtifactError, OSError, ValueError)


def claim_output(path: Path | str | None, kind: str, flag: str = "--output") -> None:
    """Call before any work on a command's output directory: refuse to replace what is not retr's ``kind``
    (index, run, model, ...), check it can be written, and take its writer lock, held until the command ends
    (a second writer then fails at once, in one line, instead of after encoding a corpus)."""
    if path is None:
        return
    from retr.indexing import locks, outputs

    outputs.check_replaceable(path, kind, flag=flag)
    outputs.check_writable(path, is_dir=True, flag=flag)
    locks.acquire(path)


def check_outputs(files: dict[str, Path | None] | None = None,
                  dirs: dict[str, tuple[Path | None, str | None]] | None = None) -> None:
    """Check outputs before any work, without locking: ``files`` maps a flag to a file path (must not be a
    directory; its folder must be writable), ``dirs`` a flag to (directory, kind): an existing directory must
    be retr's ``kind`` (kind ``""``: any directory, e.g. a folder that receives files) and, unless it is such an
    artifact already (then it is reused), writable."""
    from retr.indexing import outputs

    # issue 23: two outputs at one path would silently overwrite each other
    named = [(flag, Path(p).resolve()) for flag, p in (files or {}).items() if p is not None]
    named += [(flag, Path(p).resolve()) for flag, (p, kind) in (dirs or {}).items() if p is not None and kind]
    for i, (flag, path) in enumerate(named):
        for other, path2 in named[:i]:
            if path == path2:
                raise typer.BadParameter(f"{other} and {flag} name the same path {path}")
    for flag, path in (files or {}).items():
        if path is not None:
            outputs.check_writable(path, is_dir=False, flag=flag)
    for flag, (path, kind) in (dirs or {}).items():
        if path is None:
            continue
        if kind != "":
            outputs.check_replaceable(path, kind, flag=flag)
            if outputs.is_artifact(path, kind):
                continue  # reused as it is (a read-only shared index is fine)
        outputs.check_writable(path, is_dir=True, flag=flag)


def console():
    from rich.console import Console

    return Console()


# issue 22: --backend (retr encode/index/eval/search/serve) and the pre-checks shared by `retr search` and `retr serve`
Backend = Annotated[Literal["torch", "compile", "onnx", "openvino"], typer.Option("--backend", help="Inference "
                    "engine: torch (the model), compile (torch.compile, inductor: the fastest exact CPU "
                    "path; compiles for ~30 s first, needs a C++ compiler), onnx (ONNX Runtime) or openvino; fp32 is "
                    "exact on each (cosine >= 0.99999). onnx and openvino use the graph of a `retr export` "
                    "directory given as --model, else export the model first (seconds). "
                    "compile and openvino also run --precision bf16; onnx is fp32 only.")]


def check_search_options(ctx: typer.Context, index: Sequence[Path], rerank: Optional[str],
                         corpus: Optional[Path]) -> None:
    """Refuse, in one line and before anything is loaded, what `retr search` and `retr serve` cannot use:
    --rerank without --corpus, reranker options without --rerank, dense-only options (model, encoder, FAISS
    knobs; --precision too unless a reranker uses it) to a BM25 index, BM25 options to dense indexes."""
    from retr.retriever.searcher import is_bm25_index

    if rerank and corpus is None:
        raise typer.BadParameter("--rerank needs --corpus (the passages' text)")
    if not rerank:
        reject_given(ctx, ("rerank_top_k", "rerank_alpha", "corpus"), "without --rerank")
    kinds = {is_bm25_index(i) for i in index}
    if kinds == {True}:  # BM25 only
        dense_only = ("model", "rescore", "mmap", "ef_search", "nprobe", "batch_size", "torch_dtype", "backend")
        reject_given(ctx, dense_only if rerank else (*dense_only, "precision"), "to a BM25 index")
    if kinds == {False}:
        reject_given(ctx, ("k1", "b"), "to a dense index")

"""``retr train``: train a dual encoder (supervised or Contriever-style unsupervised). Also runs under
``torchrun --nproc-per-node N -m retr.cli.main train ...`` (DDP); ``--nproc N`` launches that for you."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common

log = logging.getLogger("retr.cli")

Opt = typer.Option


def train_command(
    output: Annotated[Optional[Path], Opt("--output", "-o", help="Run directory: model/, checkpoints/, train_log.jsonl.")] = None,
    config: Annotated[Optional[Path], Opt("--config", "-c", help="YAML/JSON file of TrainConfig options; flags override it.")] = None,
    mode: Annotated[Optional[str], Opt("--mode", help="supervised (query, positive, hard negatives) | unsupervised "
                                       "(Contriever crops) | reranker (cross-encoder).")] = None,
    model: Annotated[Optional[str], Opt("--model", "-m", help="Starting model: directory, hub id or `minilm`.")] = None,
    data: Annotated[Optional[list[Path]], Opt("--data", "-d", help="Training data (repeatable): BEIR folder (with "
                                              "--split), Tevatron JSONL, or for unsupervised any corpus.jsonl/text file.")] = None,
    split: Annotated[Optional[str], Opt("--split", help="Qrels split of a BEIR folder used for training.")] = None,
    negatives: Annotated[Optional[Path], Opt("--negatives", help="Mined negatives (Tevatron JSONL from `retr mine`).")] = None,
    train_negatives: Annotated[Optional[int], Opt("--train-negatives", help="Hard negatives per query in each batch.")] = None,
    train_random_negatives: Annotated[Optional[int], Opt("--train-random-negatives", help="Reranker: random "
                                                          "negatives (other queries' positives) per query, after "
                                                          "the mined ones (an easy signal to start from).")] = None,
    pairs: Annotated[Optional[bool], Opt("--pairs", help="One training example per (query, positive) pair (default: "
                                         "per query, a random positive each epoch).")] = None,
    batching: Annotated[Optional[str], Opt("--batching", help="random | b3 (batches of mutual hard negatives mined "
                                           "by a teacher; see --b3-*).")] = None,
    b3_teacher: Annotated[Optional[str], Opt("--b3-teacher", help="B3: teacher encoder that ranks the examples.")] = None,
    b3_p: Annotated[Optional[int], Opt("--b3-p", help="B3: skip the teacher's top p (likely false negatives).")] = None,
    b3_m: Annotated[Optional[int], Opt("--b3-m", help="B3: keep ranks p+1..p+m as graph edges.")] = None,
    b3_cluster_size: Annotated[Optional[int], Opt("--b3-cluster-size", help="B3: examples per cluster (K).")] = None,
    b3_algorithm: Annotated[Optional[str], Opt("--b3-algorithm", help="B3: metis | leiden | louvain.")] = None,
    b3_cache: Annotated[Optional[Path], Opt("--b3-cache", help="B3: cache directory for mined clusters "
                                            "(default $RETR_CACHE_DIR/b3, else ~/.cache/retr/b3).")] = None,
    separate_towers: Annotated[Optional[bool], Opt("--separate-towers/--shared-towers", help="Separate query and "
                                                   "passage encoders (both start from --model).", show_default=False)] = None,
    epochs: Annotated[Optional[int], Opt("--epochs", help="Passes over the training data.")] = None,
    max_steps: Annotated[Optional[int], Opt("--max-steps", help="Stop after this many steps (overrides --epochs).")] = None,
    batch_size: Annotated[Optional[int], Opt("--batch-size", "-b", help="Queries per step, over all ranks (the "
                                             "contrastive batch).")] = None,
    lr: Annotated[Optional[float], Opt("--lr", help="Peak learning rate (AdamW).")] = None,
    head_lr: Annotated[Optional[float], Opt("--head-lr", help="Learning rate for parameters the checkpoint does not "
                                            "hold (a cross-encoder's fresh scoring head); default: --lr.")] = None,
    weight_decay: Annotated[Optional[float], Opt("--weight-decay", help="AdamW weight decay.")] = None,
    warmup_ratio: Annotated[Optional[float], Opt("--warmup-ratio", help="Fraction of steps of linear warmup.")] = None,
    max_grad_norm: Annotated[Optional[float], Opt("--max-grad-norm", help="Gradient clipping norm (0 = off).")] = None,
    temperature: Annotated[Optional[float], Opt("--temperature", help="Softmax temperature of the contrastive loss.")] = None,
    learnable_temperature: Annotated[Optional[bool], Opt("--learnable-temperature", help="Learn the temperature.")] = None,
    symmetric: Annotated[Optional[bool], Opt("--symmetric", help="Add the passage-to-query InfoNCE direction.")] = None,
    similarity: Annotated[Optional[str], Opt("--similarity", help="dot or cos.")] = None,
    matryoshka_dims: Annotated[Optional[str], Opt("--matryoshka-dims", help="Matryoshka (MRL, Kusupati et al. "
                                                         "2022): InfoNCE summed over these embedding prefixes, each "
                                                         "re-normalised when the model normalises, e.g. "
                                                         "`--matryoshka-dims 384 256 128 64`; then `retr index --dim "
                                                         "128` indexes 128-d prefixes (values separated by spaces "
                                                         "or commas). Supervised or --in-batch.")] = None,
    moco: Annotated[Optional[bool], Opt("--moco/--in-batch", help="Unsupervised: MoCo queue + momentum key encoder, "
                                        "or in-batch negatives only.", show_default=False)] = None,
    queue_size: Annotated[Optional[int], Opt("--queue-size", help="MoCo queue length (keys).")] = None,
    queue_init: Annotated[Optional[str], Opt("--queue-init", help="MoCo queue at the start: random (Contriever's: "
                                             "full of random unit vectors, every step sees --queue-size negatives) | "
                                             "empty (retr's: fills with real keys as training goes).")] = None,
    momentum: Annotated[Optional[float], Opt("--momentum", help="MoCo key-encoder momentum.")] = None,
    chunk_length: Annotated[Optional[int], Opt("--chunk-length", help="Unsupervised: tokens per corpus chunk.")] = None,
    chunking: Annotated[Optional[str], Opt("--chunking", help="Unsupervised: stream (Contriever's: the corpus as one "
                                           "token stream, full chunks across document boundaries, random offset per "
                                           "epoch) | document (retr's: chunks cut per document, never across two).")] = None,
    token_cache: Annotated[Optional[Path], Opt("--token-cache", help="Unsupervised: where the tokenised corpus is "
                                               "cached (default ~/.cache/retr/tokens).")] = None,
    normalize: Annotated[Optional[bool], Opt("--normalize/--no-normalize", help="L2-normalise embeddings, in training "
                                             "and in the saved model: --normalize = cosine (retr's init-model default), "
                                             "--no-normalize = raw dot product (Contriever's). Default: the model's "
                                             "setting.", show_default=False)] = None,
    ratio_min: Annotated[Optional[float], Opt("--ratio-min", help="Unsupervised: min crop length / chunk length.")] = None,
    ratio_max: Annotated[Optional[float], Opt("--ratio-max", help="Unsupervised: max crop length / chunk length.")] = None,
    deletion_prob: Annotated[Optional[float], Opt("--deletion-prob", help="Unsupervised: per-token deletion probability.")] = None,
    gather_negatives: Annotated[Optional[bool], Opt("--gather-negatives/--local-negatives", help="Under DDP: every "
                                                    "query sees all ranks' passages (default), or only its own rank's.",
                                                    show_default=False)] = None,
    grad_cache: Annotated[Optional[bool], Opt("--grad-cache", help="GradCache: any batch size in the memory of one chunk.")] = None,
    gc_query_chunk: Annotated[Optional[int], Opt("--gc-query-chunk", help="GradCache: queries per chunk.")] = None,
    gc_passage_chunk: Annotated[Optional[int], Opt("--gc-passage-chunk", help="GradCache: passages per chunk.")] = None,
    gradient_checkpointing: Annotated[Optional[bool], Opt("--gradient-checkpointing", help="Hugging Face activation "
                                                          "checkpointing: keep only each transformer block's input "
                                                          "and recompute the block in the backward pass (less "
                                                          "memory, about one more forward pass of compute). Dropout masks are replayed "
                                                          "(also under --grad-cache), so gradients are unchanged.")] = None,
    precision: Annotated[Optional[str], Opt("--precision", help="auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16.")] = None,
    seed: Annotated[Optional[int], Opt("--seed", help="Seed for data order, crops, negatives and init.")] = None,
    save_steps: Annotated[Optional[int], Opt("--save-steps", help="Checkpoint every N steps (atomically).")] = None,
    logging_steps: Annotated[Optional[int], Opt("--logging-steps", help="Log loss, lr, examples/s every N steps.")] = None,
    eval_data: Annotated[Optional[Path], Opt("--eval-data", help="BEIR folder evaluated (nDCG@10) during/after training.")] = None,
    eval_split: Annotated[Optional[str], Opt("--eval-split", help="Split of --eval-data.")] = None,
    eval_steps: Annotated[Optional[int], Opt("--eval-steps", help="Evaluate every N steps (default: at the end).")] = None,
    report_to: Annotated[Optional[list[str]], Opt("--report-to", help="Also log to: tensorboard.")] = None,
    resume: Annotated[Optional[bool], Opt("--resume", help="Continue from the latest checkpoint in --output.")] = None,
    nproc: Annotated[int, Opt("--nproc", help="Launch this many DDP processes with torchrun.")] = 1,
    query_max_length: common.QueryMaxLen = None,
    passage_max_length: common.PassageMaxLen = None,
    pooling: common.Pooling = None,
    query_prefix: common.QueryPrefix = None,
    passage_prefix: common.PassagePrefix = None,
    query_instruction: common.QueryInstruction = None,
    task: common.Task = None,
    torch_dtype: common.TorchDtype = None,
    # issue 21: the B3 authors' construction
    b3_mutual_edges: Annotated[Optional[bool], Opt("--b3-mutual-edges", help="B3: keep an edge only if each "
                                                   "example is in the other's window (authors' graph; default: "
                                                   "either).")] = None,
    b3_exact_k: Annotated[Optional[bool], Opt("--b3-exact-k", help="B3: clusters of exactly --b3-cluster-size "
                                              "(overflow moved, leftovers cut into K-sized chunks).")] = None,
    b3_clusters_per_batch: Annotated[Optional[int], Opt("--b3-clusters-per-batch", min=1, help="B3: each batch "
                                                        "is this many whole clusters (needs --b3-exact-k; "
                                                        "batch size = this x K).")] = None,
    b3_cluster_negatives: Annotated[Optional[int], Opt("--b3-cluster-negatives", min=0, help="B3++: hard "
                                                       "negatives per query drawn from its cluster's pooled "
                                                       "windows, weighted by count, minus a penalty for each "
                                                       "top-p appearance; they replace the examples' own hard "
                                                       "negatives; needs --train-negatives N.")] = None,
    b3_sibling_exclusion: Annotated[Optional[bool], Opt("--b3-sibling-exclusion", help="B3: rank windows skip "
                                                        "queries sharing a judged positive (multi-positive "
                                                        "data, e.g. NFCorpus).")] = None,
    verbose: common.Verbose = False,
    # issue 19: LoRA adapters (peft)
    lora_r: Annotated[Optional[int], Opt("--lora-r", min=0, help="LoRA (Hu et al. 2021, via peft): freeze the "
                                         "model, train rank-R adapters on linear layers (0 = full "
                                         "fine-tuning). model/ is then a PEFT adapter (adapter_config.json + "
                                         "adapter_model.safetensors) that retr index/eval/search load.")] = None,
    lora_alpha: Annotated[Optional[float], Opt("--lora-alpha", help="LoRA scale numerator: updates are "
                                               "alpha/r * B A (default 2 x --lora-r).")] = None,
    lora_dropout: Annotated[Optional[float], Opt("--lora-dropout", help="Dropout on the LoRA adapters' input "
                                                 "(default 0.1).")] = None,
    lora_target_modules: Annotated[Optional[str], Opt("--lora-target-modules", help="Linear layers to adapt, "
                                                      "by name, e.g. `q_proj,k_proj,v_proj,o_proj` or "
                                                      "`all-linear` (default: peft's choice for the "
                                                      "architecture: BERT query,value; Qwen2/Llama q_proj,v_proj).")] = None,
    merge_lora: Annotated[Optional[bool], Opt("--merge-lora", help="With --lora-r: also write OUTPUT/model-merged, "
                                              "the adapters folded into the base weights (a plain Hugging Face "
                                              "directory, no peft needed).")] = None,
    # issue 20: distillation
    distill: Annotated[Optional[str], Opt("--distill", help="Learn a teacher's scores: margin-mse (Hofstätter et "
                                          "al. 2020) or kl (listwise, RocketQAv2/Tevatron) over each query's "
                                          "[positive, --train-negatives] group, or soft-infonce (dual "
                                          "encoders: InfoNCE over the whole batch with the teacher's "
                                          "distribution over the group as its label). Needs "
                                          "--teacher-scores.")] = None,
    teacher_scores: Annotated[Optional[Path], Opt("--teacher-scores", help="Tevatron JSONL with a score on every "
                                                  "passage (`retr score`); the training data when distilling "
                                                  "(instead of --data).")] = None,
    teacher_temperature: Annotated[Optional[float], Opt("--teacher-temperature", help="Teacher scores are divided "
                                                        "by this (every loss), to put them on the student's "
                                                        "scale: 1 for cross-encoder logits, the student's "
                                                        "--temperature for a dense teacher's cosines.")] = None,
    distill_infonce_weight: Annotated[Optional[float], Opt("--distill-infonce-weight", help="Add this x the "
                                                           "contrastive loss (InfoNCE with in-batch negatives; "
                                                           "listwise for --mode reranker). Default 0.")] = None,
    # issue 20: cross-encoder start and loss
    ce_head: Annotated[Optional[str], Opt("--ce-head", help="Reranker: head of a cross-encoder started from an "
                                          "encoder: cls ([CLS] -> pooler -> linear, as loaded) | pooler (the same, "
                                          "pooler re-initialised, trained at --head-lr) | segment-cosine (scale x "
                                          "cosine of the query's and passage's mean token states + the pooler "
                                          "path: learns from step 0). A saved cross-encoder keeps its head.")] = None,
    ce_loss: Annotated[Optional[str], Opt("--ce-loss", help="Reranker loss: listwise (softmax over 1 positive + "
                                          "negatives) | bce (pointwise binary cross-entropy per pair).")] = None,
    ce_scale: Annotated[Optional[float], Opt("--ce-scale", min=0.0, help="Reranker, --ce-head segment-cosine: "
                                             "initial scale of the cosine (default 20; smaller where the "
                                             "start's cosine ranks poorly, RESULTS.md §14).")] = None,
) -> None:
    """Train a dual encoder: supervised (query, positive, hard negatives) or unsupervised Contriever-style."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        raise typer.Exit(_launch_torchrun(nproc))
    common.setup_logging(verbose)
    from retr.retriever.training.arguments import TrainConfig
    from retr.retriever.training.distributed import init_distributed

    flags = dict(output_dir=str(output) if output else None, mode=mode, model=model,
                 train_data=[str(d) for d in data] if data else None, train_split=split,
                 negatives_file=str(negatives) if negatives else None, train_negatives=train_negatives, train_random_negatives=train_random_negatives,
                 pairs=pairs, batching=batching, b3_teacher=b3_teacher, b3_p=b3_p, b3_m=b3_m,
                 b3_cluster_size=b3_cluster_size, b3_algorithm=b3_algorithm, b3_cache=str(b3_cache) if b3_cache else None,
                 separate_towers=separate_towers, epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, head_lr=head_lr,
                 weight_decay=weight_decay, warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm,
                 temperature=temperature, learnable_temperature=learnable_temperature, symmetric=symmetric,
                 similarity=similarity, matryoshka_dims=_int_list(matryoshka_dims, "--matryoshka-dims"), moco=moco, queue_size=queue_size, momentum=momentum, chunk_length=chunk_length,
                 queue_init=queue_init, chunking=chunking, token_cache=str(token_cache) if token_cache else None,
                 normalize=normalize,
                 ratio_min=ratio_min, ratio_max=ratio_max, deletion_prob=deletion_prob, grad_cache=grad_cache, gather_negatives=gather_negatives,
                 gc_query_chunk=gc_query_chunk, gc_passage_chunk=gc_passage_chunk, gradient_checkpointing=gradient_checkpointing, precision=precision, seed=seed,
                 save_steps=save_steps, logging_steps=logging_steps, eval_data=str(eval_data) if eval_data else None,
                 eval_split=eval_split, eval_steps=eval_steps, report_to=report_to, resume=resume,
                 query_max_length=query_max_length, passage_max_length=passage_max_length, pooling=pooling,
                 query_prefix=query_prefix, passage_prefix=passage_prefix, query_instruction=query_instruction,
                 task=task, torch_dtype=torch_dtype,
                 # issue 20
                 distill=distill, teacher_scores=str(teacher_scores) if teacher_scores else None,
                 teacher_temperature=teacher_temperature, distill_infonce_weight=distill_infonce_weight,
                 b3_mutual_edges=b3_mutual_edges, b3_exact_k=b3_exact_k, b3_clusters_per_batch=b3_clusters_per_batch,
                 b3_cluster_negatives=b3_cluster_negatives, b3_sibling_exclusion=b3_sibling_exclusion)  # issue 21
    flags.update(lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, merge_lora=merge_lora,  # issue 19
                 lora_target_modules=_name_list(lora_target_modules))
    flags.update(ce_head=ce_head, ce_loss=ce_loss, ce_scale=ce_scale)  # issue 20
    flags = {k: v for k, v in flags.items() if v is not None}
    cfg = TrainConfig.from_file(config, **flags) if config else TrainConfig(**flags)
    if output is None and config is None:
        raise typer.BadParameter("--output is required")
    if cfg.mode != "reranker" and (ce_head, ce_loss, ce_scale) != (None, None, None):  # issue 20
        raise typer.BadParameter("--ce-head, --ce-loss and --ce-scale apply to --mode reranker only")
    _check_b3_flags(cfg, config, given=flags)
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 writes the run directory
        common.claim_output(cfg.output_dir, "run")
    dist = init_distributed()
    from retr.retriever.training.driver import build_trainer

    eval_fn = _eval_fn(cfg) if cfg.eval_data else None
    summary = build_trainer(cfg, dist, eval_fn=eval_fn).train()
    if dist.is_main:
        common.console().print(f"[green]done[/green]: {summary['steps']} steps in {summary['train_seconds']}s; "
                               f"model saved to {Path(cfg.output_dir) / 'model'}"
                               + (f"; eval {summary['eval']}" if summary.get("eval") else ""))


def _check_b3_flags(cfg, config: Path | None, given: dict) -> None:
    """B3 flags given on the command line (``given``: the options set there) that would be ignored silently are
    one-line errors: the mining options without ``--batching b3`` (a config file, e.g. a run's
    train_config.json, may hold them all), and ``--b3-cluster-negatives N`` without ``--train-negatives`` (the
    default 1 trains with one of the N)."""
    if cfg.batching != "b3":
        for name in ("b3_teacher", "b3_p", "b3_m", "b3_cluster_size", "b3_algorithm", "b3_cache"):
            if name in given:
                raise ValueError(f"--{name.replace('_', '-')} needs --batching b3")
    if cfg.b3_cluster_negatives and "train_negatives" not in given:
        from retr.retriever.training.config_file import read_config_mapping

        if config is None or "train_negatives" not in read_config_mapping(config)[0]:
            raise ValueError(f"--b3-cluster-negatives {cfg.b3_cluster_negatives} needs --train-negatives N (how many "
                             f"of them each query trains with; the default 1 would use one of the "
                             f"{cfg.b3_cluster_negatives})")


def _int_list(text: str | None, flag: str) -> list[int] | None:
    """``"384,256 128"`` -> [384, 256, 128]; anything else is a one-line ``ValueError``."""
    if text is None:
        return None
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"{flag} takes positive whole numbers, got {text!r}")
    return [int(p) for p in parts]


def _name_list(text: str | None) -> list[str] | None:
    """``"q_proj, v_proj"`` -> ["q_proj", "v_proj"] (issue 19: --lora-target-modules)."""
    if text is None:
        return None
    names = [p for p in text.replace(",", " ").split() if p]
    if not names:
        raise ValueError("--lora-target-modules takes module names, got an empty value")
    return names


def _launch_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun (single node, loopback rendezvous) without --nproc."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={os.environ.get('MASTER_PORT', '29533')}", "-m", "retr.cli.main", *args]
    log.info("launching: %s", " ".join(cmd))
    return subprocess.call(cmd)


def _eval_fn(cfg):
    """nDCG@10 etc. of the model being trained on --eval-data (floor 3 code, injected into the trainer)."""
    from retr.evaluation.evaluate import evaluate
    from retr.retriever.data.beir import load_beir
    from retr.retriever.search import DenseRetriever

    dataset = load_beir(cfg.eval_data, cfg.eval_split, allow_missing_docs=True)
    if cfg.mode == "reranker":  # rerank BM25's top 100
        from retr.retriever.bm25 import BM25Retriever
        from retr.retriever.rerank import Reranker, RerankingRetriever

        bm25 = BM25Retriever.for_corpus(dataset.corpus)

        def run(model):
            retriever = RerankingRetriever(bm25, Reranker(model, batch_size=64), dataset.corpus, top_k=100)
            return evaluate(retriever, dataset, k=100, metrics=("nDCG@10", "Recall@100")).metrics
        return run

    def run(model):
        result = evaluate(DenseRetriever.build(model, dataset.corpus, show_progress=False), dataset,
                          k=100, metrics=("nDCG@10", "Recall@100"))
        return result.metrics

    return run

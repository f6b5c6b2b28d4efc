"""Shared fixtures: a tiny random BERT (2 layers) with MiniLM's tokenizer, tiny Qwen2/Llama decoders with a locally
built tokenizer, tiny BEIR folders, shared data."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# corpus stores and other caches of the test session go to a temp dir, never the user's ~/.cache
os.environ.setdefault("RETR_CACHE_DIR", tempfile.mkdtemp(prefix="retr-test-cache-"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RETR_SHARED_DATA", REPO.parent / "shared" / "data"))


def make_tiny_bert(directory: Path, seed: int = 0, hidden: int = 32, layers: int = 2, pooling: str = "mean",
                   normalize: bool = True, dropout: float = 0.1) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from retr.retriever.modeling import Encoder, EncoderConfig, packaged_minilm_path

    tok = AutoTokenizer.from_pretrained(packaged_minilm_path())
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=128, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    model = BertModel(cfg)
    Encoder(model, tok, EncoderConfig(pooling=pooling, normalize=normalize, query_max_length=32,
                                      passage_max_length=64)).save(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


EOS, PAD, BOS = "<|endoftext|>", "<|pad|>", "<s>"


def make_tiny_tokenizer(add_bos: bool = False):
    """A decoder-style fast tokenizer built locally (nothing from the hub): MiniLM's WordPiece vocabulary plus
    EOS / pad / BOS tokens, no EOS added by the tokenizer itself (as Qwen2's and Llama's)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from retr.retriever.modeling import packaged_minilm_path

    vocab = {}
    with open(Path(packaged_minilm_path()) / "vocab.txt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            vocab[line.rstrip("\n")] = i
    for token in (EOS, PAD, BOS):
        vocab[token] = len(vocab)
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    kwargs = {"bos_token": BOS, "add_bos_token": True} if add_bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=PAD, unk_token="[UNK]",
                                   model_max_length=128, **kwargs)


def make_tiny_decoder(directory: Path, arch: str = "qwen2", seed: int = 0, hidden: int = 32,
                      dropout: float = 0.0) -> Path:
    """A 2-layer random Qwen2 or Llama model with ``make_tiny_tokenizer``, saved as a plain HF directory (no retr
    or sentence-transformers settings: the tokenizer does not append EOS)."""
    import torch
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    tok = make_tiny_tokenizer(add_bos=arch == "llama")
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=2 * hidden, max_position_embeddings=128,
                  attention_dropout=dropout, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2Model(Qwen2Config(**common)) if arch == "qwen2" else LlamaModel(LlamaConfig(**common))
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session", params=["qwen2", "llama"])
def tiny_decoder_dir(request, tmp_path_factory) -> Path:
    return make_tiny_decoder(tmp_path_factory.mktemp(f"tiny-{request.param}"), arch=request.param)


DOCS = [
    ("d1", "Aspirin", "Aspirin reduces the risk of heart attack in adults."),
    ("d2", "Statins", "Statins lower cholesterol and cardiovascular risk."),
    ("d3", "Vitamin D", "Vitamin D deficiency is linked to bone fractures."),
    ("d4", "Exercise", "Regular exercise improves heart health and mood."),
    ("d5", "Sleep", "Poor sleep is associated with obesity and diabetes."),
    ("d6", "", "Smoking causes lung cancer and heart disease."),
    ("d7", "Coffee", "Coffee consumption and liver disease outcomes."),
    ("d8", "Salt", "High salt intake raises blood pressure."),
]
QUERIES = [("q1", "does aspirin prevent heart attacks"), ("q2", "cholesterol lowering drugs"),
           ("q3", "bone fractures vitamin"), ("q4", "blood pressure and salt"), ("d6", "smoking lung cancer")]
QRELS = [("q1", "d1", 1), ("q2", "d2", 2), ("q2", "d4", 1), ("q3", "d3", 1), ("q4", "d8", 1), ("d6", "d6", 1), ("d6", "d4", 1)]


def write_beir(directory: Path, docs=DOCS, queries=QUERIES, qrels=QRELS, crlf: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "corpus.jsonl", "w") as fh:
        for d, t, x in docs:
            fh.write(json.dumps({"_id": d, "title": t, "text": x}) + "\n")
    with open(directory / "queries.jsonl", "w") as fh:
        for q, t in queries:
            fh.write(json.dumps({"_id": q, "text": t}) + "\n")
    (directory / "qrels").mkdir(exist_ok=True)
    nl = "\r\n" if crlf else "\n"
    with open(directory / "qrels" / "test.tsv", "w", newline="") as fh:
        fh.write("query-id\tcorpus-id\tscore" + nl)
        for q, d, s in qrels:
            fh.write(f"{q}\t{d}\t{s}{nl}")
    return directory


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    return write_beir(tmp_path / "tiny")


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    path = SHARED_DATA / "scifact"
    if not (path / "corpus.jsonl").exists():
        pytest.fail(f"shared data not found at {path} (set RETR_SHARED_DATA)")
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the `retr` entry point in-process; returns (exit code, stdout, stderr)."""
    import sys

    from retr.cli.main import main

    old = sys.argv
    sys.argv = ["retr", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    """The ``error:`` line of a failed command's stderr (log lines may precede it); fails unless there is exactly
    one and no traceback."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]

"""Issue #18, a fresh user's inputs: `retr train --config` files with a BOM / CRLF, YAML's string floats
(`lr: 2e-5`), and values of the wrong type are read right or refused in one line naming file, line and field."""
from __future__ import annotations

import pytest

from conftest import one_line_error, run_cli


def _write(path, text: str, bom: bool = True, crlf: bool = True):
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode())
    return path


@pytest.mark.parametrize("name, text", [
    ("c.yaml", "batch_size: 4\nlr: 2e-5\nepochs: 2\nnormalize: false\nmatryoshka_dims: [32, 16]\n"),
    ("c.json", '{"batch_size": 4,\n "lr": 2e-5, "epochs": 2,\n "normalize": false, "matryoshka_dims": [32, 16]}\n'),
])
def test_config_with_bom_and_crlf_is_read_with_its_types(tmp_path, name, text):
    from retr.retriever.training.arguments import TrainConfig

    plain = TrainConfig.from_file(_write(tmp_path / ("p" + name), text, bom=False, crlf=False))
    marked = TrainConfig.from_file(_write(tmp_path / name, text))
    assert marked == plain
    assert (marked.batch_size, marked.epochs, marked.normalize, marked.matryoshka_dims) == (4, 2, False, [32, 16])
    assert isinstance(marked.lr, float) and marked.lr == pytest.approx(2e-5)  # YAML 1.1 reads 2e-5 as a string


@pytest.mark.parametrize("name, text, expect", [
    ("t.yaml", "epochs: 1\nbatch_size: abc\n", 't.yaml:2: field "batch_size": expected an integer, got \'abc\''),
    ("t.yaml", "epochs: 1.5\n", 't.yaml:1: field "epochs": expected an integer, got 1.5'),
    ("t.yaml", "\nlr: fast\n", 't.yaml:2: field "lr": expected a number, got \'fast\''),
    ("t.yaml", "max_steps: '2'\n", 't.yaml:1: field "max_steps": expected an integer or null, got \'2\''),
    ("t.yaml", "normalize: 'no'\n", 't.yaml:1: field "normalize": expected true or false or null'),
    ("t.yaml", "epochs: 1\nmatryoshka_dims: 64\n", 't.yaml:2: field "matryoshka_dims": expected a list of integers'),
    ("t.yaml", "lr: .nan\n", 't.yaml:1: field "lr": expected a number, got nan'),
    ("t.yaml", "epochs: 1\nbatch_sizee: 4\n", "t.yaml:2: unknown option 'batch_sizee'"),
    ("t.yaml", "epochs: 1\nbatch_size: [4\n", "t.yaml:3: malformed YAML"),
    ("t.json", '{"epochs": 1,\n "batch_size": }', "t.json:2: malformed JSON"),
    ("t.json", '{"epochs": 1,\n "temperature": "0.1x"}', 't.json:2: field "temperature": expected a number'),
])
def test_bad_config_value_is_one_line_naming_file_line_field(tmp_path, tiny_model_dir, tiny_beir, capsys,
                                                              name, text, expect):
    cfg = _write(tmp_path / name, text, bom=False, crlf=False)
    code, _, err = run_cli(["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "-d", tiny_beir,
                            "--split", "test", "-c", cfg], capsys)
    assert code == 2
    assert one_line_error(err).startswith(f"error: {cfg.parent}/{expect}"), err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_config_that_is_a_directory_is_one_line(tmp_path, tiny_model_dir, tiny_beir, capsys):
    (tmp_path / "c.yaml").mkdir()
    code, _, err = run_cli(["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "-d", tiny_beir,
                            "-c", tmp_path / "c.yaml"], capsys)
    assert code == 2 and "c.yaml: is a directory" in one_line_error(err)


@pytest.mark.parametrize("factory, expect", [
    ("HNSW0", "HNSW0 is too small (at least HNSW2)"),  # FAISS aborted the process (SIGABRT)
    ("IVF4_HNSW0,Flat", "HNSW0 is too small"),
    ("IVF2,PQ8x0", "PQ codes of 0 bits (1 to 16)"),  # SIGFPE
    ("PQ8x20", "PQ codes of 20 bits (1 to 16)"),
    ("IVF0,Flat", "IVF0 is too small (at least IVF1)"),  # was built; every search then raised
    ("IDMap,Flat", "IDMap is not needed"),  # add() raised after encoding
    ("IVF64,Flat", "(use IVF1 or fewer, or -t flat)"),  # advised --nlist, which a factory string refuses
])
def test_factory_sizes_faiss_cannot_use_are_refused_before_encoding(tmp_path, tiny_model_dir, tiny_beir, capsys,
                                                                    monkeypatch, factory, expect):
    from retr.retriever.modeling.encoder import Encoder

    def boom(*a, **k):
        raise AssertionError("encoded before the index type was refused")
    monkeypatch.setattr(Encoder, "encode", boom)
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "idx", "-t", factory],
                           capsys)
    assert code == 2 and expect in one_line_error(err) and not (tmp_path / "idx").exists()


@pytest.mark.parametrize("factory", ["HNSW8", "IVF2,Flat"])
def test_valid_small_factory_strings_still_build_and_search_exactly(tmp_path, tiny_model_dir, tiny_beir, capsys,
                                                                   factory):
    import json

    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "idx", "-t", factory],
                           capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["factory"] == factory
    code, _, err = run_cli(["search", "-i", tmp_path / "idx", "-q", "aspirin heart", "--k", "3",
                            "--nprobe" if "IVF" in factory else "--ef-search", "2" if "IVF" in factory else "16",
                            "--run", tmp_path / "r.trec"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "flat"], capsys)
    code, _, err = run_cli(["search", "-i", tmp_path / "flat", "-q", "aspirin heart", "--k", "3",
                            "--run", tmp_path / "f.trec"], capsys)
    top = lambda p: [ln.split()[2] for ln in p.read_text().splitlines()]  # noqa: E731
    assert top(tmp_path / "r.trec") == top(tmp_path / "f.trec")  # 8 docs, every list probed: exact search


def test_cross_encoder_length_over_positions_is_clamped_with_a_warning(tmp_path, tiny_model_dir, caplog):
    """Case max-length-over-positions, for cross-encoders: `retr train --mode reranker --passage-max-length 5000`
    and a reranker saved with such a length raised a RuntimeError in the position embeddings on a long pair."""
    import json
    import shutil

    import numpy as np

    from retr.retriever.modeling.cross_encoder import CE_CONFIG, CrossEncoder

    long = " ".join(["aspirin heart attack prevention"] * 200)  # ~800 tokens > the tiny model's 128 positions
    ce = CrossEncoder.from_pretrained(tiny_model_dir, max_length=5000)
    assert ce.max_length == 128 and "more than the cross-encoder's 128 positions" in caplog.text
    assert np.isfinite(np.asarray(ce.score(["aspirin"], [long]))).all()
    saved = tmp_path / "ce"
    shutil.copytree(tiny_model_dir, saved)
    (saved / CE_CONFIG).write_text(json.dumps({"max_length": 5000, "head": "cls"}))
    assert CrossEncoder.from_pretrained(saved).max_length == 128
    assert CrossEncoder.from_pretrained(saved, max_length=64).max_length == 64  # in range: kept


def test_reranker_training_with_length_over_positions_trains(tmp_path, tiny_model_dir, capsys):
    import json

    from conftest import write_beir

    long = " ".join(["aspirin heart attack prevention"] * 200)
    docs = [(f"d{i}", "t", f"{long} {i}") for i in range(6)]
    data = write_beir(tmp_path / "long", docs=docs, queries=[(f"q{i}", "aspirin") for i in range(4)],
                      qrels=[(f"q{i}", f"d{i}", 1) for i in range(4)])
    code, _, err = run_cli(["train", "--mode", "reranker", "-o", tmp_path / "run", "-m", tiny_model_dir, "-d", data,
                            "--split", "test", "--batch-size", "2", "--max-steps", "1", "--train-negatives", "0",
                            "--train-random-negatives", "1", "--passage-max-length", "5000"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "model" / "retr_cross_encoder.json").read_text())["max_length"] == 128


@pytest.mark.parametrize("flags, expect", [
    (["--logging-steps", "0"], "--logging-steps must be at least 1, got 0"),  # was a ZeroDivisionError traceback
    (["--grad-cache", "--gc-query-chunk", "0"], "--gc-query-chunk must be at least 1, got 0"),
    (["--save-steps", "-1"], "--save-steps must be at least 0, got -1"),  # saved every step
    (["--train-negatives", "-1"], "--train-negatives must be at least 0, got -1"),
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--momentum", "2"], "--momentum must be in [0, 1], got 2.0"),
    (["--deletion-prob", "1.5"], "--deletion-prob must be in [0, 1), got 1.5"),
    (["--warmup-ratio", "2"], "--warmup-ratio must be in [0, 1], got 2.0"),
    (["--ratio-min", "0.9", "--ratio-max", "0.1"], "--ratio-min 0.9 is above --ratio-max 0.1"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be >= 0, got -1.0"),
    (["--lr", "inf"], "--lr must be >= 0, got inf"),
    (["--chunk-length", "0"], "--chunk-length must be at least 1, got 0"),
])
def test_train_numeric_option_out_of_range_is_one_line_naming_the_flag(tmp_path, tiny_model_dir, tiny_beir,
                                                                        capsys, flags, expect):
    code, _, err = run_cli(["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "-d", tiny_beir, "--split",
                            "test", "--batch-size", "2", "--max-steps", "1", *flags], capsys)
    assert code == 2 and one_line_error(err) == f"error: {expect}" and not (tmp_path / "run").exists()


def test_train_range_edges_still_train(tmp_path, tiny_model_dir, tiny_beir, capsys):
    code, _, err = run_cli(["train", "-o", tmp_path / "run", "-m", tiny_model_dir, "-d", tiny_beir, "--split",
                            "test", "--batch-size", "2", "--max-steps", "2", "--lr", "0", "--max-grad-norm", "0",
                            "--save-steps", "0", "--warmup-ratio", "1", "--logging-steps", "1"], capsys)
    assert code == 0, err
    assert len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) >= 2


@pytest.mark.parametrize("line, field", [("q 1\tcancer", "'q 1'"), ("\tcancer", "''")])
def test_tsv_query_id_a_trec_run_cannot_carry_is_refused(tmp_path, line, field):
    """`q 1` was written into the run as `q 1 Q0 d 1 s tag` (7 fields: ir_measures/trec_eval misread it); the
    JSONL reader already refused such ids."""
    from retr.retriever.data.errors import DataError
    from retr.retriever.data.queries import read_queries

    path = tmp_path / "q.tsv"
    path.write_bytes(b"\xef\xbb\xbfq0\tfine\r\n" + line.encode() + b"\r\n")
    with pytest.raises(DataError, match=rf'q.tsv:2: field "qid" {field} is empty or contains whitespace'):
        read_queries(path)
    path.write_bytes(b"\xef\xbb\xbfq0\tfine\r\nq1\tbone\r\n")
    assert read_queries(path) == {"q0": "fine", "q1": "bone"}  # BOM and CRLF are not part of ids or text


def test_full_disk_while_creating_the_encoding_buffer_is_one_line(tmp_path, tiny_model_dir, tiny_beir, capsys,
                                                                   monkeypatch):
    """On a full tmpfs `retr index` died with SIGBUS ("Bus error", exit 135) writing its memmapped embeddings;
    the blocks are now reserved up front (posix_fallocate), so ENOSPC is one line. ENOSPC is simulated here."""
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", full)
    code, _, err = run_cli(["index", "-m", tiny_model_dir, "-d", tiny_beir, "-o", tmp_path / "idx"], capsys)
    line = one_line_error(err)
    assert code == 2 and "embeddings.npy" in line and "no space left on device" in line
    assert not (tmp_path / "idx").exists()


def test_reserve_npy_allocates_the_whole_file(tmp_path):
    import os

    from retr.indexing.shards import reserve_npy

    path = tmp_path / "v.npy"
    arr = reserve_npy(path, (4096, 64))
    del arr
    st = os.stat(path)
    assert st.st_blocks * 512 >= st.st_size  # no hole left for a later page write to fault on

"""Issue #17, acceptance 2: SIGKILL `retr index` at every step of replacing an index and check that `retr search`
always answers from the old or the new index, and that the next run leaves nothing behind.

`RETR_TEST_FAULT_AT=N` makes retr SIGKILL itself at the N-th step of its write sequence (the temp dir made,
each chunk of index.faiss, docids.json, each fsync, the swap, removing the old copy, ...). N runs from 1 until
a run completes, so every step is a kill point, however many the write sequence has."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import run_cli
from safety_util import leftovers, make_shards, renamed_docs, start_retr

OLD = {f"d{i}" for i in range(1, 9)}
NEW = {f"nd{i}" for i in range(1, 9)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("kill-shards")
    return make_shards(root / "old", tiny_model_dir), make_shards(root / "new", tiny_model_dir, renamed_docs("n"))


def _answer(idx, capsys) -> str:
    """Which index `retr search -i idx` answers from: "old" or "new" (anything else fails the test)."""
    out = idx.parent / "hits.json"
    code, _, err = run_cli(["search", "-i", idx, "-q", "aspirin heart attack", "-q", "salt", "-k", "8", "-o", out],
                           capsys)
    assert code == 0, f"no index under {idx}: {err[-500:]}"
    ids = {h["docid"] for hits in json.loads(out.read_text()).values() for h in hits}
    assert ids in (OLD, NEW), ids  # all 8 documents of one index, never a mix or wrong ids
    return "old" if ids == OLD else "new"


def test_sigkill_at_every_step_of_an_index_replacement(tmp_path, shards, capsys):
    old, new = shards
    idx = tmp_path / "idx"
    seen, step = [], 0
    while True:
        step += 1
        # put the old index back; this run also removes what the previous killed one left
        assert run_cli(["index", "--from-embeddings", old, "-o", idx], capsys)[0] == 0
        assert leftovers(idx) == []
        proc = start_retr(["index", "--from-embeddings", new, "-o", idx], fault_at=step)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, err[-2000:]
        seen.append(_answer(idx, capsys))
        assert step < 200, "the write sequence never completed"
    assert _answer(idx, capsys) == "new" and leftovers(idx) == []
    # every kill point answered old, then (once the swap happened) new: never nothing, never a mix
    assert len(seen) >= 10 and seen == sorted(seen, key=lambda s: s == "new"), seen
    assert "old" in seen and "new" in seen


def test_sigkill_during_the_two_rename_fallback_is_recovered(tmp_path, shards, capsys):
    """Filesystems without RENAME_EXCHANGE fall back to two renames; a kill between them leaves no index under
    the name (said in one line by the reader) and the next write puts the old one back first."""
    old, new = shards
    idx = tmp_path / "idx"
    assert run_cli(["index", "--from-embeddings", old, "-o", idx], capsys)[0] == 0
    script = ("import sys, retr.indexing.atomic as a; a.exchange = lambda x, y: False; "
              "from retr.cli.main import main; sys.argv = ['retr'] + sys.argv[1:]; main()")
    env = dict(os.environ, RETR_TEST_FAULT_AT="renamed old away")
    proc = subprocess.run([sys.executable, "-c", script, "index", "--from-embeddings", str(new), "-o", str(idx)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not idx.exists() and len([p for p in leftovers(idx) if ".old-" in p]) == 1
    code, _, err = run_cli(["search", "-i", idx, "-q", "x"], capsys)
    assert code == 2 and "left the previous index in" in err and "Traceback" not in err
    # the next write (a killed one, even) restores the old index before doing anything else
    proc = start_retr(["index", "--from-embeddings", new, "-o", idx], fault_at="mkdtemp")
    proc.communicate(timeout=120)
    assert _answer(idx, capsys) == "old"
    assert run_cli(["index", "--from-embeddings", new, "-o", idx], capsys)[0] == 0
    assert _answer(idx, capsys) == "new" and leftovers(idx) == []


def test_readers_during_repeated_replacements_see_old_or_new_never_an_error(tmp_path):
    """Readers take no lock: while another process replaces the index again and again, every load answers
    with one complete index (a read that straddles a swap is detected and read again)."""
    import numpy as np

    from retr.indexing import FaissIndex

    idx = tmp_path / "idx"
    x = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    sets = {"a": [f"a{i}" for i in range(200)], "b": [f"b{i}" for i in range(200)]}
    FaissIndex.build(x, sets["a"]).save(idx)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, numpy as np; from retr.indexing import FaissIndex\n"
        "x = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)\n"
        "for i in range(60):\n"
        "    p = 'ab'[i % 2]; FaissIndex.build(x, [f'{p}{j}' for j in range(200)]).save(sys.argv[1])\n"), str(idx)])
    seen = set()
    try:
        while writer.poll() is None:
            index = FaissIndex.load(idx)
            _, hits = index.search(x[:3], 1)
            assert index.docids in (sets["a"], sets["b"]) and hits[0][0] == index.docids[0]
            seen.add(index.docids[0][0])
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0 and seen == {"a", "b"}

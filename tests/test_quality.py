"""bench.quality and bench.textdata: real corpora, fixed splits, task folders, scoring, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import kernels as K
from bench import quality as Q
from bench import textdata as T
from bench.cli import guard


def ran(capsys, argv):
    with pytest.raises(SystemExit) as done:
        guard(Q.main, argv)
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def corpus_or_skip(load):
    try:
        return load()
    except T.DataError as err:
        pytest.skip(str(err))


# -- corpora and splits ------------------------------------------------------------------
def test_bbc_news_split_is_fixed_and_stratified():
    articles = corpus_or_skip(T.bbc_news)
    assert len(articles) == 2225 and len({e.label for e in articles}) == 5
    train, test = T.split(articles)
    assert [e.text for e in test] == [e.text for e in T.split(articles)[1]]
    assert (len(train), len(test)) == (1558, 667)  # a partition of the 2225 files...
    unique_train, unique_test = T.task_split(articles)
    # ...but the corpus repeats 98 articles: a scored test text is never also a train text.
    assert not {e.text for e in unique_train} & {e.text for e in unique_test}
    assert len({e.text for e in unique_train + unique_test}) == len(unique_train) + len(unique_test) == 2127
    assert {e.text for e in unique_train} == {e.text for e in train}


def test_fortunes_topics_are_classes():
    examples = corpus_or_skip(T.fortunes)
    labels = {e.label for e in examples}
    assert len(labels) >= 20 and all(20 <= len(e.text) <= 600 for e in examples)
    assert max(sum(e.label == label for e in examples) for label in labels) == T.FORTUNES_PER_CLASS


def test_distillation_texts_come_from_train_articles_only():
    articles = corpus_or_skip(T.bbc_news)
    texts = T.distillation_texts(["bbc"])["bbc"]
    train, test = T.task_split(articles)
    assert set(texts) == {p for e in train for p in T.paragraphs(e.text)}
    # The corpus also holds near-duplicate stories: some test paragraphs occur in train
    # articles too (4.5%, stated in reports/quality-minilm.md); never a whole test article.
    shared = {p for e in test for p in T.paragraphs(e.text)} & set(texts)
    assert len(shared) < 0.05 * sum(len(T.paragraphs(e.text)) for e in test)


def test_wordnet_glosses_and_user_text(tmp_path):
    glosses = corpus_or_skip(T.wordnet_glosses)
    assert len(glosses) > 100_000 and not any(g.startswith(" ") for g in glosses[:100])
    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\nsecond one\n")
    assert T.text_folder(tmp_path) == ["first paragraph still first", "second one"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(T.DataError, match="no text found"):
        T.text_folder(tmp_path / "empty")


# -- task folders -------------------------------------------------------------------------
def write_task(folder, pairs: bool, label: bool = True, fmt: str = "tsv"):
    folder.mkdir()
    rows = [("a cat sat on the mat", "the cat is sitting", "1"), ("stocks fell today", "it is sunny", "0"),
            ("the team won the cup", "they won", "1"), ("rain all day", "the match ended 2-1", "0")] * 2
    for name in ("train", "dev"):
        if fmt == "jsonl":
            lines = [json.dumps({"sentence1": a, "sentence2": b, **({"label": y} if label else {})}) for a, b, y in rows]
            (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
            continue
        header = ["sentence1", "sentence2"] if pairs else ["sentence"]
        header += ["label"] if label else []
        body = ["\t".join(([a, b] if pairs else [a]) + ([y] if label else [])) for a, b, y in rows]
        (folder / f"{name}.tsv").write_text("\n".join(["\t".join(header)] + body) + "\n")
    return folder


def test_task_folder_single_sentences_and_pairs(tmp_path):
    single = Q.folder_task(str(write_task(tmp_path / "single", pairs=False)), 100)
    assert single.test[0].pair is None and single.classes == ["0", "1"]
    pairs = Q.folder_task(str(write_task(tmp_path / "pairs", pairs=True, fmt="jsonl")), 100)
    assert pairs.train[0].pair == "the cat is sitting" and len(pairs.train) == 8


def test_task_folder_without_labels_is_one_line_error(capsys, tmp_path):
    folder = write_task(tmp_path / "nolabels", pairs=True, label=False)
    code, _, err = ran(capsys, ["--tasks", "none", "--task-dir", str(folder), "--out", str(tmp_path / "q.jsonl")])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "no 'label' column" in err
    assert not (tmp_path / "q.jsonl").exists()


# -- scoring ---------------------------------------------------------------------------------
def test_probe_separates_separable_classes():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 5
    y = torch.arange(200) % 4
    x = centres[y] + torch.randn(200, 16, generator=gen)
    assert Q.probe(x[:150], y[:150], x[150:], y[150:], 4, seed=0) == 1.0
    accuracy, l2 = Q.probe_cv(x[:150], y[:150], x[150:], y[150:], 4, seed=0)
    assert accuracy == 1.0 and l2 == max(Q.PROBE_L2)       # separable: ties go to the strongest L2
    assert Q.probe_cv(x[:150], y[:150], x[150:], y[150:], 4, seed=0) == (accuracy, l2)   # deterministic


def test_cross_validated_probe_regularises_noise_features():
    """Few examples, a weak signal in 3 features and 200 of pure noise: cross-validation
    picks an L2 stronger than the weakest, and the read-out still finds the signal."""
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(120) % 3
    x = torch.cat([torch.nn.functional.one_hot(y, 3).float() * 2 + torch.randn(120, 3, generator=gen),
                   torch.randn(120, 200, generator=gen)], 1)
    accuracy, l2 = Q.probe_cv(x[:90], y[:90], x[90:], y[90:], 3, seed=0)
    assert l2 > min(Q.PROBE_L2) and accuracy > 0.6


def test_pair_task_end_to_end_on_real_minilm_and_decoupled(capsys, minilm_dir, tmp_path):
    """A pair task through an original and a decoupled checkpoint: records, token types, agreement."""
    pytest.importorskip("tokenizers", reason="tokenizers not installed (test extra)")
    from bench.decouple import decoupled_from
    cfg, original = K.load_checkpoint(minilm_dir)
    dec_cfg = cfg.replace(n_blocks=3, n_div=2)
    decoupled = tmp_path / "decoupled"
    K.save_checkpoint(decoupled, dec_cfg, decoupled_from(dec_cfg, original),
                      extra_config={"decoupled_from": str(minilm_dir)})
    for name in T.TOKENIZER_FILES:
        if (minilm_dir / name).is_file():
            (decoupled / name).write_bytes((minilm_dir / name).read_bytes())
    task = write_task(tmp_path / "pairs", pairs=True)
    out = tmp_path / "q.jsonl"
    code, stdout, err = ran(capsys, ["--models", f"{minilm_dir},{decoupled}", "--tasks", "none", "--task-dir",
                                     str(task), "--seeds", "0,1", "--seq", "32", "--threads", "1", "--out", str(out)])
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and {r["method"] for r in rows} == {"probe", "probe_cv"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    dec = [r for r in rows if r["n_div"] == 2]
    assert len(dec) == 4 and 0.5 < dec[0]["cosine_agreement"] < 1.0 and dec[0]["reference"] == str(minilm_dir)
    assert "cosine vs original" in stdout
    ids, mask, types = Q.Encoder(minilm_dir, 32, 8).tokenizer(["a b"], ["c d"])
    assert types.tolist() == [[0, 0, 0, 0, 1, 1, 1]]


def test_report_from_records(tmp_path):
    """bench.quality_report: the paper-shaped table, the acceptance lines and both PNGs."""
    from bench import quality_report as R
    from bench.records import append_jsonl
    quality, decouple = tmp_path / "q.jsonl", tmp_path / "d.jsonl"
    for (nb, ndiv, name), acc in {(6, 1, "model"): 0.96, (3, 2, "dec-s0"): 0.955}.items():
        for task, method in (("bbc", "probe"), ("bbc", "finetune"), ("fortunes", "probe")):
            for seed in (0, 1):
                append_jsonl(quality, {"bench": "quality", "checkpoint": f"/x/{name}", "n_blocks": nb, "n_div": ndiv,
                                       "layers": 6, "task": task, "method": method, "seed": seed,
                                       "accuracy": acc - 0.01 * seed, "cosine_agreement": None if nb == 6 else 0.93,
                                       "classes": 5, "n_train": 10, "n_test": 5, "seq": 64, "env": {}})
    append_jsonl(decouple, {"bench": "decouple", "checkpoint": "checkpoints/dec-s0", "n_blocks": 3, "n_div": 2,
                            "seed": 0, "steps": 2, "batch": 2, "seq": 16, "time_s": 3.0, "threads": 1,
                            "cpu_s_this_process": 2.5, "resumed_from_step": 0, "loadavg_1m_start": 1.0,
                            "curve": [[1, 0.5, 1.0], [2, 0.4, 2.0]], "env": {"loadavg_1m": 1.2}})
    assert R.main(["--quality", str(quality), "--decouple", str(decouple), "--name", "q",
                   "--out-dir", str(tmp_path / "reports")]) == 0
    text = (tmp_path / "reports" / "q.md").read_text()
    assert "| dec-s0 | 3 | 2 | 95.00 (94.50-95.50, n=2) |" in text
    assert "bbc probe -0.50 points (within +-1)" in text and "CPU 2-2 s per run" in text
    assert (tmp_path / "reports" / "q-distillation.png").stat().st_size > 1000
    assert (tmp_path / "reports" / "q-accuracy.png").stat().st_size > 1000


@pytest.mark.mpi
@pytest.mark.slow
def test_accuracy_per_wire_dtype_under_mpi(comm, minilm_dir, tmp_path):
    """--strategy tp --wire-dtype fp32,int8 on every rank count: rank 0 scores both encodings
    (real MiniLM, a small pair task) and writes one record per wire dtype, method and seed."""
    pytest.importorskip("tokenizers", reason="tokenizers not installed (test extra)")
    task = write_task(tmp_path / "pairs", pairs=True)
    out = tmp_path / "q.jsonl"
    assert Q.main(["--models", str(minilm_dir), "--tasks", "none", "--task-dir", str(task), "--seeds", "0",
                   "--seq", "32", "--batch", "4", "--threads", "1", "--strategy", "tp", "--wire-dtype", "fp32,int8",
                   "--out", str(out), "--quiet"]) == 0
    if comm.rank != 0:
        assert not out.exists()   # only rank 0 scores and writes
        return
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["wire_dtype"], r["method"]) for r in rows) == [
        ("fp32", "probe"), ("fp32", "probe_cv"), ("int8", "probe"), ("int8", "probe_cv")]
    assert all(r["strategy"] == "tp" and r["world_size"] == comm.size and 0 <= r["accuracy"] <= 1 for r in rows)


def test_wire_dtype_needs_a_strategy(capsys, tmp_path):
    code, _, err = ran(capsys, ["--tasks", "none", "--task-dir", str(tmp_path), "--wire-dtype", "int8"])
    assert code == 2 and "--wire-dtype needs --strategy" in err
    code, _, err = ran(capsys, ["--tasks", "none", "--task-dir", str(tmp_path), "--strategy", "tp",
                                "--wire-dtype", "int4"])
    assert code == 2 and "--wire-dtype: wire_dtype must be one of" in err and "got 'int4'" in err


def test_strategy_that_cannot_run_a_model_is_refused_before_any_encoding(minilm_dir, tmp_path):
    """bp needs a decoupled checkpoint: one line, exit 2, no record (a singleton MPI run)."""
    import subprocess
    import sys
    task = write_task(tmp_path / "pairs", pairs=True)
    out = tmp_path / "q.jsonl"
    r = subprocess.run([sys.executable, "-m", "bench.quality", "--models", str(minilm_dir), "--tasks", "none",
                        "--task-dir", str(task), "--strategy", "bp", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "bp runs a decoupled model" in r.stderr and not out.exists()
    assert Q.runs_ranks(["--strategy", "tp"]) and Q.runs_ranks(["--strategy=bp"])
    assert not Q.runs_ranks(["--strategy", "serial"]) and not Q.runs_ranks(["--seeds", "0"])

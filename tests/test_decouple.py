"""Decoupled checkpoints (save, load, refuse), the sub-block init, and bench.decouple end to end.

The distillation test runs a few steps on a few sentences of real text with the real
MiniLM; the real runs (minutes) are for reports/quality-minilm.md, not for CI.
MPI part: a decoupled checkpoint folder runs under bp through the harness, equal to
its serial decoupled reference (mpiexec -n N ... -m mpi tests/test_decouple.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels as K
from bench import decouple as D
from conftest import padded_batch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ["The quick brown fox jumps over the lazy dog.", "Shares rose sharply after the bank cut rates.",
        "The striker scored twice in the second half.", "Parliament debated the new bill until midnight."]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


class Ran:
    """A finished in-process run of a tool's main under bench.cli.guard (no interpreter start-up)."""

    def __init__(self, capsys, main, argv):
        from bench.cli import guard
        with pytest.raises(SystemExit) as done:
            guard(main, list(argv))
        captured = capsys.readouterr()
        self.returncode, self.stdout, self.stderr = done.value.code, captured.out, captured.err


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def saved_tiny(folder: Path, n_blocks: int = 2, n_div: int = 4, seed: int = 4):
    cfg = K.preset("tiny", n_blocks=n_blocks, n_div=n_div)
    weights = K.init_weights(cfg, seed)
    K.save_checkpoint(folder, cfg, weights)
    return cfg, weights


# -- the checkpoint format -------------------------------------------------------------
def test_decoupled_checkpoint_round_trip(tmp_path):
    cfg, weights = saved_tiny(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["n_blocks"], config["n_div"]) == (2, 4)
    loaded_cfg, loaded = K.load_checkpoint(tmp_path)
    assert (loaded_cfg.n_blocks, loaded_cfg.n_div, loaded_cfg.layer_kinds()) == (2, 4, cfg.layer_kinds())
    assert all(torch.equal(a, b) for a, b in zip(K.state_dict(weights).values(), K.state_dict(loaded).values()))
    ids, mask = padded_batch(cfg.vocab)
    assert torch.equal(K.ReferenceModel(cfg, weights)(ids, mask), K.ReferenceModel(loaded_cfg, loaded)(ids, mask))


def test_sub_block_keys_are_documented_names(tmp_path):
    saved_tiny(tmp_path)
    from safetensors.torch import load_file
    state = load_file(str(tmp_path / "model.safetensors"))
    assert state["encoder.layer.0.sub_block.3.attention.self.query.weight"].shape == (64, 16)
    assert state["encoder.layer.0.sub_block.3.output.dense.weight"].shape == (16, 256)
    assert state["encoder.layer.1.attention.self.query.weight"].shape == (64, 64)  # boundary: original
    assert not any(k.startswith("encoder.layer.1.sub_block") for k in state)


def test_missing_sub_block_tensor_is_one_line_error(tmp_path):
    from safetensors.torch import load_file, save_file
    saved_tiny(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["encoder.layer.2.sub_block.1.intermediate.dense.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(K.ConfigError, match="sub_block.1.intermediate.dense.weight"):
        K.load_checkpoint(tmp_path)
    proc = run("bench.latency", "--model", str(tmp_path), "--strategies", "bp", "--iters", "1", "--warmup", "0",
               "--seq", "8", "--out", str(tmp_path / "r.jsonl"))
    assert_one_line_error(proc, "no tensor", "encoder.layer.2.sub_block.1.intermediate.dense.weight")


def test_wrong_shape_and_wrong_config_refused(tmp_path):
    saved_tiny(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_div": 2}))
    with pytest.raises(K.ConfigError, match="has shape"):
        K.load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_div": 5}))
    with pytest.raises(K.ConfigError, match="hidden % n_div"):
        K.config_from_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(K.ConfigError, match="decoupled"):
        K.load_checkpoint(tmp_path, K.preset("tiny"))


def test_harness_runs_decoupled_checkpoint_with_bp_only(tmp_path):
    from bench import harness as H
    from parallelism import UsageError
    cfg, weights = saved_tiny(tmp_path)
    model = H.resolve_model(str(tmp_path))
    assert model.config(True) == K.config_from_checkpoint(tmp_path) and not model.original.is_decoupled
    assert torch.equal(model.weights(True).layers[0][2].qkv_weight, weights.layers[0][2].qkv_weight)
    with pytest.raises(UsageError, match="only bp runs it"):
        model.config(False)
    proc = run("bench.latency", "--model", str(tmp_path), "--strategies", "tp", "--seq", "8",
               "--out", str(tmp_path / "r.jsonl"))
    assert_one_line_error(proc, "only bp runs it")


# -- init -------------------------------------------------------------------------------
def test_least_squares_init_is_exact_when_the_slice_determines_the_input():
    gen = torch.Generator().manual_seed(0)
    part = torch.randn(500, 4, generator=gen)
    mix = torch.randn(4, 4, generator=gen)
    inputs = torch.cat([part, part @ mix], dim=1)     # slice 1 is a linear function of slice 0
    weight, bias = torch.randn(6, 8, generator=gen), torch.randn(6, generator=gen)
    w, b = D.fit_from_slice(inputs, slice(0, 4), weight, bias, ridge=0.0)
    assert w.shape == (6, 4)
    torch.testing.assert_close(inputs[:, :4] @ w.T + b, inputs @ weight.T + bias, rtol=1e-4, atol=1e-4)


def test_slice_init_keeps_the_original_slices():
    cfg = K.preset("tiny", n_blocks=2, n_div=4)
    original = K.init_weights(K.preset("tiny"), seed=1)
    weights = D.decoupled_from(cfg, original)
    sub, full = weights.layers[0][2], original.layers[0]
    cols = slice(32, 48)
    assert torch.equal(sub.qkv_weight, full.qkv_weight[:, cols]) and torch.equal(sub.out_weight, full.out_weight[cols])
    assert torch.equal(sub.ln2_bias, full.ln2_bias[cols]) and torch.equal(sub.ffn_in_bias, full.ffn_in_bias)
    assert torch.equal(weights.layers[1].qkv_weight, original.layers[1].qkv_weight)  # boundary unchanged
    assert weights.embeddings is original.embeddings


# -- bench.decouple end to end (real MiniLM, a few steps) ------------------------------------
@pytest.fixture
def text_dir(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "a.txt").write_text("\n\n".join(TEXT))
    return folder


def distil(capsys, minilm_dir, text_dir, out, *extra):
    pytest.importorskip("tokenizers", reason="tokenizers not installed (test extra)")
    return Ran(capsys, D.main, ["--model", str(minilm_dir), "--nb", "3", "--ndiv", "2", "--corpus", "none",
               "--text", str(text_dir), "--steps", "4", "--batch", "2", "--seq", "16", "--threads", "1",
               "--save-every", "2", "--record", str(out.parent / "decouple.jsonl"), "--out", str(out), *extra])


def test_distillation_resumes_to_the_same_weights(capsys, minilm_dir, text_dir, tmp_path):
    straight = distil(capsys, minilm_dir, text_dir, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    assert "[4/4] loss" in straight.stdout and "ETA" in straight.stdout
    stopped = distil(capsys, minilm_dir, text_dir, tmp_path / "resumed", "--stop-after", "2")
    assert stopped.returncode == 0, stopped.stderr
    assert (tmp_path / "resumed" / D.STATE).is_file() and not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = distil(capsys, minilm_dir, text_dir, tmp_path / "resumed")
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    cfg, a = K.load_checkpoint(tmp_path / "straight")
    _, b = K.load_checkpoint(tmp_path / "resumed")
    assert (cfg.n_blocks, cfg.n_div) == (3, 2)
    for key, tensor in K.state_dict(a).items():
        assert torch.equal(tensor, K.state_dict(b)[key]), key
    assert (tmp_path / "straight" / "tokenizer.json").is_file()
    records = [json.loads(line) for line in (tmp_path / "decouple.jsonl").read_text().splitlines()]
    assert len(records) == 2 and len(records[0]["curve"]) == 4 and records[0]["final_loss"] > 0
    assert records[0]["final_loss"] < records[0]["initial_loss"]


def test_distillation_bad_inputs(capsys, minilm_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(distil(capsys, minilm_dir, tmp_path / "empty", tmp_path / "out"), "no text found")
    for nb, ndiv, message in (("3", "5", "hidden % n_div"), ("6", "2", "nothing to decouple")):
        ran = Ran(capsys, D.main, ["--model", str(minilm_dir), "--nb", nb, "--ndiv", ndiv, "--out", str(tmp_path / "o")])
        assert_one_line_error(ran, message)


# -- MPI: a decoupled checkpoint folder under bp -------------------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("boundary", ["replicate", "tp"])
def test_bp_on_decoupled_checkpoint_folder(tmp_path, boundary):
    from bench import harness as H
    from parallelism import STRATEGIES, Communicator, UsageError
    comm = Communicator()
    saved_tiny(tmp_path)  # every rank its own copy of the same seeded weights
    model = H.resolve_model(str(tmp_path))
    cfg, weights = model.config(True), model.weights(True)
    try:
        STRATEGIES["bp"].check(cfg, comm.size, boundary=boundary)
    except UsageError as err:
        pytest.skip(f"P={comm.size}: {err}")
    ids, mask = padded_batch(cfg.vocab)
    types = (torch.arange(ids.shape[1]) >= ids.shape[1] // 2).long().expand_as(ids)
    out = STRATEGIES["bp"](cfg, weights, comm, boundary=boundary).forward(ids, mask, types)
    torch.testing.assert_close(out, K.ReferenceModel(cfg, weights)(ids, mask, types), rtol=1e-5, atol=1e-5)

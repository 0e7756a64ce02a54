"""Metrics against independent references, and the evaluate path end to end with a stand-in extractor."""

import csv
import json
import logging
import socket

import numpy as np
import pytest
import torch

from conftest import tiny_config
from purrgan import checkpoint
from purrgan.cli import main
from purrgan.errors import PurrganError
from purrgan.metrics.fid import frechet_distance, gaussian_statistics
from purrgan.metrics.inception_score import inception_score
from purrgan.metrics.kid import kid
from purrgan.metrics.precision_recall import precision_recall
from purrgan.loop import train

STANDIN = "standin_features:make"


def _eigen_reference(mu1, s1, mu2, s2):
    # Tr((S1 S2)^(1/2)) is the sum of the square roots of the (real, non-negative) eigenvalues of S1 S2.
    eig = np.linalg.eigvals(s1.astype(np.float64) @ s2.astype(np.float64))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def test_frechet_distance_against_a_float64_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 16)), rng.normal(0.3, 1.5, size=(500, 16)) @ rng.normal(size=(16, 16))
    (mu1, s1), (mu2, s2) = gaussian_statistics(a), gaussian_statistics(b)
    torch.testing.assert_close(frechet_distance(mu1, s1, mu2, s2), _eigen_reference(mu1, s1, mu2, s2), rtol=1e-6, atol=1e-6)
    # Diagonal covariances have a closed form.
    d1, d2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    torch.testing.assert_close(frechet_distance(np.zeros(3), d1, np.ones(3), d2), 3 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0)


def test_frechet_distance_with_a_near_singular_covariance():
    rng = np.random.default_rng(1)
    low_rank = rng.normal(size=(10, 64)) @ rng.normal(size=(64, 64))  # 10 samples in 64-d: rank 9
    other = rng.normal(size=(10, 64)) @ rng.normal(size=(64, 64))
    (mu1, s1), (mu2, s2) = gaussian_statistics(low_rank), gaussian_statistics(other)
    value = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value)
    torch.testing.assert_close(value, _eigen_reference(mu1, s1, mu2, s2), rtol=1e-3, atol=1e-2)


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(2).normal(size=(2000, 32))
    mu, sigma = gaussian_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_kid_is_near_zero_for_one_distribution_and_larger_when_shifted():
    rng = np.random.default_rng(3)
    real = {"features": rng.normal(size=(1500, 32))}
    same = kid(real, {"features": rng.normal(size=(1500, 32))}, subsets=20, subset_size=500)
    shifted = kid(real, {"features": rng.normal(0.5, 1, size=(1500, 32))}, subsets=20, subset_size=500)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid"] > 20 * max(abs(same["kid"]), same["kid_std"])


def test_inception_score_bounds():
    confident = np.eye(10)[np.arange(1000) % 10] * 50  # sure of each image, classes evenly spread: IS = 10
    torch.testing.assert_close(inception_score({}, {"logits": confident})["is"], 10.0, rtol=1e-3, atol=1e-3)
    one_class = np.tile(np.eye(10)[0] * 50, (1000, 1))
    torch.testing.assert_close(inception_score({}, {"logits": one_class})["is"], 1.0, rtol=1e-3, atol=1e-3)


def test_precision_and_recall_of_overlapping_and_disjoint_sets():
    rng = np.random.default_rng(4)
    real = {"features": rng.normal(size=(800, 8))}
    same = precision_recall(real, {"features": rng.normal(size=(800, 8))})
    assert same["precision"] > 0.8 and same["recall"] > 0.8
    far = precision_recall(real, {"features": rng.normal(50, 1, size=(800, 8))})
    assert far["precision"] == 0 and far["recall"] == 0
    narrow = precision_recall(real, {"features": rng.normal(0, 0.1, size=(800, 8))})  # collapsed: precise, low recall
    assert narrow["precision"] > 0.9 and narrow["recall"] < 0.3


def test_evaluate_a_run_end_to_end_with_the_cache_hit_on_the_second_call(trained_run, capsys, caplog):
    args = ["evaluate", str(trained_run), "--feature-extractor", STANDIN, "--num", "300", "--device", "cpu"]
    assert main(args) == 0
    table = capsys.readouterr().out
    for name in ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall"):
        assert name in table
    record = json.loads((trained_run / "metrics.json").read_text())
    assert record["fid"] > 0 and record["step"] == 300 and record["extractor"] == "standin"
    with caplog.at_level(logging.INFO):
        assert main(args + ["--metrics", "fid"]) == 0
    assert "using cached reference statistics" in caplog.text
    assert json.loads((trained_run / "metrics.json").read_text())["fid"] == pytest.approx(record["fid"])
    assert main(["evaluate", str(trained_run), "--metrics", "fid,bogus", "--feature-extractor", STANDIN]) == 2
    assert main(["evaluate", str(trained_run), "--split", "val", "--feature-extractor", STANDIN]) == 2
    assert "--split val needs a held-out part" in capsys.readouterr().err


def test_evaluate_two_folders(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(5)
    for name, shift in (("a", 0), ("b", 0), ("c", 120)):
        (tmp_path / name).mkdir()
        for i in range(40):
            Image.fromarray(np.clip(rng.normal(100 + shift, 30, (32, 32, 3)), 0, 255).astype(np.uint8)).save(tmp_path / name / f"{i}.png")
    results = {}
    for other in ("b", "c"):
        assert main(["evaluate", "--real", str(tmp_path / "a"), "--fake", str(tmp_path / other), "--metrics", "fid",
                     "--feature-extractor", STANDIN, "--size", "32"]) == 0
        results[other] = float(capsys.readouterr().out.split()[1])
    assert results["c"] > 10 * results["b"]


def test_training_evaluates_as_it_goes_and_keeps_the_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(train__steps=60, train__eval_every=20, train__eval_num=200, train__feature_extractor=STANDIN,
                      train__eval_metrics="fid,kid"), run)
    with open(run / "eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [20, 40, 60] and all(float(r["fid"]) > 0 for r in rows)
    best = min(rows, key=lambda r: float(r["fid"]))
    state = checkpoint.load(run / "checkpoints" / "best.safetensors")
    assert state["step"] == int(best["step"])
    assert state["best_fid"] == pytest.approx(float(best["fid"]), rel=1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("metrics/fid")] == [20, 40, 60]


def test_the_standard_inception_weights_layout_loads(tmp_path):
    import torchvision

    from purrgan.metrics.features import InceptionExtractor

    # pytorch-fid loads the same weights file into torchvision's Inception-v3 (1008 classes, no aux head),
    # so its state-dict names and shapes are the standard ones; fill them with random values.
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3) and state["fc.weight"].shape == (1008, 2048)
    assert "Mixed_7c.branch3x3dbl_3b.conv.weight" in state
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    extractor = InceptionExtractor(str(path))
    out = extractor(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)


def test_missing_weights_offline_and_a_planted_pickle(tmp_path, monkeypatch, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr("purrgan.metrics.features.INCEPTION_URL", f"http://127.0.0.1:{port}/weights.pth")
    monkeypatch.setenv("PURRGAN_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("PURRGAN_INCEPTION", raising=False)
    assert main(["evaluate", "--real", str(tmp_path), "--fake", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "FID Inception weights are missing" in err and str(tmp_path / "cache" / "inception") in err
    assert "--inception-weights PATH" in err and len(err.splitlines()) == 1

    class Exploit:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    import pickle

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"fc.weight": Exploit()}))
    with pytest.raises(PurrganError, match="is not a plain PyTorch weights file"):
        from purrgan.metrics.features import inception_weights
        inception_weights(str(evil))
    assert not (tmp_path / "pwned").exists()


def test_streamed_feature_statistics_equal_torch_fidelitys_over_all_images():
    import numpy as np

    from purrgan.metrics.features import FeatureStats
    from purrgan.metrics.fid import gaussian_statistics

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3000, 24, generator=generator, dtype=torch.float64) * 3 + 50  # far from 0: no cancellation
    stats = FeatureStats(keep=1000)
    for chunk in features.split(128):  # as batches arrive
        stats.add({"features": chunk, "logits": chunk[:, :5]})
    result = stats.result()
    mu, sigma = gaussian_statistics(features.numpy())
    np.testing.assert_allclose(result["mu"], mu, rtol=1e-12)
    np.testing.assert_allclose(result["sigma"], sigma, rtol=1e-9, atol=1e-9)
    assert int(result["count"]) == 3000
    np.testing.assert_array_equal(result["features"], features[:1000].numpy())  # the first rows, for KID and P/R
    np.testing.assert_array_equal(result["logits"], features[:1000, :5].numpy())


def test_a_feature_extractor_may_return_a_plain_tensor_and_anything_else_is_one_line(tmp_path, monkeypatch, capsys, caplog):
    import sys
    import types

    from PIL import Image

    from purrgan.metrics.evaluate import evaluate_paths
    from purrgan.metrics.features import load_extractor

    module = types.ModuleType("my_features")
    module.pooled = lambda: (lambda images: torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1))
    module.text = lambda: (lambda images: "not features")
    module.broken = lambda: (lambda images: 1 / 0)
    monkeypatch.setitem(sys.modules, "my_features", module)
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    results = evaluate_paths(str(folder), str(folder), ["fid", "kid"], load_extractor("my_features:pooled"))
    assert results["fid"] < 1e-6  # a set against itself, through a plain (N, 48) tensor
    # evaluate's default metrics leave out what the extractor cannot give (the Inception Score needs logits), and say so
    with caplog.at_level(logging.INFO):
        assert main(["evaluate", "--real", str(folder), "--fake", str(folder), "--feature-extractor", "my_features:pooled"]) == 0
    printed = capsys.readouterr().out
    assert "fid" in printed and "kid" in printed and "precision" in printed and "\nis " not in "\n" + printed
    assert "leaving out the Inception Score" in caplog.text
    for name, says in (("text", "returned str; return a \\(N, D\\) tensor"), ("broken", "failed on uint8 images .*ZeroDivisionError")):
        with pytest.raises(PurrganError, match=says):
            evaluate_paths(str(folder), str(folder), ["fid"], load_extractor(f"my_features:{name}"))

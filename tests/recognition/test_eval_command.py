"""Embedding eval sets and ``facesynth eval``: torch vs ONNX, batching, JSON/table output, exit codes."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_evalsets import encode, faces

from facesynth.cli import main
from facesynth.errors import ModelNotFoundError, UserInputError
from facesynth.recognition.embed import (
    batch_ranges,
    embed_eval_set,
    evaluate,
    load_model,
    onnx_embedder,
    torch_embedder,
)
from facesynth.recognition.evalsets import load_eval_set
from facesynth.recognition.verification import evaluate_raw


class TinyNet(torch.nn.Module):
    """A small recogniser-shaped net: [N,3,112,112] -> [N,16]; not symmetric, so flips differ."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=8, stride=8)
        self.fc = torch.nn.Linear(4 * 14 * 14, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def write_bin(path: Path, pairs: int, seed: int) -> None:
    """An eval .bin as insightface's build_eval_pack.py writes it; same pairs share a base face."""
    rng = np.random.default_rng(seed)
    base = faces(pairs, seed=seed)
    issame = [bool(s) for s in rng.random(pairs) < 0.5]
    bins = []
    for k in range(pairs):
        first = base[k]
        other = base[k] if issame[k] else base[(k + 1) % pairs]
        second = np.clip(other.astype(int) + rng.integers(-20, 20, other.shape), 0, 255).astype(np.uint8)
        bins += [encode(first), encode(second)]
    with path.open("wb") as f:
        pickle.dump((bins, issame), f, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.fixture(scope="session")
def eval_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    net = TinyNet().eval()
    onnx_path = root / "tiny.onnx"
    torch.onnx.export(
        net,
        torch.zeros(1, 3, 112, 112),
        str(onnx_path),
        input_names=["input"],
        output_names=["embedding"],
        dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    write_bin(root / "lfw.bin", 23, seed=1)  # 46 images: batches of 16 end with an overlapping one
    write_bin(root / "cfp_fp.bin", 12, seed=2)
    return {"onnx": onnx_path, "lfw": root / "lfw.bin", "cfp_fp": root / "cfp_fp.bin"}


def test_batch_ranges_cut_like_insightface() -> None:
    # insightface: ba=0; bb=min(ba+bs,n); data[bb-bs:bb]; keep the last bb-ba rows
    assert batch_ranges(46, 16) == [(0, 16, 0), (16, 32, 0), (30, 46, 2)]
    assert batch_ranges(32, 16) == [(0, 16, 0), (16, 32, 0)]
    assert batch_ranges(10, 16) == [(0, 10, 0)]


def test_embeddings_are_batch_independent_and_flip_the_width(eval_files: dict[str, Path]) -> None:
    evalset = load_eval_set(eval_files["lfw"])
    model = torch_embedder(TinyNet(), "cpu")
    original, flipped = embed_eval_set(model, evalset, batch_size=16)
    one_by_one = np.concatenate([model(_norm(evalset.image(i))[None]) for i in range(46)])
    assert np.allclose(original, one_by_one, atol=1e-5)
    mirrored = np.concatenate([model(_norm(evalset.image(i)[:, ::-1])[None]) for i in (0, 45)])
    assert np.allclose(flipped[[0, 45]], mirrored, atol=1e-5)
    assert not np.allclose(original, flipped, atol=1e-3)


def _norm(image: np.ndarray) -> np.ndarray:
    """insightface's input: ((x / 255) - 0.5) / 0.5, CHW float32."""
    return ((image.astype(np.float32).transpose(2, 0, 1) / 255) - 0.5) / 0.5


def test_onnx_equals_torch(eval_files: dict[str, Path]) -> None:
    sets = [load_eval_set(eval_files["lfw"]), load_eval_set(eval_files["cfp_fp"])]
    by_torch = evaluate(torch_embedder(TinyNet(), "cpu"), sets, batch_size=16)
    by_onnx = evaluate(onnx_embedder(eval_files["onnx"], "cpu"), sets, batch_size=16)
    for name in ("lfw", "cfp_fp"):
        assert by_onnx[name].accuracy == by_torch[name].accuracy
        assert by_onnx[name].fold_thresholds == by_torch[name].fold_thresholds
        assert by_onnx[name].xnorm == pytest.approx(by_torch[name].xnorm, rel=1e-5)
    # decoding once (for repeated evaluations) changes nothing
    decoded = evaluate(torch_embedder(TinyNet(), "cpu"), [s.decoded() for s in sets], batch_size=16)
    assert decoded == by_torch
    # and the pieces compose: evaluate = embed_eval_set + evaluate_raw
    original, flipped = embed_eval_set(torch_embedder(TinyNet(), "cpu"), sets[0], batch_size=16)
    assert evaluate_raw(original, flipped, sets[0].issame) == by_torch["lfw"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facesynth.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_json(eval_files: dict[str, Path]) -> None:
    common = ["--bin", str(eval_files["lfw"]), "--bin", str(eval_files["cfp_fp"]), "--batch-size", "16"]
    result = run_cli("eval", str(eval_files["onnx"]), *common, "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expected = evaluate(
        onnx_embedder(eval_files["onnx"], "cpu"),
        [load_eval_set(eval_files["lfw"]), load_eval_set(eval_files["cfp_fp"])],
        batch_size=16,
    )
    assert set(report["sets"]) == {"lfw", "cfp_fp"}
    for name, r in expected.items():
        assert report["sets"][name]["accuracy"] == r.accuracy
        assert report["sets"][name]["val"] == r.val
    assert report["average"] == pytest.approx((expected["lfw"].accuracy + expected["cfp_fp"].accuracy) / 2)
    assert report["five_set_average"] is None


def test_cli_table(eval_files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    common = ["--bin", str(eval_files["lfw"]), "--bin", str(eval_files["cfp_fp"]), "--batch-size", "16"]
    assert main(["eval", str(eval_files["onnx"]), *common]) == 0
    out, err = capsys.readouterr()
    expected = evaluate(onnx_embedder(eval_files["onnx"], "cpu"), [load_eval_set(eval_files["lfw"])], 16)[
        "lfw"
    ]
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["set", "pairs", "accuracy"]
    lfw_row = next(line for line in lines if line.startswith("lfw"))
    assert lfw_row.split()[1:3] == ["23", f"{100 * expected.accuracy:.2f}"]
    assert lines[-1].startswith("average")
    assert "embedding lfw" in err  # the progress bar


def test_cli_exit_codes(eval_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def exit_code(*args: str) -> tuple[int, str]:
        try:
            code = main(["eval", *args])
        except SystemExit as exc:  # argparse
            code = exc.code
        return code, capsys.readouterr().err

    code, err = exit_code(str(tmp_path / "nope.onnx"), "--bin", str(eval_files["lfw"]))
    assert code == 2 and "not found" in err
    code, err = exit_code(str(eval_files["onnx"]))
    assert code == 2 and "--bin" in err
    code, err = exit_code(str(eval_files["onnx"]), "--bin", str(tmp_path / "lfw.bin"))
    assert code == 2 and "where-to-get-the-eval-sets" in err
    pth = tmp_path / "backbone.pth"
    torch.save(TinyNet().state_dict(), pth)
    code, err = exit_code(str(pth), "--bin", str(eval_files["lfw"]))
    assert code == 2 and "--arch" in err
    code, err = exit_code(
        str(eval_files["onnx"]), "--bin", str(eval_files["lfw"]), "--bin", str(eval_files["lfw"])
    )
    assert code == 2 and "share a name" in err


def test_model_forms_refused_with_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="neither a facesynth train run"):
        load_model(tmp_path)
    (tmp_path / "train.yaml").write_text("model: {backbone: r18}\n")
    with pytest.raises(ModelNotFoundError, match="model.safetensors"):
        load_model(tmp_path)

    class Exploit:
        def __reduce__(self):
            return (cv2.imwrite, (str(tmp_path / "pwned.png"), np.zeros((2, 2), np.uint8)))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"fc.weight": Exploit()}, protocol=2))
    with pytest.raises(UserInputError, match="loaded safely"):
        load_model(evil, arch="r18")
    assert not (tmp_path / "pwned.png").exists()


def tiny_iresnet() -> torch.nn.Module:
    from facesynth.recognition.iresnet import iresnet

    torch.manual_seed(0)
    model = iresnet("r18", num_features=16, width=8, layers=(1, 1, 1, 1)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.slow
def test_train_run_folder_equals_its_onnx_export(eval_files: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = tiny_iresnet()
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.yaml").write_text(
        "name: tiny\nmodel:\n  backbone: r18\n  embedding_size: 16\n  dropout: 0.0\n  width: 8\n  layers: [1, 1, 1, 1]\n"
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 112, 112),
        str(run / "model.onnx"),
        input_names=["input"],
        output_names=["embedding"],
        dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    sets = [load_eval_set(eval_files["lfw"])]
    by_run = evaluate(load_model(run, device="cpu"), sets, batch_size=16)["lfw"]
    by_onnx = evaluate(load_model(run / "model.onnx", device="cpu"), sets, batch_size=16)["lfw"]
    assert by_run.accuracy == by_onnx.accuracy and by_run.fold_thresholds == by_onnx.fold_thresholds
    assert by_run.xnorm == pytest.approx(by_onnx.xnorm, rel=1e-4)
    original, _ = embed_eval_set(load_model(run, device="cpu"), sets[0], batch_size=16)
    with torch.no_grad():
        direct = model(torch.from_numpy(_norm(sets[0].image(3))[None])).numpy()
    assert np.allclose(original[3], direct[0], atol=1e-5)


@pytest.mark.slow
def test_arcface_torch_backbone_file_loads_strictly(tmp_path: Path) -> None:
    from facesynth.recognition.embed import load_backbone_file
    from facesynth.recognition.iresnet import iresnet

    torch.manual_seed(1)
    published = iresnet("r18")  # arcface_torch saves backbone.state_dict() as model.pt
    torch.save(published.state_dict(), tmp_path / "model.pt")
    loaded = load_backbone_file(tmp_path / "model.pt", "r18")
    for key, value in published.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(UserInputError, match="does not hold a --arch r34 state dict"):
        load_backbone_file(tmp_path / "model.pt", "r34")
    torch.save(tiny_iresnet().state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(UserInputError, match="does not hold a --arch r18 state dict"):
        load_backbone_file(tmp_path / "tiny.pt", "r18")


@pytest.mark.slow
def test_cli_five_sets_and_a_pairs_list(eval_files: dict[str, Path], tmp_path: Path, capsys) -> None:
    paths = []
    for seed, name in enumerate(("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")):
        write_bin(tmp_path / f"{name}.bin", 10, seed=10 + seed)
        paths += ["--bin", str(tmp_path / f"{name}.bin")]
    assert main(["eval", str(eval_files["onnx"]), *paths, "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    accuracies = [report["sets"][n]["accuracy"] for n in ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")]
    assert report["five_set_average"] == pytest.approx(np.mean(accuracies))
    assert main(["eval", str(eval_files["onnx"]), *paths, "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("five-set avg")

    # the same pairs as a pairs list of PNG files give the same result as their .bin (lossless images)
    evalset = load_eval_set(tmp_path / "lfw.bin")
    lines = []
    for i in range(len(evalset.images)):
        cv2.imwrite(str(tmp_path / f"{i}.png"), cv2.cvtColor(evalset.image(i), cv2.COLOR_RGB2BGR))
    for k, same in enumerate(evalset.issame):
        lines.append(f"{2 * k}.png {2 * k + 1}.png {int(same)}")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    assert (
        main(
            ["eval", str(eval_files["onnx"]), "--bin", str(tmp_path / "pairs.txt"), "--no-progress", "--json"]
        )
        == 0
    )
    from_list = json.loads(capsys.readouterr().out)["sets"]["pairs"]
    assert from_list["accuracy"] == report["sets"]["lfw"]["accuracy"]
    assert from_list["xnorm"] == pytest.approx(report["sets"]["lfw"]["xnorm"], rel=1e-6)


def test_onnx_graph_that_normalises_inside_gets_raw_pixels(
    eval_files: dict[str, Path], tmp_path: Path
) -> None:
    import onnx

    class RawInput(torch.nn.Module):  # an MXNet-style export: (x - 127.5) * (1 / 127.5) inside the graph
        def __init__(self) -> None:
            super().__init__()
            self.net = TinyNet()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - 127.5) * (1 / 127.5))

    path = tmp_path / "mxnet_style.onnx"
    torch.onnx.export(
        RawInput().eval(),
        torch.zeros(1, 3, 112, 112),
        str(path),
        input_names=["data"],
        dynamic_axes={"data": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    graph = onnx.load(str(path))
    first = [node for node in graph.graph.node[:8] if node.op_type in ("Sub", "Mul")]
    assert sorted(node.op_type for node in first) == ["Mul", "Sub"]
    for index, node in enumerate(first):  # MXNet's converter names them _minus0 / _mul0
        node.name = f"_{'minus' if node.op_type == 'Sub' else 'mul'}{index}"
    onnx.save(graph, str(path))
    sets = [load_eval_set(eval_files["lfw"])]
    raw = evaluate(load_model(path, device="cpu"), sets, batch_size=16)["lfw"]
    reference = evaluate(torch_embedder(TinyNet(), "cpu"), sets, batch_size=16)["lfw"]
    assert raw.accuracy == reference.accuracy
    assert raw.xnorm == pytest.approx(reference.xnorm, rel=1e-4)


def test_validator_for_training_loops(eval_files: dict[str, Path]) -> None:
    from facesynth.recognition.embed import verification_validator

    validate = verification_validator([eval_files["lfw"], eval_files["cfp_fp"]], batch_size=16)
    net = TinyNet().train()
    metrics = validate(net)
    assert net.training  # the loop's mode is restored
    expected = evaluate(
        torch_embedder(TinyNet(), "cpu"), [load_eval_set(eval_files[n]) for n in ("lfw", "cfp_fp")], 16
    )
    assert metrics["lfw_acc"] == expected["lfw"].accuracy and metrics["cfp_fp_val"] == expected["cfp_fp"].val
    assert metrics["avg_acc"] == pytest.approx((expected["lfw"].accuracy + expected["cfp_fp"].accuracy) / 2)

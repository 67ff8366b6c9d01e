"""Reading the authors' checkpoints: safety first, then faithful conversion."""

import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from dns_tf.convert import (CheckpointFormatError, CheckpointMismatchError, UnsafeCheckpointError,
                            detect_kind, load_network, load_official, load_torch_file,
                            model_from_state_dict, read_checkpoint)
from dns_tf.convert.official import split_checkpoint
from pickle_exploit import ShellExploit


def _torch_style_zip(path, payload: bytes, top="archive"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/data.pkl", payload)
        archive.writestr(f"{top}/byteorder", "little")
        archive.writestr(f"{top}/version", "3\n")


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "evil.pth"
    _torch_style_zip(checkpoint, pickle.dumps({"model": ShellExploit(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system"):
        load_torch_file(checkpoint)
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path):
    checkpoint = tmp_path / "numpy_global.pth"
    _torch_style_zip(checkpoint, pickle.dumps({"x": np.zeros(2)}))
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        load_torch_file(checkpoint)


def test_legacy_and_missing_files_get_clear_errors(tmp_path):
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointFormatError, match="not a zip-format"):
        load_torch_file(legacy)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_torch_file(tmp_path / "missing.pth")


def test_loading_never_imports_torch(checkpoints):
    code = ("import sys\n"
            "from dns_tf.convert import load_official\n"
            f"for name in {sorted(p.name for p in checkpoints.glob('*.pth'))!r}:\n"
            f"    load_official({str(checkpoints)!r} + '/' + name)\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), 'torch'\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("name, kind", [
    ("fg_att_student.pth", "fine_student"), ("fg_bin_student.pth", "fine_student"),
    ("fg_none_student.pth", "fine_student"), ("cg_student.pth", "coarse_student"),
    ("selector.pth", "selector"), ("visil_teacher.pth", "teacher"),
    ("itq_resnet50W.pth", "itq"), ("pca_resnet50.npz", "pca")])
def test_kind_detected_from_keys(checkpoints, name, kind):
    state, _ = split_checkpoint(read_checkpoint(checkpoints / name))
    assert detect_kind(state) == kind


def test_training_checkpoint_contents(checkpoints):
    checkpoint = load_torch_file(checkpoints / "fg_att_student.pth")
    assert set(checkpoint) == {"model", "optimizer", "global_step", "args"}
    assert checkpoint["args"].attention is True
    assert checkpoint["model"]["attention.context_vector.weight"].dtype == np.float32


def test_itq_and_pca_files(checkpoints):
    projection = load_official(checkpoints / "itq_resnet50W.pth")
    assert projection.shape == (512, 512) and projection.dtype == np.float32
    pca = load_official(checkpoints / "pca_resnet50.npz")
    assert pca["mean"].shape == (3840,) and pca["V"].shape == (3840, 3840)


def test_mismatched_shape_names_key_and_shapes(checkpoints):
    state, args = split_checkpoint(read_checkpoint(checkpoints / "fg_att_student.pth"))
    state = dict(state)
    state["visil_head.conv2.weight"] = np.zeros((64, 16, 3, 3), np.float32)
    with pytest.raises(CheckpointMismatchError,
                       match=r"visil_head\.conv2\.weight.*\(64, 16, 3, 3\).*\(3, 3, 32, 64\)"):
        model_from_state_dict(state, args)


def test_unexpected_keys_are_reported(checkpoints):
    state, args = split_checkpoint(read_checkpoint(checkpoints / "selector.pth"))
    state = {**state, "mlp.extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(CheckpointMismatchError, match="unexpected keys.*mlp.extra.weight"):
        model_from_state_dict(state, args)


def test_coarse_sizes_inferred_and_heads_from_args(checkpoints):
    state, args = split_checkpoint(read_checkpoint(checkpoints / "cg_student.pth"))
    model = model_from_state_dict(state, {**args, "transformer_heads": 4})
    attention = model.encoder_layers[0].self_attention
    assert attention.num_heads == 4 and model.netvlad_outdims == 128
    with pytest.raises(CheckpointMismatchError, match="not divisible by 3 heads"):
        model_from_state_dict(state, {"transformer_heads": 3})


def test_load_network_checks_the_kind(checkpoints, tmp_path):
    from dns_tf.models import CoarseGrainedStudent, SelectorNetwork
    with pytest.raises(ValueError, match="--coarse: .*selector.pth holds a SelectorNetwork, "
                                         "expected a CoarseGrainedStudent"):
        load_network(checkpoints / "selector.pth", CoarseGrainedStudent, "--coarse")
    with pytest.raises(ValueError, match="PCA/ITQ arrays"):
        load_network(checkpoints / "pca_resnet50.npz", SelectorNetwork, "--selector")
    with pytest.raises(FileNotFoundError, match="--selector: .*missing.pth"):
        load_network(checkpoints / "missing.pth", SelectorNetwork, "--selector")
    # Without a class any DnS network will do, from either format; arrays still will not.
    selector = load_network(checkpoints / "selector.pth")
    selector.save(tmp_path / "selector.keras")
    assert isinstance(load_network(tmp_path / "selector.keras", what="--model"), SelectorNetwork)
    with pytest.raises(ValueError, match="--model: .*itq_resnet50W.pth holds a "
                                         "PCA/ITQ arrays, expected a CoarseGrainedStudent or"):
        load_network(checkpoints / "itq_resnet50W.pth", what="--model")


def test_convert_cli_writes_a_loadable_keras_file(checkpoints, parity, tmp_path):
    from dns_tf.cli import main
    from dns_tf.models import load_model

    output = tmp_path / "fg_att.keras"
    assert main(["convert", str(checkpoints / "fg_att_student.pth"), str(output)]) == 0
    student = load_model(output)
    index = student.index_video(parity["inputs.videos"], parity["inputs.masks"])
    assert np.max(np.abs(np.asarray(index) - parity["fg_att.index"])) <= 1e-5

    itq = tmp_path / "itq.npz"
    assert main(["convert", str(checkpoints / "itq_resnet50W.pth"), str(itq)]) == 0
    assert np.load(itq)["proj"].shape == (512, 512)

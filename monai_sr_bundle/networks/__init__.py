"""SR networks: (B, C, X, Y) low-resolution in, (B, C, scale*X, scale*Y) out. ``_target_`` in the bundle
configs is the registry."""

from monai_sr_bundle.networks.adsr import ADSR
from monai_sr_bundle.networks.bicubic import Bicubic
from monai_sr_bundle.networks.ldm import LDM
from monai_sr_bundle.networks.lrunet import LRUNet
from monai_sr_bundle.networks.rrdb import RRDBNet
from monai_sr_bundle.networks.runet import NoiseAwareRUNet, RUNet
from monai_sr_bundle.networks.sr3 import SR3
from monai_sr_bundle.networks.srcnn import SRCNN
from monai_sr_bundle.networks.srgan_vdsr import SRGANVDSR
from monai_sr_bundle.networks.srresnet import SRResNet
from monai_sr_bundle.networks.srvgg import SRVGGNetCompact
from monai_sr_bundle.networks.vdsr import VDSR

__all__ = [
    "ADSR",
    "Bicubic",
    "LDM",
    "LRUNet",
    "NoiseAwareRUNet",
    "RRDBNet",
    "RUNet",
    "SR3",
    "SRCNN",
    "SRGANVDSR",
    "SRResNet",
    "SRVGGNetCompact",
    "VDSR",
]

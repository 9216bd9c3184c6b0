from lib.configs.super_resolution import SuperResolution

__all__ = ["SuperResolution"]

from lib.infers.super_resolution import SuperResolutionInfer

__all__ = ["SuperResolutionInfer"]

from lib.trainers.super_resolution import SuperResolutionTrainer

__all__ = ["SuperResolutionTrainer"]

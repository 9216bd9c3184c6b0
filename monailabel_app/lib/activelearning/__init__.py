from lib.activelearning.boxes_first import ImagesWithoutBoxesFirst

__all__ = ["ImagesWithoutBoxesFirst"]

"""The shared video layer: sources, decoding (decord, PyAV fallback), clip planning, preprocessing built
once from the backbone's spec, clip-consistent pixel augmentation, a pixel dataset, synthetic videos.

Used by stage one (decode workers), the end-to-end path (``dataset.VideoClipDataset``) and prediction.
Imports neither stage and no model code: a backbone's spec (a dict) is all it needs to preprocess.
"""

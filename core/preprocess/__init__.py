"""A1111's Preprocess tab (split, focal crop, auto crop, flips, captions) and the WD14 ONNX tagger.

``core.preprocess.pipeline.preprocess_folder`` is the entry point; the tagger
imports onnxruntime only when one is loaded.
"""

"""The shipped PedQ-NET models (ONNX + manifests), installed as ``pedq_deploy._models``.

Empty until trained models are committed (issue 6): ``pedq-run`` then falls back to TKD.
"""

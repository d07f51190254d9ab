"""The demo code location: classify a few days of short texts through a Batch API.

``batch_pipelines.demo.definitions`` holds the ``defs`` that ``workspace.yaml`` loads (``make
run``); ``batch_pipelines.demo.smoke`` runs the same pipeline headlessly (``make smoke``).
"""

"""``make results``: rerun every preset's study at a published scale, then write RESULTS.md.

The scale is one YAML file (``results/scale.yaml``; ``results/scale-ci.yaml`` for the tiny run
the tests make) of overrides per study (:mod:`.scale`); the studies are presets with the search
block a claim needs (:mod:`.studies`); each section of RESULTS.md and its figures are computed
from the MLflow store through :mod:`orchestrator.results` (:mod:`.sections_quant`,
:mod:`.sections_scale`), and kept on the study's parent run as artifacts (:mod:`.book`).
"""

"""Train, calibrate and describe the classifier: ``python -m core train --data DIR [--data DIR] --out models/``.

Modules: :mod:`.config` (settings), :mod:`.data` (reading, twin groups, splits, weights), :mod:`.augment`,
:mod:`.lesions`, :mod:`.network` (model, loss, batches), :mod:`.calibration`, :mod:`.checkpoint` (resuming),
:mod:`.probes` (validation figures), :mod:`.gate_fit` and :mod:`.run` (the whole run). Inputs go through exactly
the inference path (:mod:`core.imaging`, :mod:`core.model.roi`, :mod:`core.model.preprocess`).
"""

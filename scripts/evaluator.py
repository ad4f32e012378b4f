"""Evaluator that runs MetaSeg's fit-then-decode and also exposes the fitted reconstruction."""

from __future__ import annotations

import time

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from .inferer import MetaSegInferer

__all__ = ["MetaSegEvaluator", "RECON_KEY", "FIT_TIME_KEY"]

RECON_KEY = "recon"
FIT_TIME_KEY = "fit_time"


class MetaSegEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` whose inferer is a :class:`MetaSegInferer`.

    Besides ``image``, ``label`` and ``pred`` (class logits), each iteration's output holds the fitted intensity
    reconstruction under ``"recon"`` (for PSNR) and the seconds spent on fit-then-decode per image under
    ``"fit_time"``. All arguments are those of ``monai.engines.SupervisedEvaluator``.
    """

    def _iteration(self, engine: MetaSegEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if not isinstance(engine.inferer, MetaSegInferer):
            raise TypeError(f"MetaSegEvaluator needs a MetaSegInferer, got {type(engine.inferer).__name__}.")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[
            :2
        ]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        start = time.perf_counter()
        with engine.mode(engine.network):
            pred, recon = engine.inferer.fit_decode(inputs, engine.network)
        seconds = (time.perf_counter() - start) / max(inputs.shape[0], 1)
        engine.state.output.update(
            {Keys.PRED: pred, RECON_KEY: recon, FIT_TIME_KEY: torch.full((inputs.shape[0],), seconds)}
        )
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

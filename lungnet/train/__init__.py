"""Fitting a model: the LightningModule (`module`), callbacks (`callbacks`, `divergence`, `resize_schedule`,
`history`), loggers (`loggers`), config checks before training (`checks`), training curves (`curves`) and the run
itself with its finish (`training`)."""

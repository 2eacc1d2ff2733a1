"""Scoring model outputs: metrics (`metrics`), statistics, calibration and the bootstrap (`stats`, `resample`), the
OOD gate (`ood`), referral reasons (`referral`), the one model-output loop and predictions table (`outputs`) and the
figures (`plots`)."""

"""A trained model as files, opened through one reader each: the checkpoint (`checkpoint`, every stored value checked
in `checkpoint_checks`), an ensemble (`ensemble`, `ensemble_manifest`), exported runtimes (`runtimes`) and the
decision record (`decision`, read and written by `decision_file`), the only carrier of thresholds, temperature,
conformal scores and the OOD gate."""

"""The LightningModule: one model, its loss, optimiser and metrics; nothing dataset-specific.

Everything it needs is stored as plain hyperparameters, so a checkpoint describes itself (model
name and options, labels, spec, data and preprocessing config) and loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from timm.data import Mixup

from lungnet.data.batch_augment import BatchAugment
from lungnet.data.preprocessing import logits_to_probs
from lungnet.data.transforms import Normalize
from lungnet.errors import ConfigError
from lungnet.scoring.metrics import mask_targets, metric_collection
from lungnet.scoring.outputs import logits_and_gate_inputs
from lungnet.train.finetune import build_model

log = logging.getLogger(__name__)


class LitClassifier(pl.LightningModule):
    """Chest X-ray classifier.

    Args:
        model: model options for `lungnet.train.finetune.build_model` (name, pretrained, weights, in_chans, ...).
        labels: class names in output order.
        multilabel: sigmoid/BCE (NaN-masked) instead of softmax/CE.
        optimizer: a torch.optim class and its arguments (``_target_``, ``lr``, ...; ``conf/optimizer/``).
        scheduler: a torch.optim.lr_scheduler class and its arguments (``conf/scheduler/``); None or empty: none.
            ``T_max: null`` is the epochs after the warm-up; ReduceLROnPlateau steps on ``val/loss``
            (``train/loss_epoch`` without a val split).
        backbone_lr_mult: discriminative learning rates: the backbone trains at ``lr * backbone_lr_mult``.
        warmup_epochs: linear warm-up from ``lr / 10`` over this many epochs, then the scheduler.
        label_smoothing: CE label smoothing.
        class_weights: per-class CE weights, or BCE ``pos_weight`` for multi-label.
        max_epochs: the epochs the schedule spans.
        mixup: timm ``Mixup`` options (``mixup_alpha``, ``cutmix_alpha``, ``prob``, ``switch_prob``); both alphas 0
            or None: off. Single-label only; ``train/acc`` is then measured on the mixed images.
        data: the data config (stored so the checkpoint can rebuild the data pipeline).
        extra: anything else to keep in the checkpoint (plain types).
    """

    def __init__(
        self,
        model: dict,
        labels: list[str],
        multilabel: bool = False,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        backbone_lr_mult: float = 1.0,
        warmup_epochs: int = 0,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        max_epochs: int = 10,
        mixup: dict | None = None,
        data: dict | None = None,
        extra: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # weights are loaded only when training starts from scratch; a checkpoint restores them anyway; from a lungnet
        # checkpoint (model.weights=<ckpt>) the report says which outputs it started (lungnet.train.finetune)
        self.model, self.weights_report = build_model(model, list(labels), (data or {}).get("source"))
        self.spec = self.model.spec
        self.hparams["spec"] = self.spec.to_dict()
        self.labels = list(labels)
        self.multilabel = multilabel
        self.channels_last = False  # `use_channels_last`
        self.keep_val_features = False  # set by `lungnet.train.val_outputs.ValidationOutputs` for a full pass
        self.plateau_monitor = "val/loss"  # training sets train/loss_epoch when the data has no val split
        self.mixer = build_mixer(mixup, len(labels), multilabel)
        self.normalize = Normalize(self.spec.mean, self.spec.std, self.spec.in_chans)
        extra = dict(extra or {})
        on_device = bool((data or {}).get("gpu_augment"))
        steps = dict(extra.get("augment") or {}).get("train")
        self.batch_augment = BatchAugment.from_steps(steps, int(extra.get("seed", 0))) if on_device else None
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        metrics = metric_collection(len(labels), multilabel)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.train_acc = metric_collection(len(labels), multilabel).clone(prefix="train/")

    def set_class_weights(self, weights: list[float] | None) -> None:
        """Sets loss weights from the data (kept in the checkpoint's and the loggers' hyperparameters)."""
        self.record(class_weights=weights)
        self.class_weights = torch.tensor(weights, dtype=torch.float32, device=self.device) if weights else None

    def record(self, **facts) -> None:
        """Adds facts known only once the data is set up to the hyperparameters: the checkpoint and the hparams
        every logger records at the start of training (Lightning logs a copy taken at ``save_hyperparameters``)."""
        self.save_hyperparameters({**self.hparams, **facts})

    def use_channels_last(self) -> None:
        """NHWC memory layout for the weights and every input (faster convolutions on tensor-core GPUs)."""
        self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def device_batch(self, batch):
        """``data.gpu_augment``: a uint8 training batch, already on the device, is augmented here, then every uint8
        batch is converted and normalised (the loader workers only resized or copied bytes). Lightning calls it
        after moving each batch (`lungnet.data.datamodule.LungDataModule.on_after_batch_transfer`); other batches
        pass through unchanged."""
        images = batch.get("image") if isinstance(batch, dict) else None
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
            return batch
        if self.training and self.batch_augment is not None:
            images = self.batch_augment(images, step=self.global_step)
        return {**batch, "image": self.normalize.batch(images)}

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid for multi-label, softmax otherwise (`lungnet.data.preprocessing.logits_to_probs`)."""
        return logits_to_probs(logits, self.multilabel)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CE (weights, label smoothing) or BCE-with-logits over known targets only.

        ``target`` holds class indices, or class probabilities under mixup (weighted CE then averages over the
        images rather than over the weights, as torch does for probability targets)."""
        logits = logits.float()
        if not self.multilabel:
            return F.cross_entropy(
                logits, target, weight=self.class_weights, label_smoothing=float(self.hparams.label_smoothing)
            )
        known = ~torch.isnan(target)
        if not known.any():
            return logits.sum() * 0.0
        pos_weight = self.class_weights.expand_as(logits)[known] if self.class_weights is not None else None
        return F.binary_cross_entropy_with_logits(logits[known], target[known], pos_weight=pos_weight)

    def _metric_target(self, target: torch.Tensor) -> torch.Tensor:
        return mask_targets(target) if self.multilabel else target

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, target = batch["image"], batch["target"]
        if self.mixer is not None:
            images, target = mix_batch(self.mixer, images, target)
        logits = self(images)
        loss = self.loss(logits, target)
        self.train_acc.update(self.probabilities(logits.float()).detach(), self._metric_target(batch["target"]))
        # the epoch mean is reduced across ranks lazily: keep it off the progress bar, which only rank 0 reads
        # (rank 0 alone would enter the all-reduce and DDP would hang); the bar shows the step loss instead
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(logits), sync_dist=True)
        self.log("loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return loss

    def on_train_epoch_end(self) -> None:
        values = self.train_acc.compute()
        # torchmetrics has already synced these across ranks in compute(): no second (lazy) reduction
        self.log_dict({k: v for k, v in values.items() if k in ("train/acc", "train/auroc")})
        self.train_acc.reset()

    def _eval_step(self, batch: dict, metrics, prefix: str, logits: torch.Tensor | None = None) -> None:
        logits = self(batch["image"]) if logits is None else logits
        loss = self.loss(logits, batch["target"])
        metrics.update(self.probabilities(logits.float()), self._metric_target(batch["target"]))
        self.log(f"{prefix}/loss", loss, on_epoch=True, batch_size=len(logits), sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> dict | None:
        """Val loss and metrics; with ``keep_val_features`` also returns the logits and the OOD gate's inputs
        (`lungnet.scoring.outputs.logits_and_gate_inputs`, as `model_outputs` computes them), which
        `lungnet.train.val_outputs.ValidationOutputs` keeps for the finish after training."""
        if not self.keep_val_features:
            self._eval_step(batch, self.val_metrics, "val")
            return None
        x = batch["image"]
        logits, gate = logits_and_gate_inputs(
            self.model, x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        )
        self._eval_step(batch, self.val_metrics, "val", logits)
        return {"logits": logits.detach(), "features": gate}

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)  # synced by torchmetrics
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.probabilities(self(batch["image"]).float())

    def param_groups(self) -> list[dict]:
        """Head at ``lr``; backbone at ``lr * backbone_lr_mult`` (discriminative learning rates)."""
        lr = float(self.hparams.optimizer["lr"])
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": lr, "name": "head"}]
        if backbone:
            groups.append({"params": backbone, "lr": lr * float(self.hparams.backbone_lr_mult), "name": "backbone"})
        return groups

    def configure_optimizers(self):
        if not (self.hparams.optimizer or {}).get("_target_"):
            raise ConfigError("No optimizer configured: give LitClassifier an optimizer config (conf/optimizer/)")
        optimizer = instantiate(dict(self.hparams.optimizer), _partial_=True)(self.param_groups())
        warm = int(self.hparams.warmup_epochs)
        scheduler = build_scheduler(self.hparams.scheduler, optimizer, max(1, int(self.hparams.max_epochs) - warm))
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.plateau_monitor}}
        if warm:
            ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warm)
            scheduler = (
                ramp
                if scheduler is None
                else torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, scheduler], milestones=[warm])
            )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def build_mixer(options: dict | None, num_classes: int, multilabel: bool) -> Mixup | None:
    """timm's ``Mixup`` for ``options`` (`LitClassifier`'s ``mixup``), or None when both alphas are 0.

    Label smoothing stays in the loss (``label_smoothing``), so the mixed targets are plain label mixtures.
    """
    options = dict(options or {})
    if not (options.get("mixup_alpha", 0) or options.get("cutmix_alpha", 0)):
        return None
    if multilabel:
        raise ConfigError("mixup.mixup_alpha / mixup.cutmix_alpha: mixup is for single-label data; set both to 0")
    return Mixup(**options, mode="batch", label_smoothing=0.0, num_classes=num_classes)


def mix_batch(mixer: Mixup, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixes a batch (images and class indices -> images and soft targets); timm pairs image i with image n-1-i,
    so an odd last image is left unmixed with its one-hot target."""
    soft = F.one_hot(target, mixer.num_classes).float()
    n = len(images) - len(images) % 2
    if n < 2:
        return images, soft
    mixed, mixed_soft = mixer(images[:n].clone(), target[:n])
    return torch.cat([mixed, images[n:]]), torch.cat([mixed_soft.float(), soft[n:]])


def build_scheduler(cfg: dict | None, optimizer: torch.optim.Optimizer, epochs: int):
    """The configured learning-rate scheduler for ``optimizer`` (None when ``cfg`` is empty).

    ``T_max: null`` (cosine) becomes ``epochs``, the epochs the schedule spans after the warm-up.
    """
    cfg = dict(cfg or {})
    if not cfg.get("_target_"):
        return None
    if "T_max" in cfg and cfg["T_max"] is None:
        cfg["T_max"] = epochs
    return instantiate(cfg, _partial_=True)(optimizer)

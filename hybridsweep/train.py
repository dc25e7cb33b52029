"""The training loop behind fine-tuning, baseline training and evaluation.

Batches come from decoded uint8 tensors and are augmented on the training device (see `hybridsweep.data`),
so the loop spends its time in the model, not in image decoding.
"""

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from hybridsweep.data import Dataset, eval_batches, steps_per_epoch, train_batches
from hybridsweep.errors import UserError


@dataclass(frozen=True)
class Accuracy:
    top1: float  # percent
    top5: float  # percent
    images: int


@dataclass(frozen=True)
class FitStats:
    steps: int
    images: int
    seconds: float
    final_loss: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the run stops instead of fine-tuning garbage."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name}: no CUDA device is available here; use device=cpu or device=auto")
    return device


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def evaluate(
    model: nn.Module,
    ds: Dataset,
    *,
    device: torch.device,
    batch_size: int = 500,
    channels_last: bool = True,
    amp: bool = True,
    desc: str = "evaluate",
) -> Accuracy:
    """Top-1 and top-5 accuracy (percent) on the test split."""
    # Moved outside inference mode: parameters converted inside it could never be trained again.
    model = _prepare(model, device, channels_last).eval()
    correct1 = correct5 = seen = 0
    k = min(5, len(ds.classes))
    batches = eval_batches(ds, batch_size, device=device, channels_last=channels_last)
    total = math.ceil(len(ds.test_y) / batch_size)
    with torch.inference_mode():
        for x, y in tqdm(batches, total=total, desc=desc, leave=False, unit="batch"):
            with _autocast(device, amp):
                logits = model(x)
            hits = logits.topk(k, dim=1).indices.eq(y[:, None])
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            seen += len(y)
    return Accuracy(top1=100.0 * correct1 / seen, top5=100.0 * correct5 / seen, images=seen)


def _loss(logits, y, teacher_logits, alpha: float, temperature: float):
    loss = F.cross_entropy(logits, y)
    if teacher_logits is None or alpha == 0:
        return loss
    soft = F.kl_div(
        F.log_softmax(logits / temperature, dim=1),
        F.log_softmax(teacher_logits.float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * loss + alpha * soft * temperature**2


def fit(
    model: nn.Module,
    ds: Dataset,
    recipe,
    *,
    device: torch.device,
    seed: int = 0,
    teacher: nn.Module | None = None,
    desc: str = "fine-tune",
    on_epoch_end=None,
) -> FitStats:
    """SGD with a per-step cosine schedule for `recipe.epochs` (capped at `recipe.max_steps` steps).

    `recipe` is a TrainConfig (or any object with its fields). `teacher` enables distillation with weight
    `recipe.distill`. `on_epoch_end(epoch, model)` may raise to stop early (the search's early-stop rule).
    """
    per_epoch = steps_per_epoch(ds, recipe.batch_size)
    if per_epoch == 0:
        raise UserError(
            f"finetune.batch_size={recipe.batch_size} is larger than the {len(ds.train_y)} training images; "
            "lower it or use more data"
        )
    total = recipe.epochs * per_epoch
    if recipe.max_steps is not None:
        total = min(total, recipe.max_steps)
    if total == 0:
        return FitStats(steps=0, images=0, seconds=0.0, final_loss=float("nan"))
    model = _prepare(model, device, recipe.channels_last).train()
    if teacher is not None and recipe.distill > 0:
        teacher = _prepare(teacher, device, recipe.channels_last).eval()
    else:
        teacher = None
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
        weight_decay=recipe.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    generator = torch.Generator(device=device).manual_seed(seed)
    step = images = 0
    loss_value = float("nan")
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    epoch = 0
    while step < total:
        model.train()
        for x, y in train_batches(
            ds, recipe.batch_size, device=device, generator=generator, channels_last=recipe.channels_last
        ):
            with _autocast(device, recipe.amp):
                logits = model(x)
                teacher_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                loss = _loss(logits.float(), y, teacher_logits, recipe.distill, recipe.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            images += len(y)
            if step % 10 == 0 or step == total:
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    bar.close()
                    raise TrainingDiverged(
                        f"{desc}: the loss became {loss_value} at step {step}; lower the learning rate "
                        f"(lr={recipe.lr}) or check the input normalisation (data.stats)"
                    )
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{images / elapsed:.0f}")
            bar.update(1)
            if step >= total:
                break
        epoch += 1
        if on_epoch_end is not None and step < total:
            on_epoch_end(epoch, model)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return FitStats(steps=step, images=images, seconds=time.perf_counter() - start, final_loss=loss_value)

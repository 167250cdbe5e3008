"""SAM-CLIP distillation losses (SAM-CLIP.md section 3): cosine distillation for the CLIP head (and, as an option,
relational distillation over the step's teacher embeddings); focal + dice against the SAM teacher's soft masks (and
optionally MSE on the IoU head) for the SAM head."""

import torch
import torch.nn.functional as F

from .recipe import LossWeights


def clip_distillation_loss(student_embeds: torch.Tensor, teacher_embeds: torch.Tensor) -> torch.Tensor:
    """Mean over images of `1 - cos(student, teacher)`; inputs `(batch, dim)`, normalised or not."""
    return (1 - F.cosine_similarity(student_embeds, teacher_embeds.to(student_embeds.dtype), dim=-1)).mean()


def relational_distillation_loss(
    student_embeds: torch.Tensor,
    teacher_embeds: torch.Tensor,
    temperature: float,
    bank: torch.Tensor | None = None,
) -> torch.Tensor:
    """SEED/CompRess-style relational distillation: the mean over rows of KL(teacher || student) between the softmax
    similarities (at `temperature`) of row i's teacher embedding and of its student embedding to every teacher
    embedding of the step, and to the `(m, dim)` teacher embeddings of `bank` (earlier steps') when given. Inputs
    `(n, dim)`, row i of both the same image or region, normalised or not."""
    # Cosine spends itself on the direction all embeddings share; class names are read from how an embedding sits
    # among the others, which is what this ranks.
    teacher = F.normalize(teacher_embeds.detach().to(student_embeds.dtype), dim=-1)
    student = F.normalize(student_embeds, dim=-1)
    anchors = teacher
    if bank is not None and len(bank):
        anchors = torch.cat([teacher, F.normalize(bank.detach().to(teacher), dim=-1)])
    target = (teacher @ anchors.T / temperature).log_softmax(dim=-1)
    predicted = (student @ anchors.T / temperature).log_softmax(dim=-1)
    return F.kl_div(predicted, target, log_target=True, reduction="batchmean")


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """SAM's (RetinaNet's) focal loss with soft `targets` in [0, 1], averaged over pixels then masks.

    `logits` and `targets` are `(..., height, width)`; every leading index is one mask."""
    probs = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1).mean()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss `1 - (2 |p t| + s) / (|p| + |t| + s)` per mask (`(..., height, width)`), averaged."""
    probs = logits.sigmoid().flatten(-2)
    targets = targets.flatten(-2)
    dice = (2 * (probs * targets).sum(-1) + smooth) / (probs.sum(-1) + targets.sum(-1) + smooth)
    return (1 - dice).mean()


def sam_distillation_loss(
    student_masks: torch.Tensor,
    teacher_masks: torch.Tensor,
    student_iou: torch.Tensor | None = None,
    teacher_iou: torch.Tensor | None = None,
    weights: LossWeights | None = None,
) -> dict[str, torch.Tensor]:
    """Focal + dice between student mask logits and soft targets `sigmoid(teacher logits)` (same prompts, same
    shape `(batch, prompts, masks, h, w)`), weighted as `weights` says (default `LossWeights()`: 20:1 as in SAM's
    training), plus `weights.iou_weight` x MSE between the IoU heads. Returns the terms `focal`, `dice`, `iou` and
    their weighted sum `loss`."""
    weights = weights or LossWeights()
    targets = teacher_masks.detach().to(student_masks.dtype).sigmoid()
    focal = sigmoid_focal_loss(student_masks, targets)
    dice = dice_loss(student_masks, targets)
    loss = weights.focal_weight * focal + weights.dice_weight * dice
    iou = student_masks.new_zeros(())
    if weights.iou_weight and student_iou is not None and teacher_iou is not None:
        iou = F.mse_loss(student_iou, teacher_iou.detach().to(student_iou.dtype))
        loss = loss + weights.iou_weight * iou
    return {"loss": loss, "focal": focal, "dice": dice, "iou": iou}

"""`SamClipDistillationTrainer`: SAM-CLIP's multi-stage distillation (SAM-CLIP.md sections 3-4) on the
`transformers.Trainer`.

The trainer wraps the student in `SamClipDistillationModule`, whose single forward runs the student's CLIP
pass and SAM pass and the losses: one forward and one backward per step is what DistributedDataParallel
requires, and the teachers (frozen, eval mode, kept out of the state dict and moved with the module) never
enter checkpoints. Checkpoints hold the student as a `save_pretrained` folder."""

import os
from collections import defaultdict

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import Trainer

from ..modeling import mask_region_features
from .losses import clip_distillation_loss, relational_distillation_loss, sam_distillation_loss
from .recipe import LossWeights, Stage, stage_losses, stage_trains

# Parameter-name parts trained at `encoder_lr_scale` x the learning rate in stage 2 (the SAM side).
SCALED_LR_PARTS = ("vision_encoder.", "mask_decoder.")


def _embedding(output) -> torch.Tensor:
    # get_image_features returns a BaseModelOutputWithPooling in transformers 5, a tensor in older versions.
    return getattr(output, "pooler_output", output)


def configure_trainable(student: nn.Module, stage: str, train_sam_head: bool = True) -> None:
    """Freeze what `stage` does not train (`recipe.STAGE_TRAINS`): stages 1 and 3 train the CLIP head only; stage 2
    trains the CLIP head, the shared encoder and (when `train_sam_head`) the neck and the SAM mask decoder. The
    prompt encoder, SAM's positional embedding and the text tower stay frozen. With PEFT LoRA on the encoder, its
    adapters train in stage 2 instead of its weights."""
    trained = [part for part in stage_trains(stage) if train_sam_head or part != "mask_decoder."]
    # Without SAM rehearsal the neck gets no gradient; a trainable unused parameter would stall DDP.
    untouched = () if train_sam_head else ("vision_encoder.neck.",)
    lora = hasattr(student, "peft_config")
    for name, parameter in student.named_parameters():
        if "lora_" in name:
            train = "vision_encoder." in trained  # the adapters sit on the encoder: they train where it would
        elif "original_module" in name or (lora and "vision_encoder." in name):
            train = False  # PEFT's frozen copies, and the encoder weights under LoRA
        else:
            train = any(part in name for part in trained) and not any(part in name for part in untouched)
        parameter.requires_grad_(train)


def _student_part(state_dict: dict) -> dict:
    # The student's entries of a `SamClipDistillationModule` state dict, named as in the student.
    return {name[len("student.") :]: value for name, value in state_dict.items() if name.startswith("student.")}


def _run_value_paths_through_fsdp(head) -> None:
    """Under FSDP2, make the CLIP head blocks' `value_path` (the dense read-out `L_region` pools) gather the block's
    shards and reduce its gradients as `forward` does: FSDP2 hooks only `forward`, and outside it a sharded block's
    weights are DTensor shards. Registered once per block; nothing to do without FSDP2."""
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    for layer in head.layers:
        if isinstance(layer, FSDPModule) and "value_path" not in vars(layer):
            register_fsdp_forward_method(layer, "value_path")


class SamClipDistillationModule(nn.Module):
    """Student + frozen teachers + losses, as one module whose forward returns the loss terms.

    Args:
        student: a `SamClipModel` (or a PEFT model around one).
        clip_teacher: a dual encoder with `get_image_features` (CLIPModel, SiglipModel); `None` when every batch
            brings cached `clip_teacher_embeds`.
        sam_teacher: a `SamModel`; needed for SAM batches with `sam_loss_weight > 0`.
        losses: lambda of `L_CLIP + lambda * L_SAM + region_weight * L_region + relational_weight * L_relational`,
            the weights inside `L_SAM` and whether the single-mask output is distilled (default `LossWeights()`, the
            paper's).
    """

    def __init__(self, student, clip_teacher=None, sam_teacher=None, losses: LossWeights | None = None):
        super().__init__()
        self.student = student
        # A plain attribute (not a submodule): teachers stay out of state_dict, optimizer, DDP and checkpoints.
        self.__dict__["teachers"] = {"clip": clip_teacher, "sam": sam_teacher}
        for teacher in self.teachers.values():
            if teacher is not None:
                teacher.eval().requires_grad_(False)
        self.losses = losses or LossWeights()
        # Teacher embeddings of earlier steps for L_relational; a plain attribute (not a buffer), so DDP does not
        # broadcast rank 0's over the others and checkpoints stay the student's.
        self.relational_bank = None

    @property
    def _no_split_modules(self) -> list[str]:
        # What FSDP may wrap as one unit (`fsdp_transformer_layer_cls_to_wrap` falls back to this): the student's
        # encoder and CLIP-head blocks. Teachers are never wrapped (prepared for evaluation, outside the module tree).
        return ["SamClipVisionLayer"]

    def _apply(self, fn, *args, **kwargs):
        # .to()/.float() reach the teachers too, so they always live where the student does.
        for teacher in self.teachers.values():
            if teacher is not None:
                teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def activation_checkpointing_enable(self, **kwargs):
        """Enable activation checkpointing in the student (Trainer's `activation_checkpointing=True`)."""
        self.student.activation_checkpointing_enable(**kwargs)

    def forward(
        self,
        clip_pixel_values=None,
        clip_teacher_pixel_values=None,
        clip_teacher_embeds=None,
        sam_pixel_values=None,
        sam_teacher_embeddings=None,
        input_boxes=None,
        input_points=None,
        input_labels=None,
        region_masks=None,
        region_valid=None,
        region_teacher_pixel_values=None,
        clip_trunk_tokens=None,
        sam_trunk_tokens=None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of one step: `loss` and, when computed, `loss_clip`, `loss_sam`, `loss_focal`, `loss_dice`,
        `loss_iou`, `loss_region`, `loss_relational` (over the views' and the regions' embeddings together). `L_SAM`
        and `L_region` share one encoder pass over `sam_pixel_values`.
        `clip_trunk_tokens` and `sam_trunk_tokens` (the frozen encoder's cached trunk tokens of the two views, in
        head-only stages) stand for `clip_pixel_values` and `sam_pixel_values`: the encoder does not run."""
        if (clip_trunk_tokens is not None or sam_trunk_tokens is not None) and self._encoder_trains():
            raise ValueError("cached trunk tokens stand for a frozen encoder; this stage trains the encoder.")
        terms = {}
        loss = 0.0
        pairs = []  # (student, teacher) embeddings of this step, for L_relational
        if clip_pixel_values is not None or clip_trunk_tokens is not None:
            if clip_teacher_embeds is None:
                with torch.no_grad():
                    clip_teacher_embeds = _embedding(
                        self.teachers["clip"].get_image_features(pixel_values=clip_teacher_pixel_values)
                    )
            if clip_trunk_tokens is None:
                student_embeds = self.student(pixel_values=clip_pixel_values).image_embeds
            else:  # what the student's forward computes after its encoder
                student_embeds = F.normalize(self.student.clip_head(clip_trunk_tokens)[1], dim=-1)
            terms["loss_clip"] = clip_distillation_loss(student_embeds, clip_teacher_embeds)
            loss = loss + terms["loss_clip"]
            pairs.append((student_embeds, clip_teacher_embeds))
        sam_view = sam_pixel_values is not None or sam_trunk_tokens is not None
        with_sam = sam_view and bool(self.losses.sam_loss_weight)
        with_regions = sam_view and region_masks is not None and bool(self.losses.region_weight)
        if with_sam or (with_regions and sam_trunk_tokens is None):
            encoded = self._encode_sam_view(sam_pixel_values, compute_neck=with_sam)
            sam_trunk_tokens = encoded.trunk_hidden_state
        if with_sam:
            sam = self.sam_loss(
                sam_pixel_values,
                sam_teacher_embeddings,
                input_boxes,
                input_points,
                input_labels,
                embeddings=encoded.last_hidden_state,
            )
            terms.update({f"loss_{name}": value for name, value in sam.items() if name != "loss"})
            terms["loss_sam"] = sam["loss"]
            loss = loss + self.losses.sam_loss_weight * sam["loss"]
        if with_regions:
            if region_valid.bool().any():
                student_regions, teacher_regions = self.region_embeddings(
                    sam_trunk_tokens, region_masks, region_valid, region_teacher_pixel_values
                )
                terms["loss_region"] = clip_distillation_loss(student_regions, teacher_regions)
                pairs.append((student_regions, teacher_regions))
            else:  # a batch without regions still logs the term
                terms["loss_region"] = sam_trunk_tokens.new_zeros(())
            loss = loss + self.losses.region_weight * terms["loss_region"]
        if self.losses.relational_weight and pairs:
            students, teachers = (torch.cat(side) for side in zip(*pairs))
            terms["loss_relational"] = relational_distillation_loss(
                students, teachers, self.losses.relational_temperature, self.relational_bank
            )
            loss = loss + self.losses.relational_weight * terms["loss_relational"]
            if self.training and self.losses.relational_bank_size:
                self._remember(teachers)
        terms["loss"] = loss
        return terms

    def _remember(self, teacher_embeds: torch.Tensor) -> None:
        """Push this step's teacher embeddings into the relational bank, dropping the oldest beyond its size."""
        latest = F.normalize(teacher_embeds.detach().float(), dim=-1)
        if self.relational_bank is not None:
            latest = torch.cat([latest, self.relational_bank.to(latest.device)])
        self.relational_bank = latest[: self.losses.relational_bank_size]

    def _encoder_trains(self) -> bool:
        return any(parameter.requires_grad for parameter in self.student.vision_encoder.parameters())

    def _encode_sam_view(self, pixel_values, compute_neck: bool):
        # A frozen encoder (head-only stages) gets no autograd graph: nothing would flow back through it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._encoder_trains()):
            return self.student.vision_encoder(pixel_values, compute_neck=compute_neck)

    def region_embeddings(
        self, trunk_tokens, region_masks, region_valid, teacher_pixel_values
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(student, teacher)` embeddings of the valid regions (at least one), whose cosine is `L_region`: the
        student region features of :meth:`region_features` and the teacher's embeddings of `teacher_pixel_values`,
        one view per valid region in `region_masks[region_valid]` order."""
        with torch.no_grad():
            teacher_embeds = _embedding(self.teachers["clip"].get_image_features(pixel_values=teacher_pixel_values))
        return self.region_features(trunk_tokens, region_masks, region_valid), teacher_embeds

    def region_features(self, trunk_tokens, region_masks, region_valid) -> torch.Tensor:
        """`(valid regions, projection_dim)` student features of the valid rows of `region_masks (batch, regions,
        H, W)` (bool, on a grid over the SAM view; `region_valid (batch, regions)`), in `region_masks[region_valid]`
        order: the CLIP head's dense tokens of `trunk_tokens` (the SAM view's) read out by `mask_region_features`,
        exactly as label-everything labels a mask, so that what is trained is what is read."""
        head = self.student.clip_head
        _run_value_paths_through_fsdp(head)
        tokens = head.dense_tokens(trunk_tokens)
        valid = region_valid.bool()
        return torch.cat(
            [
                mask_region_features(head, tokens[b], region_masks[b][valid[b]])
                for b in range(len(tokens))
                if valid[b].any()
            ]
        )

    def sam_loss(
        self, pixel_values, teacher_embeddings, input_boxes, input_points, input_labels, embeddings=None
    ) -> dict:
        """`L_SAM` averaged over prompt kinds (boxes, points) and mask outputs (3 multimask, 1 single);
        `embeddings` are the student's SAM image embeddings when already computed."""
        teacher = self.teachers["sam"]
        if teacher_embeddings is None:
            with torch.no_grad():
                teacher_embeddings = teacher.get_image_embeddings(pixel_values)
        if embeddings is None:
            embeddings = self.student.vision_encoder(pixel_values).last_hidden_state
        prompt_sets = []
        if input_boxes is not None:
            prompt_sets.append({"input_boxes": input_boxes})
        if input_points is not None:
            prompt_sets.append({"input_points": input_points, "input_labels": input_labels})
        outputs = [True, False] if self.losses.distill_single_mask else [True]
        totals = defaultdict(float)
        for prompts in prompt_sets:
            for multimask in outputs:
                with torch.no_grad():
                    target = teacher(image_embeddings=teacher_embeddings, multimask_output=multimask, **prompts)
                masks, iou = self.student.segment(embeddings, multimask_output=multimask, **prompts)
                terms = sam_distillation_loss(masks, target.pred_masks, iou, target.iou_scores, self.losses)
                for name, value in terms.items():
                    totals[name] = totals[name] + value / (len(prompt_sets) * len(outputs))
        return dict(totals)


class SamClipDistillationTrainer(Trainer):
    """A `Trainer` for one stage of SAM-CLIP distillation.

    Args:
        model: the student `SamClipModel` (or a PEFT model around one), or a ready `SamClipDistillationModule`.
        stage: `"head_probing"` (stage 1: CLIP head only, cosine loss), `"distillation"` (stage 2: L_CLIP +
            lambda L_SAM; encoder and SAM head at `encoder_lr_scale` x LR) or `"resolution_adaptation"` (stage 3:
            CLIP head only, at new CLIP resolutions).
        clip_teacher, sam_teacher: frozen teachers (see `SamClipDistillationModule`).
        losses: the loss weights (`LossWeights`; default the paper's). `sam_loss_weight` 0 gives the naive
            baseline (CLIP loss only, no rehearsal); stages other than `distillation` never add `L_SAM`, but every
            stage adds `region_weight * L_region` on batches with regions.
        encoder_lr_scale: LR multiplier of the shared encoder and the SAM head in stage 2 (default: `Stage`'s).
        **kwargs: the usual `Trainer` arguments (`args`, `train_dataset`, `data_collator`, ...). When `args` is a
            `SamClipDistillationConfig`, `stage`, `losses` and `encoder_lr_scale` default to its values.

    Each loss term is logged on its own (`loss_clip`, `loss_sam`, `loss_focal`, `loss_dice`, `loss_iou`,
    `loss_region`, `loss_relational`), and `skipped_samples` counts unreadable samples replaced so far.
    """

    def __init__(
        self,
        model=None,
        *,
        stage: str | None = None,
        clip_teacher=None,
        sam_teacher=None,
        losses: LossWeights | None = None,
        encoder_lr_scale: float | None = None,
        **kwargs,
    ):
        from .config import SamClipDistillationConfig

        config = kwargs.get("args")
        if isinstance(config, SamClipDistillationConfig):
            stage = stage or config.stage
            losses = losses or config.losses
            encoder_lr_scale = config.encoder_lr_scale if encoder_lr_scale is None else encoder_lr_scale
        stage = stage or "distillation"
        encoder_lr_scale = Stage.encoder_lr_scale if encoder_lr_scale is None else encoder_lr_scale
        if not isinstance(model, SamClipDistillationModule):
            losses = stage_losses(stage, losses or LossWeights())
            model = SamClipDistillationModule(model, clip_teacher=clip_teacher, sam_teacher=sam_teacher, losses=losses)
        configure_trainable(model.student, stage, train_sam_head=bool(model.losses.sam_loss_weight))
        self.stage, self.encoder_lr_scale = stage, encoder_lr_scale
        self._loss_terms = defaultdict(list)
        self.skipped_samples = 0
        super().__init__(model=model, **kwargs)
        # As TRL's GKDTrainer prepares its teacher: placed and cast by accelerate, never wrapped for training (no
        # DDP, no FSDP sharding) and kept out of the student's state dict, optimizer and checkpoints.
        for role, teacher in model.teachers.items():
            if teacher is not None:
                model.teachers[role] = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        if self.is_fsdp_enabled and self.accelerator.is_fsdp2:
            # fully_shard cannot shard 0-dim parameters (the student's logit_scale): frozen in every stage, they stay
            # whole on every rank, handed to FSDP2's ignored_params through the plugin's ignored_modules.
            scalars = [parameter for parameter in model.parameters() if parameter.ndim == 0]
            if any(parameter.requires_grad for parameter in scalars):
                raise ValueError("FSDP2 cannot train 0-dim parameters; keep logit_scale frozen.")
            if scalars:
                self.accelerator.state.fsdp_plugin.ignored_modules = [nn.ParameterList(scalars)]

    @property
    def student(self):
        """The student being trained (unwrapped)."""
        return self.accelerator.unwrap_model(self.model).student

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Run the (wrapped) distillation module; record each loss term for logging."""
        skipped = inputs.pop("num_skipped", None)
        if skipped is not None:
            self.skipped_samples += int(skipped)
        outputs = model(**inputs)
        if model.training:
            for name, value in outputs.items():
                if name != "loss":
                    self._loss_terms[name].append(value.detach().float().item())
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (and the skipped-sample count) to training logs."""
        if "loss" in logs:
            logs.update({name: round(sum(v) / len(v), 6) for name, v in self._loss_terms.items() if v})
            logs["skipped_samples"] = self.skipped_samples
            self._loss_terms.clear()
        super().log(logs, start_time)

    def create_optimizer(self, model=None):
        """AdamW (or `args.optim`) with the paper's LR split: the shared encoder and SAM head at
        `encoder_lr_scale` x LR, the CLIP head (and LoRA adapters) at the full LR."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = {}
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            scaled = any(part in name for part in SCALED_LR_PARTS) and "lora_" not in name
            key = (name in decay, scaled)
            groups.setdefault(
                key,
                {
                    "params": [],
                    "weight_decay": self.args.weight_decay if key[0] else 0.0,
                    "lr": self.args.learning_rate * (self.encoder_lr_scale if scaled else 1.0),
                },
            )["params"].append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(list(groups.values()), **optimizer_kwargs)
        return self.optimizer

    def create_accelerator_and_postprocess(self):
        """Trainer's accelerator, except that an FSDP2 launch on CPU (gloo) shards as on GPUs: accelerate turns
        any CPU launch into plain multi-CPU DDP and drops the FSDP plugin, though FSDP2's `fully_shard` runs there."""
        super().create_accelerator_and_postprocess()
        from accelerate import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if state.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
            plugin = FullyShardedDataParallelPlugin()  # read from the launcher's FSDP_* variables
            if plugin.fsdp_version != 2:
                raise ValueError("FSDP on CPU needs fsdp_version: 2 (FSDP1 needs GPUs).")
            # Both states: every AcceleratorState() copies the PartialState's type over its own.
            PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
            state.fsdp_plugin = plugin
            self.is_fsdp_enabled = True

    def get_train_dataloader(self):
        """Trainer's dataloader, except that a stream the ranks already split (`sharded_by_node`:
        `split_dataset_by_node` in `run._wrap`) is not split again by accelerate's `IterableDatasetShard`."""
        dataloader = super().get_train_dataloader()
        if getattr(self.train_dataset, "sharded_by_node", False):
            from accelerate.data_loader import IterableDatasetShard

            if self.accelerator.dispatch_batches:
                raise ValueError(
                    "a stream split among the ranks cannot have its batches dispatched from the main "
                    "process: set accelerator_config.dispatch_batches to false."
                )
            if isinstance(dataloader.dataset, IterableDatasetShard):
                dataloader.dataset.num_processes, dataloader.dataset.process_index = 1, 0
        return dataloader

    def student_state_dict(self) -> dict | None:
        """The student's whole state dict gathered from the ranks under FSDP (call it on every rank), else None:
        the student's own parameters are whole."""
        if not self.is_fsdp_enabled:
            return None
        return _student_part(self.accelerator.get_state_dict(self.model))

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Checkpoints hold the student alone, as a loadable save_pretrained folder (no teachers). Under FSDP the
        # Trainer passes the wrapper's gathered state dict: its `student.` entries are the student's.
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        student_state = _student_part(state_dict) if state_dict else None
        self.student.save_pretrained(output_dir, state_dict=student_state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.is_fsdp_enabled:  # each rank reads its shard (SHARDED_STATE_DICT) or its part of the whole one
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        student = self.student
        path = os.path.join(resume_from_checkpoint, "adapter_model.safetensors")
        if os.path.isfile(path):  # a PEFT student saves its adapters (and the modules it trains in full)
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(student, load_file(path))
            return
        state = load_file(os.path.join(resume_from_checkpoint, "model.safetensors"))
        result = student.load_state_dict(state, strict=False)
        tied_keys = getattr(student, "_tied_weights_keys", None) or {}
        tied = set(tied_keys) | set(tied_keys.values())
        if result.unexpected_keys or set(result.missing_keys) - tied:
            raise ValueError(f"Checkpoint {resume_from_checkpoint} does not match the student: {result}.")

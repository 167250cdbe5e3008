"""ONNX Runtime (fp32 and int8 dynamic quantization) against torch eager for SAM-CLIP's exported graphs: latency
per graph, file sizes, and the quality of int8 on the mosaic world.

Command::

    python -m benchmarks.bench_onnx --threads 1 --repeats 3 --parts mosaic
    python -m benchmarks.bench_onnx --threads 1 --repeats 1 --parts real \
        --output benchmarks/results/bench_onnx_real.json

Run time here at 1 thread: `--parts mosaic` 159 s on a quiet machine, 391 s at load average ~10 (quality ~2 min,
latency ~30 s quiet); `--parts real --repeats 1` 616 s (export and quantization of the ViT-B graphs ~4 min, the
1024 px encoder ~17-22 s a call per backend; peak RSS 5.8 GB); `--tiny` (CI) ~30 s.

- Latency: every graph of `samclip export --onnx` (`transformers_samclip.hub.onnx`) at batch 1, interleaved round-robin
  with the same computation in torch eager (the export's wrapper modules), timed on process CPU time at one thread
  (onnxruntime sessions get 1 intra-op thread too). Sizes: the shipped mosaic model (128 px SAM path, 64 px CLIP
  path) and real size with random weights (`samclip-vit-b16`: SAM ViT-B at 1024 px, CLIP path at 224 px; its
  dense view is left out).
- Quality (mosaic world, shipped model, test split): zero-shot top-1 on item views, box mIoU (each box -> the best
  of SAM's three masks by predicted IoU, the protocol every backend here shares; `samclip evaluate` uses SAM's
  single box mask instead) and plain semantic mIoU (dense view), for torch eager, onnxruntime fp32, all graphs int8,
  and each graph int8 alone (the others fp32), so that the loss is pinned on the graph that causes it.

Reaches (measured here, README's ONNX section): fp32 onnxruntime equals torch eager's quality exactly; int8 of all
graphs (per-channel, 2026-12-03) moves zero-shot top-1 / box mIoU / semseg mIoU by -0.003 / +0.0007 / -0.0001 (no
graph alone by more than 0.005) and shrinks the graphs 2.9x (mosaic) to 3.6x (ViT-B encoder, per-tensor then);
latency ratios to torch eager 0.24-0.76 (fp32) and 0.16-0.67 (int8) at mosaic size, 0.5-1.28 (fp32) and 0.18-0.81
(int8, per-tensor) at real size.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from transformers_samclip import SamClipModel, SamClipProcessor, samclip_config_from_preset
from transformers_samclip.evaluation import evaluate_label_maps
from transformers_samclip.evaluation.geometry import mask_to_box
from transformers_samclip.evaluation.metrics import mask_ious, top1_accuracy
from transformers_samclip.hub import load_samclip
from transformers_samclip.hub.onnx import (
    GRAPH_IO,
    GRAPH_NAMES,
    example_inputs,
    export_onnx,
    graph_module,
    quantize_onnx,
)
from transformers_samclip.modeling import DEFAULT_TEMPLATES
from transformers_samclip.mosaic import FASHION_MNIST_CLASSES, make_item_views, make_mosaic_dataset

from .common import make_parser, median, paired_ratio, render_tables, setup, table, time_interleaved, write_result

NAME = "bench_onnx"
REAL_SIZE_GRAPHS = ("vision_encoder", "prompt_encoder_mask_decoder", "text_model", "vision_model")


def _session(path: Path, threads: int, arena: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Without the arena, memory goes back after each run: at 1024 px the attention buffers of the fp32 and int8
    # sessions plus torch's would otherwise hold ~13 GB (OOM-killed on this shared 24 GB machine).
    options.enable_cpu_mem_arena = options.enable_mem_pattern = arena
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Backend:
    """One way of running the graphs: torch eager (the export's wrapper modules) or onnxruntime sessions, with
    int8 for the graphs named in `int8`."""

    def __init__(self, model, folder: Path | None, threads: int, int8=()):
        self.modules = {name: graph_module(name, model).eval() for name in GRAPH_NAMES} if folder is None else None
        self.sessions = (
            None
            if folder is None
            else {
                name: _session(folder / f"{name}{'_quantized' if name in int8 else ''}.onnx", threads)
                for name in GRAPH_NAMES
            }
        )

    def __call__(self, name: str, *inputs: np.ndarray) -> list[np.ndarray]:
        if self.sessions is None:
            with torch.inference_mode():
                outputs = self.modules[name](*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
            return [o.numpy() for o in (outputs if isinstance(outputs, tuple) else (outputs,))]
        session = self.sessions[name]
        # By name: onnxruntime lists the decoder's optional prompt inputs (boxes, mask) among initializers.
        return session.run(None, dict(zip(GRAPH_IO[name][0], inputs)))


def _class_embeddings(run: Backend, tokenizer) -> np.ndarray:
    prompts = [t.format(c) for c in FASHION_MNIST_CLASSES for t in DEFAULT_TEMPLATES]
    tokens = tokenizer(prompts, padding=True, return_tensors="np")
    (embeds,) = run("text_model", tokens["input_ids"].astype(np.int64), tokens["attention_mask"].astype(np.int64))
    embeds = embeds.reshape(len(FASHION_MNIST_CLASSES), len(DEFAULT_TEMPLATES), -1).mean(1)
    return embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)


def quality(run: Backend, model, processor, items, mosaics) -> dict[str, float]:
    """Zero-shot top-1, box mIoU (best of three masks) and plain semantic mIoU of one backend."""
    classes = _class_embeddings(run, processor.tokenizer)
    scores = []
    for start in range(0, len(items), 64):
        pixels = processor(images=items[start : start + 64]["image"])["pixel_values"].numpy()
        scores.append(run("vision_model", pixels)[0] @ classes.T)
    ious = []
    grid = model.config.prompt_encoder_config.image_embedding_size
    no_mask = np.zeros((1, 1, 4 * grid, 4 * grid), np.float32)
    no_points, no_labels = np.zeros((1, 1, 0, 2), np.float32), np.zeros((1, 1, 0), np.int64)
    for row in mosaics:
        masks = [np.asarray(m) > 0 for m in row["instance_masks"]]
        masks = [m for m in masks if m.any()]
        boxes = [list(mask_to_box(m)) for m in masks]
        encoding = processor(images=row["image"], input_boxes=[boxes])
        embeddings, positional = run("vision_encoder", encoding["pixel_values"].numpy())
        iou, low_res = run(
            "prompt_encoder_mask_decoder",
            embeddings,
            positional,
            no_points,
            no_labels,
            encoding["input_boxes"].numpy().astype(np.float32),
            no_mask,
            np.zeros(1, np.float32),
        )
        full = processor.post_process_masks(
            torch.from_numpy(low_res), encoding["original_sizes"], encoding["reshaped_input_sizes"]
        )[0]
        best = iou[0].argmax(-1)
        ious.extend(mask_ious(full[np.arange(len(boxes)), best].numpy(), np.stack(masks)).tolist())

    threshold, scale = model.config.background_threshold, float(model.logit_scale.detach().exp())

    def segment(images):
        maps = []
        for image in images:
            dense = processor(images=image, view="dense")
            (features,) = run("dense_encoder", dense["pixel_values"].numpy())
            cosine = torch.from_numpy(np.einsum("bdhw,cd->bchw", features, classes))
            logits = torch.cat([torch.full_like(cosine[:, :1], threshold), cosine], 1) * scale
            logits = torch.nn.functional.interpolate(logits, size=dense["pixel_values"].shape[-2:], mode="bilinear")
            maps.append(
                processor.post_process_semantic_segmentation(
                    logits, dense["original_sizes"], dense["reshaped_input_sizes"]
                )[0].numpy()
            )
        return maps

    semseg = evaluate_label_maps(segment, mosaics, list(FASHION_MNIST_CLASSES), batch_size=len(mosaics), desc="semseg")
    return {
        "zero_shot_top1": top1_accuracy(np.concatenate(scores), items["label"]),
        "box_miou": float(np.mean(ious)),
        "semseg_miou": semseg["miou"],
    }


def latency(
    model, processor, folder: Path, threads: int, repeats: int, graphs, label: str, arena: bool = True
) -> tuple[list, dict]:
    """Per graph: torch eager, onnxruntime fp32 and int8 CPU-time medians and ratios."""
    examples = example_inputs(model, processor)
    rows, results = [], {}
    for name in graphs:
        eager = graph_module(name, model).eval()
        fp32, int8 = (_session(folder / f"{name}{suffix}.onnx", threads, arena) for suffix in ("", "_quantized"))
        # Batch 1 (the decoder: 2 prompts of 2 clicks + box, and a mask).
        torch_inputs = tuple(x[:1] for x in examples[name])
        feed = {input_name: x.numpy() for input_name, x in zip(GRAPH_IO[name][0], torch_inputs)}
        # Default arguments bind this iteration's graphs and inputs (the lambdas run inside the loop body).
        cases = {
            "torch": lambda eager=eager, inputs=torch_inputs: eager(*inputs),
            "ort_fp32": lambda session=fp32, feed=feed: session.run(None, feed),
            "ort_int8": lambda session=int8, feed=feed: session.run(None, feed),
        }
        with torch.inference_mode():
            times = time_interleaved(cases, repeats)["cpu"]
        entry = {case: median(t) * 1e3 for case, t in times.items()}
        entry.update(
            fp32_over_torch=paired_ratio(times, "ort_fp32", "torch"),
            int8_over_torch=paired_ratio(times, "ort_int8", "torch"),
            fp32_mb=(folder / f"{name}.onnx").stat().st_size / 1e6,
            int8_mb=(folder / f"{name}_quantized.onnx").stat().st_size / 1e6,
        )
        results[name] = entry
        rows.append(
            [
                label,
                name,
                entry["torch"],
                entry["ort_fp32"],
                entry["ort_int8"],
                entry["fp32_over_torch"],
                entry["int8_over_torch"],
                entry["fp32_mb"],
                entry["int8_mb"],
            ]
        )
    return rows, results


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser(__doc__, default_repeats=3)
    parser.add_argument("--num-items", type=int, default=1000, help="item views for zero-shot top-1 (tiny: 32)")
    parser.add_argument(
        "--num-mosaics", type=int, default=100, help="test mosaics for box and semantic mIoU (tiny: 4)"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("mosaic", "real"),
        default=("mosaic", "real"),
        help="mosaic: quality and latency of the shipped model; real: latency at real size (~3 GB)",
    )
    args = parser.parse_args(argv)
    setup(args)
    started = time.perf_counter()
    num_items, num_mosaics = (32, 4) if args.tiny else (args.num_items, args.num_mosaics)
    loaded = load_samclip("mosaic")
    model, processor = loaded.model.eval(), loaded.processor
    result, tables, latency_rows = {"num_items": num_items, "num_mosaics": num_mosaics}, [], []
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        if "mosaic" in args.parts:
            folder = Path(tmp) / "mosaic"
            export_onnx(model, processor, folder)
            quantize_onnx(folder / "onnx")
            items = make_item_views("test", num_items=num_items, seed=0)
            mosaics = make_mosaic_dataset("test", num_mosaics, seed=0)
            backends = {
                "torch eager": (None, ()),
                "onnxruntime fp32": (folder / "onnx", ()),
                "onnxruntime int8 (all graphs)": (folder / "onnx", GRAPH_NAMES),
            }
            backends.update({f"int8 {name} only": (folder / "onnx", (name,)) for name in GRAPH_NAMES})
            result["quality"] = {
                label: quality(Backend(model, path, args.threads, int8), model, processor, items, mosaics)
                for label, (path, int8) in backends.items()
            }
            tables.append(
                table(
                    f"Quality on the mosaic world ({num_items} item views, {num_mosaics} test mosaics)",
                    ["backend", "zero-shot top-1", "box mIoU (best of 3)", "semseg mIoU"],
                    [
                        [label, q["zero_shot_top1"], q["box_miou"], q["semseg_miou"]]
                        for label, q in result["quality"].items()
                    ],
                )
            )
            print(render_tables(tables[-1:]), flush=True)
            latency_rows, result["latency"] = latency(
                model, processor, folder / "onnx", args.threads, args.repeats, GRAPH_NAMES, "mosaic (128 / 64 px)"
            )
        if "real" in args.parts:
            real_model = SamClipModel(
                samclip_config_from_preset("samclip-tiny" if args.tiny else "samclip-vit-b16")
            ).eval()
            real_size, clip_size = real_model.config.image_size, real_model.config.head_config.image_size
            real_processor = SamClipProcessor.from_sizes(processor.tokenizer, sam_size=real_size, clip_size=clip_size)
            real_folder = Path(tmp) / "real"
            export_onnx(real_model, real_processor, real_folder, REAL_SIZE_GRAPHS)
            quantize_onnx(real_folder / "onnx", REAL_SIZE_GRAPHS)
            rows, result["latency_real_size"] = latency(
                real_model,
                real_processor,
                real_folder / "onnx",
                args.threads,
                args.repeats,
                REAL_SIZE_GRAPHS,
                f"real ({real_size} / {clip_size} px)",
                arena=False,
            )
            latency_rows += rows

    tables.append(
        table(
            f"Latency per graph, batch 1, CPU ms at {args.threads} thread(s)"
            f" (medians of {args.repeats} interleaved rounds)",
            [
                "size",
                "graph",
                "torch eager",
                "ORT fp32",
                "ORT int8",
                "fp32 / torch",
                "int8 / torch",
                "fp32 MB",
                "int8 MB",
            ],
            latency_rows,
        )
    )
    print(render_tables(tables))
    result["tables"] = tables
    write_result(NAME, args, argv, result, started)
    return result


if __name__ == "__main__":
    main()

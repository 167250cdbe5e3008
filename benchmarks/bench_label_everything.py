"""Label everything at real sizes: SAM-CLIP from one encoder pass against SAM-everything + CLIP-crops (random weights).

Command (the CPU suite runs it with these settings)::

    python -m benchmarks.bench_label_everything --threads 1 --repeats 2

Run time: ~8 min wall here (2 Xeon cores shared with other jobs), ~4 min of CPU at 1 thread; `--tiny` (CI) ~3 s.

Both methods find the masks the same way (SAM's automatic masks: the same encoder shapes and the same mask decoder
over the same point grid, so that part costs the same and is left out); what differs is how `--masks` masks get
their labels:
- cascade: `SamModel` ViT-B encoder at 1024 px, then one CLIP ViT-L/14 image-tower pass per mask crop at 224 px
  (the crops in one batch);
- SAM-CLIP: its encoder at 1024 px (SAM's, merged), the CLIP head's dense read-out over the 64x64 tokens, and each
  mask's tokens averaged and projected (`SamClipMaskGenerator`'s `mask_pooling="mean_tokens"`).
Reports GFLOPs (torch's FlopCounterMode) and median process CPU time per image (cases interleaved in one process),
and their SAM-CLIP / cascade ratios. Expected: SAM-CLIP ~0.35x the FLOPs and ~0.4x the CPU time of the cascade at 16
masks (the ViT-L/14 crops dominate the cascade; the head's 3 global blocks over 4096 tokens are SAM-CLIP's extra).

Second table, the mosaic world end to end (`--mosaics` test mosaics, mask finding included): the shipped mosaic
model's `SamClipMaskGenerator.instance_segmentation` (one pass with the default prompts, 8 peaks of its own class-score
map + the centre; the same with peaks + a 4x4 grid and with SAM's 8x8 grid; and `label_source="crops"`) against the
shipped teachers' cascade (SAM's 8x8 grid, CLIP on crops), per image interleaved. There the CLIP teacher is tiny and
SAM's mask decoder over the prompts dominates both, so the time follows the number of prompts: issue 19's target is
<= 0.6x the cascade with the proposed prompts.
"""

from __future__ import annotations

import sys
import time

import torch

from transformers_samclip import SamClipMaskGenerator, SamClipModel

from .common import (
    build_clip_teacher,
    build_sam_teacher,
    count_flops,
    make_parser,
    median,
    paired_ratio,
    render_tables,
    setup,
    table,
    time_interleaved,
    write_result,
)

NAME = "bench_label_everything"


def square_masks(count: int, size: int) -> torch.Tensor:
    """`count` low-resolution mask logits `(count, size, size)`: squares of several sizes across the image."""
    masks = torch.full((count, size, size), -10.0)
    for index in range(count):
        side = size // 8 + (index % 4) * size // 8
        top = (index * size // count) % max(size - side, 1)
        left = (index * 7 * size // count) % max(size - side, 1)
        masks[index, top : top + side, left : left + side] = 10.0
    return masks


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print its tables and write its JSON."""
    argv = sys.argv[1:] if argv is None else argv
    parser = make_parser(__doc__, default_repeats=2)
    parser.add_argument("--masks", type=int, default=16, help="masks to label per image")
    parser.add_argument(
        "--mosaics", type=int, default=None, help="test mosaics timed end to end (default 20; 2 with --tiny)"
    )
    args = parser.parse_args(argv)
    setup(args)
    started = time.perf_counter()

    sam, clip = build_sam_teacher(args.tiny), build_clip_teacher(args.tiny)
    model = SamClipModel.from_teachers(sam, clip).eval()
    sam_size, clip_size = model.config.image_size, clip.config.vision_config.image_size
    pixels = torch.randn(1, 3, sam_size, sam_size)
    crops = torch.randn(args.masks, 3, clip_size, clip_size)
    low_res = 4 * model.config.prompt_encoder_config.image_embedding_size
    masks = square_masks(args.masks, low_res)
    class_embeds = torch.nn.functional.normalize(torch.randn(10, model.config.head_config.projection_dim), dim=-1)
    generator = SamClipMaskGenerator(model)

    def cascade():
        sam.get_image_embeddings(pixels)
        return clip.get_image_features(pixel_values=crops)

    def samclip():
        encoded = model.vision_encoder(pixels, compute_neck=True)
        tokens = model.clip_head.dense_tokens(encoded.trunk_hidden_state)
        return generator._mask_class_cosines(tokens[0], masks, class_embeds, "mean_tokens")

    cases = {"cascade": cascade, "samclip": samclip}
    with torch.inference_mode():
        flops = {name: count_flops(fn) for name, fn in cases.items()}
        times = time_interleaved(cases, args.repeats)
    cpu = times["cpu"]
    result = {
        "sam_size": sam_size,
        "clip_size": clip_size,
        "masks": args.masks,
        "gflops": {name: value / 1e9 for name, value in flops.items()},
        "cpu_seconds": {name: median(values) for name, values in cpu.items()},
        "wall_seconds_per_case": {name: median(values) for name, values in times["wall"].items()},
        "flops_ratio": flops["samclip"] / flops["cascade"],
        "cpu_time_ratio": paired_ratio(cpu, "samclip", "cascade"),
    }
    result["tables"] = [
        table(
            f"Label {args.masks} masks of one {sam_size} px image (mask finding, the same for both, left out)",
            ["case", "GFLOPs", "CPU s (median)", "ratio to cascade (FLOPs / CPU time)"],
            [
                [
                    "SAM encoder + CLIP crops (cascade)",
                    result["gflops"]["cascade"],
                    result["cpu_seconds"]["cascade"],
                    "1",
                ],
                [
                    "SAM-CLIP one pass",
                    result["gflops"]["samclip"],
                    result["cpu_seconds"]["samclip"],
                    f"{result['flops_ratio']:.3f} / {result['cpu_time_ratio']:.3f}",
                ],
            ],
        )
    ]
    result["mosaic_world"] = mosaic_world(args.mosaics or (2 if args.tiny else 20), args.repeats)
    world = result["mosaic_world"]
    result["tables"].append(
        table(
            f"Mosaic world end to end ({world['mosaics']} test mosaics of 128 px, mask finding included)",
            ["method", "CPU s per image (median)", "ratio to cascade"],
            [
                [name, world["cpu_seconds"][name], world["cpu_time_ratio"].get(name, 1.0)]
                for name in world["cpu_seconds"]
            ],
        )
    )
    print(render_tables(result["tables"]))
    write_result(NAME, args, argv, result, started)
    return result


def mosaic_world(num_mosaics: int, repeats: int) -> dict:
    """Per-image CPU time of label-everything on test mosaics: the shipped model (one pass, crops) and the shipped
    teachers' cascade, interleaved (each round labels every mosaic with each method)."""
    from transformers_samclip.evaluation.instance import cascade_instance_segmenter, samclip_instance_segmenter
    from transformers_samclip.hub.export import load_samclip
    from transformers_samclip.mosaic import (
        FASHION_MNIST_CLASSES,
        SHIPPED_MOSAIC_MODEL_DIR,
        load_mosaic_teachers,
        make_mosaic_dataset,
    )

    shipped, teachers = load_samclip(SHIPPED_MOSAIC_MODEL_DIR), load_mosaic_teachers()
    images = [image.convert("RGB") for image in make_mosaic_dataset("test", num_mosaics, seed=0)["image"]]
    classes = list(FASHION_MNIST_CLASSES)
    segmenters = {
        "SAM-CLIP one pass": samclip_instance_segmenter(shipped.model, shipped.processor, classes),
        "SAM-CLIP one pass, peaks + 4x4 grid": samclip_instance_segmenter(
            shipped.model, shipped.processor, classes, peaks_grid_side=4
        ),
        "SAM-CLIP one pass, 8x8 grid": samclip_instance_segmenter(
            shipped.model, shipped.processor, classes, prompts="grid"
        ),
        "SAM-CLIP crops": samclip_instance_segmenter(shipped.model, shipped.processor, classes, label_source="crops"),
        "SAM+CLIP cascade": cascade_instance_segmenter(
            teachers["sam_model"],
            teachers["sam_processor"],
            teachers["clip_model"],
            teachers["clip_processor"],
            classes,
        ),
    }
    cases = {
        name: (lambda segment=segment: [segment([image]) for image in images]) for name, segment in segmenters.items()
    }
    with torch.inference_mode():
        cpu = time_interleaved(cases, repeats)["cpu"]
    per_image = {name: [value / len(images) for value in values] for name, values in cpu.items()}
    return {
        "mosaics": len(images),
        "cpu_seconds": {name: median(values) for name, values in per_image.items()},
        "cpu_time_ratio": {
            name: paired_ratio(per_image, name, "SAM+CLIP cascade") for name in per_image if name != "SAM+CLIP cascade"
        },
    }


if __name__ == "__main__":
    main()

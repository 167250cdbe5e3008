"""Inference cost of one SAM-CLIP backbone against its two teachers, at the real sizes (random weights).

Command (the CPU suite runs it with these settings)::

    python -m benchmarks.bench_inference --threads 1 --repeats 3

Run time: ~13-17 min wall here (2 Xeon cores shared with training jobs, load ~6), ~7 min of CPU at 1 thread (most of
it is the five 1024 px SAM ViT-B passes per round); `--tiny` (CI) takes ~5 s.

Measures parameters, GFLOPs (torch's FlopCounterMode), median latency (batch 1, cases interleaved round-robin
in this one process; process CPU time, the stable latency at 1 thread on a shared machine, and wall time; ratios
are medians of per-round ratios of CPU time) and peak torch-allocator memory of a call, for:
`SamModel` ViT-B at 1024 px (image + one point prompt); `CLIPModel` ViT-L/14 image tower at 224 px and text
tower (77 tokens); SAM-CLIP's SAM path at 1024 px, CLIP path at 224/336/448 px and text tower; and both tasks on
one image: the two teachers, SAM-CLIP in two passes (1024 + 224) and SAM-CLIP in one 1024 px pass with both
heads. SAM-CLIP is merged from the same SAM teacher, so its SAM path must give identical masks.

Expected (measured here, 2026-11-29, after issue 14's encoder changes; earlier values in brackets): SAM-CLIP has
0.47x the parameters of SAM ViT-B + CLIP ViT-L/14 and 0.30x on the image side; its CLIP path at 224 px costs 0.27x
the FLOPs and 0.28x (0.32x) the latency of the ViT-L/14 image tower; its SAM path has the same FLOPs as SamModel,
max abs difference 0 in `pred_masks`, a latency ratio of 0.89 (0.91 and 1.07 in two runs; this shared machine
resolves it to about +-10%) and 0.55x SamModel's peak memory (1.0x), since SamModel copies each attention bias once
more. Both tasks on one image: two SAM-CLIP passes (1024 + 224) ~0.86x the teachers' time; one 1024 px pass with both
heads ~1.15x (1.27x), since the CLIP head then runs 3 global-attention blocks over 4096 tokens (+288 GFLOPs, against
+44 for a 224 px pass).
"""

from __future__ import annotations

import sys
import time

import torch

from transformers_samclip import SamClipModel

from .common import (
    build_clip_teacher,
    build_sam_teacher,
    check_target,
    count_params,
    make_parser,
    measure_once,
    median,
    paired_ratio,
    render_tables,
    setup,
    table,
    target_rows,
    time_interleaved,
    top_ops,
    write_result,
)

NAME = "bench_inference"


def make_inputs(sam, clip, clip_sizes: list[int], batch: int = 1, device: str = "cpu") -> dict:
    """`batch` SAM-path images with one centre point each, CLIP-path images per size, full-length texts."""
    sam_size = sam.config.vision_config.image_size
    text = clip.config.text_config
    ids = torch.randint(0, text.vocab_size, (batch, text.max_position_embeddings), device=device)
    ids[:, 0], ids[:, -1] = text.bos_token_id, text.eos_token_id
    return {
        "sam_pixels": torch.randn(batch, 3, sam_size, sam_size, device=device),
        "points": torch.full((batch, 1, 1, 2), sam_size / 2, device=device),
        "labels": torch.ones(batch, 1, 1, dtype=torch.int, device=device),
        "clip_pixels": {size: torch.randn(batch, 3, size, size, device=device) for size in clip_sizes},
        "input_ids": ids,
    }


def make_cases(sam, clip, model, inputs: dict, sam_size: int, clip_sizes: list[int]) -> dict:
    """Name -> zero-argument call, for every measured case."""
    px, pts, lbl, ids = inputs["sam_pixels"], inputs["points"], inputs["labels"], inputs["input_ids"]
    teacher_size = clip_sizes[0]
    clip_px = inputs["clip_pixels"]

    def sam_teacher():
        return sam(pixel_values=px, input_points=pts, input_labels=lbl)

    def samclip_sam():
        return model(pixel_values=px, input_points=pts, input_labels=lbl)

    def clip_image():
        return clip.get_image_features(pixel_values=clip_px[teacher_size])

    def samclip_one_pass():
        # model.forward runs the CLIP head beside prompts only when text is given; call the parts so that
        # this case is the two heads on one encoder pass, without the text tower.
        encoded = model.vision_encoder(px, compute_neck=True)
        model.clip_head(encoded.trunk_hidden_state)
        return model.segment(encoded.last_hidden_state, input_points=pts, input_labels=lbl)

    cases = {
        f"sam_teacher_{sam_size}": sam_teacher,
        f"samclip_sam_{sam_size}": samclip_sam,
        f"clip_teacher_image_{teacher_size}": clip_image,
    }
    for size in clip_sizes:
        cases[f"samclip_clip_{size}"] = lambda size=size: model.get_image_features(clip_px[size])
    cases["clip_teacher_text"] = lambda: clip.get_text_features(input_ids=ids)
    cases["samclip_text"] = lambda: model.get_text_features(ids)
    cases["both_tasks_teachers"] = lambda: (sam_teacher(), clip_image())
    cases["both_tasks_samclip_two_pass"] = lambda: (samclip_sam(), model.get_image_features(clip_px[teacher_size]))
    cases[f"both_tasks_samclip_one_pass_{sam_size}"] = samclip_one_pass
    return cases


def param_counts(sam, clip, model) -> dict:
    """Parameter counts of the whole models and of their image sides (everything but the text tower)."""
    clip_image = count_params(clip.vision_model) + count_params(clip.visual_projection)
    clip_text = count_params(clip.text_model) + count_params(clip.text_projection)
    samclip_text = count_params(model.text_model) + count_params(model.text_projection)
    return {
        "sam_teacher": count_params(sam),
        "clip_teacher": count_params(clip),
        "clip_teacher_image": clip_image,
        "clip_teacher_text": clip_text,
        "samclip": count_params(model),
        "samclip_image": count_params(model) - samclip_text,
        "samclip_clip_head": count_params(model.clip_head),
        "samclip_text": samclip_text,
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser(__doc__).parse_args(argv)
    setup(args)
    started = time.perf_counter()

    sam = build_sam_teacher(args.tiny)
    clip = build_clip_teacher(args.tiny)
    model = SamClipModel.from_teachers(sam, clip)  # same SAM weights, so the SAM path must match exactly
    sam_size = model.config.image_size
    clip_sizes = [32, 48, 64] if args.tiny else [224, 336, 448]  # the first is the CLIP teacher's size
    inputs = make_inputs(sam, clip, clip_sizes)
    cases = make_cases(sam, clip, model, inputs, sam_size, clip_sizes)
    sam_case, samclip_case = f"sam_teacher_{sam_size}", f"samclip_sam_{sam_size}"
    clip_case, samclip_clip_case = f"clip_teacher_image_{clip_sizes[0]}", f"samclip_clip_{clip_sizes[0]}"

    with torch.inference_mode():
        # The counted pass doubles as the warm-up round, and its outputs give the parity check.
        outputs, flops, memory = {}, {}, {}
        for name, fn in cases.items():
            outputs[name], flops[name], memory[name] = measure_once(fn)
        timings = time_interleaved(cases, args.repeats, warmup=0)
        times = timings["cpu"]  # at 1 thread the stable latency on a shared machine; wall times are reported too
        reference, merged = outputs[sam_case], outputs[samclip_case]
        parity = {
            "pred_masks_max_abs_diff": (reference.pred_masks - merged.pred_masks).abs().max().item(),
            "iou_scores_max_abs_diff": (reference.iou_scores - merged.iou_scores).abs().max().item(),
        }

    params = param_counts(sam, clip, model)
    ratios = {
        "params_total": params["samclip"] / (params["sam_teacher"] + params["clip_teacher"]),
        "params_image": params["samclip_image"] / (params["sam_teacher"] + params["clip_teacher_image"]),
        "latency_clip_path": paired_ratio(times, samclip_clip_case, clip_case),
        "latency_sam_path": paired_ratio(times, samclip_case, sam_case),
        "latency_both_two_pass": paired_ratio(times, "both_tasks_samclip_two_pass", "both_tasks_teachers"),
        "latency_both_one_pass": paired_ratio(times, f"both_tasks_samclip_one_pass_{sam_size}", "both_tasks_teachers"),
        "latency_clip_path_wall": paired_ratio(timings["wall"], samclip_clip_case, clip_case),
        "latency_sam_path_wall": paired_ratio(timings["wall"], samclip_case, sam_case),
        "flops_clip_path": flops[samclip_clip_case] / flops[clip_case],
        "flops_sam_path": flops[samclip_case] / flops[sam_case],
    }
    targets = {
        "params_total": check_target(ratios["params_total"], "<=", 0.50),
        "params_image": check_target(ratios["params_image"], "<=", 0.35),
        "latency_clip_path": check_target(ratios["latency_clip_path"], "<=", 0.40),
        "latency_sam_path": check_target(ratios["latency_sam_path"], "<=", 1.02),
        "sam_path_parity": check_target(parity["pred_masks_max_abs_diff"], "<=", 0.0),
    }
    # Evidence for a missed latency target: where each side of the ratio spends its time.
    profiles = {}
    missed = {"latency_clip_path": (samclip_clip_case, clip_case), "latency_sam_path": (samclip_case, sam_case)}
    with torch.inference_mode():
        for target, names in missed.items():
            if not targets[target]["met"]:
                profiles[target] = {name: top_ops(cases[name]) for name in names}

    case_rows = {
        name: {
            "gflops": flops[name] / 1e9,
            "cpu_median_ms": median(times[name]) * 1e3,
            "wall_median_ms": median(timings["wall"][name]) * 1e3,
            "cpu_times_ms": [t * 1e3 for t in times[name]],
            "wall_times_ms": [t * 1e3 for t in timings["wall"][name]],
            "peak_mib": memory[name] / 2**20,
        }
        for name in cases
    }
    tables = [
        table(
            f"Inference, batch 1 (SAM path {sam_size} px, CLIP path {clip_sizes} px)",
            ["case", "GFLOPs", "median CPU ms", "median wall ms", "peak MiB"],
            [[n, r["gflops"], r["cpu_median_ms"], r["wall_median_ms"], r["peak_mib"]] for n, r in case_rows.items()],
        ),
        table("Parameters", ["model", "count (M)"], [[k, v / 1e6] for k, v in params.items()]),
        table(
            "Ratios, SAM-CLIP / teachers (latency: median of per-round ratios of CPU time; _wall: of wall time)",
            ["ratio", "value"],
            [[k, v] for k, v in ratios.items()],
        ),
        table("Inference targets", ["target", "value", "target", "met"], target_rows(targets)),
    ]
    tables += [
        table(
            f"Missed {target}: top ops of {name}",
            ["op", "calls", "self ms"],
            [[o["op"], o["calls"], o["self_ms"]] for o in ops],
        )
        for target, per_case in profiles.items()
        for name, ops in per_case.items()
    ]
    print(render_tables(tables))

    result = {
        "sam_size": sam_size,
        "clip_sizes": clip_sizes,
        "attn_implementation": model.config._attn_implementation,
        "memory_method": "peak bytes of torch's CPU allocator during one call above its starting level "
        "(torch.profiler memory events); weights excluded",
        "cases": case_rows,
        "params": params,
        "parity": parity,
        "ratios": ratios,
        "targets": targets,
        "profiles": profiles,
        "tables": tables,
    }
    write_result(NAME, args, argv, result, started)
    return result


if __name__ == "__main__":
    main()

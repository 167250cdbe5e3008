"""SAM-CLIP Gradio Space: zero-shot classification, promptable segmentation, text-to-mask segmentation and
"label everything" (every object as a mask with its label) with one merged backbone.

The model comes from `$SAMCLIP_MODEL` (a folder or Hub id, loaded as remote code with plain transformers);
without it, from the `transformers-samclip` package's shipped mosaic model when the package is installed
(imported only then), else from the Hub copy `HUB_MODEL_ID`. Run locally with `samclip demo`.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageDraw

HUB_MODEL_ID = "transformers-samclip/samclip-mosaic"
MAX_PIXELS = int(os.environ.get("SAMCLIP_DEMO_MAX_PIXELS", str(2048 * 2048)))
MAX_LABELS = 20
IMAGE_HEIGHT = 360  # a steady layout; gradio never enlarges an image, so small ones show at their own size
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
PHOTOS_DIR = Path(tempfile.gettempdir()) / "samclip-demo-photos"
FASHION_LABELS = "T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot"
PROMPT_MODES = ("Positive point", "Negative point", "Box (two clicks)")
PROMPT_HELP = "One prompt per line: `+ x, y` (positive point), `- x, y` (negative point), `box x0, y0, x1, y1`."
# Distinct, readable colours for up to MAX_LABELS classes (Tableau 20).
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
    (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141),
    (158, 218, 229),
], dtype=np.uint8)
_NUMBER = r"-?\d+(?:\.\d+)?"
_POINT_LINE = re.compile(rf"^([+-])\s*({_NUMBER})\s*,\s*({_NUMBER})$")
_BOX_LINE = re.compile(rf"^box\s+({_NUMBER})\s*,\s*({_NUMBER})(?:\s*,\s*({_NUMBER})\s*,\s*({_NUMBER}))?$")


# ------------------------------------------------------------------------------------------ input checks
def check_image(image: Image.Image | None) -> Image.Image:
    """The uploaded image as RGB, or a `gr.Error` when it is missing or above the pixel limit."""
    if image is None:
        raise gr.Error("Upload an image (or pick an example) first.")
    if image.width * image.height > MAX_PIXELS:
        raise gr.Error(
            f"The image is {image.width}x{image.height} = {image.width * image.height:,} pixels; the limit is "
            f"{MAX_PIXELS:,}. Downscale it and upload again."
        )
    return image.convert("RGB")


def parse_labels(text: str | None) -> list[str]:
    """Comma-separated class names -> a list; `gr.Error` when empty, too many or repeated."""
    labels = [label.strip() for label in (text or "").split(",") if label.strip()]
    if not labels:
        raise gr.Error("Give at least one label, comma-separated (e.g. `cat, dog, bag`).")
    if len(labels) > MAX_LABELS:
        raise gr.Error(f"{len(labels)} labels given; the limit is {MAX_LABELS}.")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise gr.Error(f"Labels repeat: {', '.join(repeated)}. Give each class once.")
    return labels


@dataclass
class Prompts:
    """Parsed SAM prompts in original-image pixel coordinates."""

    points: list[tuple[float, float]]
    point_labels: list[int]
    box: tuple[float, float, float, float] | None


def parse_prompts(text: str | None, width: int, height: int) -> Prompts:
    """Parse the prompt lines (see `PROMPT_HELP`) and check them against a `width x height` image."""
    points, point_labels, box = [], [], None
    for number, line in enumerate((text or "").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        point, box_match = _POINT_LINE.match(line), _BOX_LINE.match(line)
        if point:
            coords = [(float(point[2]), float(point[3]))]
        elif box_match and box_match[3] is None:
            raise gr.Error(f"Line {number}: the box has one corner; click its opposite corner too.")
        elif box_match:
            if box is not None:
                raise gr.Error("Give at most one box.")
            x0, y0, x1, y1 = (float(box_match[i]) for i in range(1, 5))
            coords = [(x0, y0), (x1, y1)]
        else:
            raise gr.Error(f"Line {number} ({line!r}) is not a prompt. {PROMPT_HELP}")
        for x, y in coords:
            if not (0 <= x < width and 0 <= y < height):
                raise gr.Error(f"Line {number}: ({x:g}, {y:g}) is outside the {width}x{height} image.")
        if point:
            points.append(coords[0])
            point_labels.append(1 if point[1] == "+" else 0)
        else:
            box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                raise gr.Error(f"Line {number}: the box has zero area; its corners must differ in x and in y.")
    if box is None and 1 not in point_labels:
        raise gr.Error("Add a positive point or a box: click on the object (or type a prompt). " + PROMPT_HELP)
    return Prompts(points, point_labels, box)


def add_click(prompts: str | None, mode: str, evt: gr.SelectData) -> str:
    """Append the clicked pixel to the prompt lines: a point, or a box corner (the second click closes the box,
    replacing any earlier box)."""
    x, y = (int(v) for v in evt.index)
    lines = [line for line in (prompts or "").splitlines() if line.strip()]
    if mode == PROMPT_MODES[2]:
        pending = [line for line in lines if (m := _BOX_LINE.match(line.strip())) and m[3] is None]
        lines = [line for line in lines if not line.strip().startswith("box")]
        if pending:
            x0, y0 = _BOX_LINE.match(pending[-1].strip()).group(1, 2)
            lines.append(f"box {x0}, {y0}, {x}, {y}")
        else:
            lines.append(f"box {x}, {y}")
    else:
        lines.append(f"{'+' if mode == PROMPT_MODES[0] else '-'} {x}, {y}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ drawing
def blend(image: Image.Image, colours: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend an `(H, W, 3)` colour layer over `image` where it is non-black."""
    base = np.asarray(image, dtype=np.float32)
    painted = colours.any(-1, keepdims=True)
    mixed = np.where(painted, (1 - alpha) * base + alpha * colours.astype(np.float32), base)
    return Image.fromarray(mixed.round().astype(np.uint8))


def draw_prompts(image: Image.Image, prompts: Prompts) -> Image.Image:
    """Mark points (green positive, red negative) and the box on a copy of `image`."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    radius = max(2, round(max(image.size) / 100))
    for (x, y), label in zip(prompts.points, prompts.point_labels):
        colour = (0, 220, 0) if label == 1 else (230, 0, 0)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(255, 255, 255))
    if prompts.box is not None:
        draw.rectangle(prompts.box, outline=(255, 215, 0), width=max(1, radius // 2))
    return image


def swatch_item(colour, text: str) -> str:
    """One legend line: a colour swatch and `text` (escaped)."""
    return (f'<li style="list-style:none;margin:2px 0"><span style="display:inline-block;width:14px;height:14px;'
            f'background:rgb{tuple(int(c) for c in colour)};margin-right:6px;vertical-align:middle"></span>'
            f"{html.escape(text)}</li>")


def legend_html(labels: list[str], coverage: list[float]) -> str:
    """A colour legend: one swatch per label with the share of pixels it covers."""
    items = "".join(swatch_item(PALETTE[i], f"{label} ({share:.1%})") for i, (label, share) in enumerate(zip(labels, coverage)))
    return f'<ul class="samclip-legend" style="padding:0">{items}</ul>'


# -------------------------------------------------------------------------------------------------- model
class SamClipDemo:
    """A loaded SAM-CLIP model and processor, and the three tasks of the Space as plain functions."""

    def __init__(self, model, processor, description: str):
        self.model = model.eval()
        self.processor = processor
        self.description = description

    @classmethod
    def load(cls, source: str | None = None) -> SamClipDemo:
        """Load `source` (folder or Hub id; default `$SAMCLIP_MODEL`, else the shipped mosaic model)."""
        source = source or os.environ.get("SAMCLIP_MODEL")
        if not source:
            try:
                from transformers_samclip.hub import load_mosaic_model
            except ImportError:  # the Space without the package: the Hub copy, as remote code
                source = HUB_MODEL_ID
            else:
                loaded = load_mosaic_model()
                return cls(loaded.model, loaded.processor, loaded.description)
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(source, trust_remote_code=True)
        return cls(model, AutoProcessor.from_pretrained(source, trust_remote_code=True), f"`{source}`")

    @torch.no_grad()
    def classify(self, image: Image.Image | None, labels_text: str) -> dict[str, float]:
        """Zero-shot classification: `{label: probability}` over the given labels."""
        image, labels = check_image(image), parse_labels(labels_text)
        class_embeds = self.model.encode_class_names(labels, self.processor.tokenizer)
        inputs = self.processor(images=image, view="clip")
        image_embeds = self.model(pixel_values=inputs["pixel_values"]).image_embeds
        logits = image_embeds @ class_embeds.T * self.model.logit_scale.exp()
        return dict(zip(labels, logits.softmax(-1)[0].tolist()))

    @torch.no_grad()
    def segment(self, image: Image.Image | None, prompts_text: str) -> tuple[Image.Image, float]:
        """Promptable segmentation: the best of SAM's candidate masks as an overlay, and its predicted IoU."""
        image = check_image(image)
        prompts = parse_prompts(prompts_text, image.width, image.height)
        kwargs = {}
        if prompts.points:
            kwargs.update(input_points=[[[list(p) for p in prompts.points]]], input_labels=[[prompts.point_labels]])
        if prompts.box is not None:
            kwargs["input_boxes"] = [[list(prompts.box)]]
        inputs = self.processor(images=image, **kwargs)
        outputs = self.model(**inputs)
        masks = self.processor.post_process_masks(
            outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0][0]
        best = int(outputs.iou_scores[0, 0].argmax())
        colours = np.zeros((image.height, image.width, 3), dtype=np.uint8)
        colours[masks[best].numpy()] = PALETTE[0]
        return draw_prompts(blend(image, colours), prompts), round(float(outputs.iou_scores[0, 0, best]), 4)

    @torch.no_grad()
    def segment_text(
        self, image: Image.Image | None, labels_text: str, refine: bool, background_threshold: float | None = None
    ) -> tuple[Image.Image, str]:
        """Text-to-mask semantic segmentation: a coloured overlay and its legend (HTML). Pixels whose best cosine
        is below `background_threshold` stay uncoloured (default: the threshold the model carries in its config;
        -1 turns background off)."""
        image, labels = check_image(image), parse_labels(labels_text)
        class_embeds = self.model.encode_class_names(labels, self.processor.tokenizer)
        threshold = background_threshold
        if refine:
            inputs = self.processor(images=image, view="sam")
            output = self.model.semantic_segmentation_refined(
                inputs["pixel_values"], class_embeds, background_threshold=threshold
            )
        else:
            inputs = self.processor(images=image, view="dense")
            output = self.model.semantic_segmentation(inputs["pixel_values"], class_embeds, background_threshold=threshold)
        label_map = self.processor.post_process_semantic_segmentation(
            output.logits, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0].numpy()
        colours = np.zeros((*label_map.shape, 3), dtype=np.uint8)
        colours[label_map > 0] = PALETTE[label_map[label_map > 0] - 1]
        coverage = [float((label_map == i + 1).mean()) for i in range(len(labels))]
        return blend(image, colours, alpha=0.6), legend_html(labels, coverage)


    @torch.no_grad()
    def label_everything(
        self, image: Image.Image | None, labels_text: str, background_threshold: float | None = None
    ) -> tuple[Image.Image, str]:
        """Open-vocabulary instance segmentation from one encoder pass: each object SAM's automatic masks find,
        coloured and captioned with its label and score, and the list of instances (HTML). Masks whose best label
        cosine is below `background_threshold` (default: the model's calibrated one) are dropped as "none of
        these" (default -1: every mask is kept)."""
        image, labels = check_image(image), parse_labels(labels_text)
        class_embeds = self.model.encode_class_names(labels, self.processor.tokenizer)
        inputs = self.processor(images=image, view="sam")
        output = self.model.instance_segmentation(
            inputs["pixel_values"], class_embeds, background_threshold=background_threshold,
            input_sizes=inputs["reshaped_input_sizes"].tolist(),
        )
        (instances,) = self.processor.post_process_panoptic_segmentation(
            output, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        segmentation = instances["segmentation"].numpy()
        colours = np.zeros((image.height, image.width, 3), dtype=np.uint8)
        for segment in instances["segments_info"]:
            colours[segmentation == segment["id"]] = PALETTE[(segment["id"] - 1) % len(PALETTE)]
        overlay = blend(image, colours, alpha=0.6)
        draw = ImageDraw.Draw(overlay)
        rows = []
        for segment in instances["segments_info"]:
            ys, xs = np.nonzero(segmentation == segment["id"])
            caption = f"{labels[segment['label_id']]} {segment['score']:.2f}"
            draw.text((int(xs.min()), int(ys.min())), caption, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
            rows.append(swatch_item(PALETTE[(segment["id"] - 1) % len(PALETTE)], caption))
        summary = "".join(rows) or '<li style="list-style:none">No object found.</li>'
        return overlay, f'<ul class="samclip-instances" style="padding:0">{summary}</ul>'


# ------------------------------------------------------------------------------------------------ the app
def example_photos() -> dict[str, Path]:
    """Real photos from scikit-image (astronaut, chelsea the cat, coffee), written once as PNG."""
    from skimage import data

    PHOTOS_DIR.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("astronaut", "chelsea", "coffee"):
        paths[name] = PHOTOS_DIR / f"{name}.png"
        if not paths[name].exists():
            Image.fromarray(getattr(data, name)()).save(paths[name])
    return paths


def build_demo(demo: SamClipDemo) -> gr.Blocks:
    """The four-tab Blocks app around a loaded model."""
    mosaics = {index: str(EXAMPLES_DIR / f"mosaic-{index}.png") for index in (0, 2, 10)}
    photos = {name: str(path) for name, path in example_photos().items()}
    # The mosaic model's text tower knows ten clothing classes on textured backgrounds; a real photo shows the
    # limits of such a model, so it is offered with those labels and said to be out of domain.
    photo_labels = FASHION_LABELS
    with gr.Blocks(title="SAM-CLIP") as app:
        gr.Markdown(
            "# SAM-CLIP: one backbone for CLIP and SAM tasks\n"
            "SAM's image encoder shared by SAM's mask decoder and a CLIP head distilled from a CLIP teacher "
            "([arXiv 2310.15308](https://arxiv.org/abs/2310.15308)).\n\n"
            f"**Model:** {demo.description}\n\n"
            "The mosaic-world model (the default) was distilled from tiny teachers that know ten Fashion-MNIST "
            "classes pasted on textured backgrounds: the mosaic examples show what it can do; the real photos "
            "(scikit-image's astronaut, cat and coffee) show what it cannot, as any such model outside its domain. "
            "Load real SAM and CLIP teachers' merge for photos."
        )
        with gr.Tab("Zero-shot classification"):
            with gr.Row():
                with gr.Column():
                    cls_image = gr.Image(type="pil", format="png", height=IMAGE_HEIGHT, label="Image")
                    cls_labels = gr.Textbox(label="Labels (comma-separated)", value=FASHION_LABELS)
                    cls_button = gr.Button("Classify", variant="primary")
                cls_output = gr.Label(num_top_classes=MAX_LABELS, label="Ranked labels")
            gr.Examples(
                [[path, FASHION_LABELS] for path in mosaics.values()] + [[photos["chelsea"], photo_labels]],
                inputs=[cls_image, cls_labels],
            )
            cls_button.click(demo.classify, [cls_image, cls_labels], cls_output, api_name="classify")
        with gr.Tab("Promptable segmentation"):
            with gr.Row():
                with gr.Column():
                    seg_image = gr.Image(type="pil", format="png", height=IMAGE_HEIGHT, label="Image (click to add prompts)")
                    seg_mode = gr.Radio(list(PROMPT_MODES), value=PROMPT_MODES[0], label="A click adds")
                    seg_prompts = gr.Textbox(label="Prompts", lines=3, info=PROMPT_HELP)
                    with gr.Row():
                        seg_button = gr.Button("Segment", variant="primary")
                        gr.ClearButton(seg_prompts, value="Clear prompts")
                with gr.Column():
                    seg_output = gr.Image(type="pil", format="png", height=IMAGE_HEIGHT, label="Mask")
                    seg_iou = gr.Number(label="Predicted IoU")
            gr.Examples(
                [[mosaics[0], "+ 27, 30"], [mosaics[2], "box 11, 8, 74, 75"], [photos["astronaut"], "+ 250, 150\n- 400, 450"]],
                inputs=[seg_image, seg_prompts],
            )
            seg_image.select(add_click, [seg_prompts, seg_mode], seg_prompts, api_name=False)
            seg_image.upload(lambda: "", None, seg_prompts, api_name=False)  # prompts belong to the old image
            seg_button.click(demo.segment, [seg_image, seg_prompts], [seg_output, seg_iou], api_name="segment")
        with gr.Tab("Text-to-mask segmentation"):
            with gr.Row():
                with gr.Column():
                    sem_image = gr.Image(type="pil", format="png", height=IMAGE_HEIGHT, label="Image")
                    sem_labels = gr.Textbox(label="Class names (comma-separated)", value="Bag, Sandal, Coat")
                    sem_refine = gr.Checkbox(label="Refine with the SAM head", value=False)
                    stored = demo.model.config.background_threshold
                    sem_threshold = gr.Slider(
                        -1, 1, value=-1 if stored is None else round(stored, 3), step=0.005,
                        label="Background threshold (cosine; starts at the model's calibrated one; -1 = no background)")
                    sem_button = gr.Button("Segment", variant="primary")
                with gr.Column():
                    sem_output = gr.Image(type="pil", format="png", height=IMAGE_HEIGHT, label="Overlay")
                    sem_legend = gr.HTML(label="Legend")
            gr.Examples(
                [[mosaics[2], "Bag, Sandal, Coat", False], [mosaics[2], "Bag, Sandal, Coat", True],
                 [mosaics[10], "Bag, Coat, Pullover", True],
                 [photos["coffee"], "Bag, Sandal, Coat", False]],
                inputs=[sem_image, sem_labels, sem_refine],
            )
            sem_button.click(
                demo.segment_text, [sem_image, sem_labels, sem_refine, sem_threshold], [sem_output, sem_legend],
                api_name="segment_text",
            )
        with gr.Tab("Label everything"):
            with gr.Row():
                with gr.Column():
                    all_image = gr.Image(type="pil", format="png", height=IMAGE_HEIGHT, label="Image")
                    all_labels = gr.Textbox(label="Labels (comma-separated)", value=FASHION_LABELS)
                    all_threshold = gr.Slider(
                        -1, 1, value=-1, step=0.005,
                        label="Reject a mask as 'none of these' below this cosine (-1 = keep every mask)")
                    all_button = gr.Button("Label everything", variant="primary")
                with gr.Column():
                    all_output = gr.Image(type="pil", format="png", height=IMAGE_HEIGHT, label="Instances")
                    all_list = gr.HTML(label="Instances")
            gr.Examples(
                [[mosaics[0], FASHION_LABELS], [mosaics[10], FASHION_LABELS], [photos["chelsea"], photo_labels]],
                inputs=[all_image, all_labels],
            )
            all_button.click(demo.label_everything, [all_image, all_labels, all_threshold], [all_output, all_list],
                             api_name="label_everything")
    return app


def main(
    model: str | None = None, port: int = 7860, share: bool = False, threads: int = 1, host: str = "127.0.0.1"
) -> None:
    """Load the model and serve the app on `host` (blocks until interrupted)."""
    torch.set_num_threads(threads)
    app = build_demo(SamClipDemo.load(model))
    app.launch(server_name=host, server_port=port, share=share, allowed_paths=[str(EXAMPLES_DIR), str(PHOTOS_DIR)])


if __name__ == "__main__":  # on Spaces, which set GRADIO_SERVER_NAME/PORT
    main(
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        threads=int(os.environ.get("SAMCLIP_THREADS", "1")),
        host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
    )

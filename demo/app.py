"""SAM-CLIP Gradio Space: zero-shot classification, promptable segmentation, text-to-mask segmentation and
"label everything" (every object as a mask with its label) with one merged backbone.

The model comes from `$SAMCLIP_MODEL` (a folder or Hub id, loaded as remote code with plain transformers);
without it, from the `transformers-samclip` package's shipped mosaic model when the package is installed
(imported only then), else from the Hub copy `HUB_MODEL_ID`. Run locally with `samclip demo`.

Masks and labels are shown with `gr.AnnotatedImage` (hover a legend entry to pick its mask out); results of small
images (at most half of `DISPLAY_SIZE` on their longer side) are enlarged by an integer factor with nearest-neighbour
sampling for display only (the model always sees the uploaded pixels). Examples are cached at launch in a folder
named for the app and the model
(`examples_cache_dir`). On a ZeroGPU Space (the `spaces` package present) each task runs under `spaces.GPU`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from gradio import processing_utils
from PIL import Image, ImageDraw

try:  # Hugging Face's ZeroGPU helper: installed on Spaces, absent (and not needed) elsewhere
    import spaces
except ImportError:
    spaces = None

HUB_MODEL_ID = "transformers-samclip/samclip-mosaic"
MAX_PIXELS = int(os.environ.get("SAMCLIP_DEMO_MAX_PIXELS", str(2048 * 2048)))
MAX_LABELS = 20
IMAGE_HEIGHT = 360  # a steady layout for the inputs; gradio never enlarges an input image
DISPLAY_SIZE = 512  # results are enlarged (nearest neighbour, integer factor) until their longer side nears this
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
PHOTOS_DIR = Path(tempfile.gettempdir()) / "samclip-demo-photos"
FASHION_LABELS = "T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot"
PROMPT_MODES = ("Positive point", "Negative point", "Box (two clicks)")
# Text-to-mask methods, the best measured first (200 test mosaics: one pass 0.32 mIoU, refined 0.21, plain 0.12).
TEXT_TO_MASK_METHODS = ("One pass: labelled masks", "SAM-refined map", "Plain dense map")
PROMPT_HELP = "One prompt per line: `+ x, y` (positive point), `- x, y` (negative point), `box x0, y0, x1, y1`."
MASK_OPACITY = 0.7  # AnnotatedImage paints a mask's value as its alpha: the image stays visible underneath
# Distinct, readable mask colours (Tableau 20), given to AnnotatedImage in order; a lone prompted mask gets a hot
# pink that stands out on the mosaics' textured backgrounds and on photos (Tableau's blue vanished on a teal shoe).
PROMPTED_MASK_COLOUR = "#ff1f8f"
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
]
_NUMBER = r"-?\d+(?:\.\d+)?"
_POINT_LINE = re.compile(rf"^([+-])\s*({_NUMBER})\s*,\s*({_NUMBER})$")
_BOX_LINE = re.compile(rf"^box\s+({_NUMBER})\s*,\s*({_NUMBER})(?:\s*,\s*({_NUMBER})\s*,\s*({_NUMBER}))?$")


# ------------------------------------------------------------------------------------ gradio under load
def save_pil_to_cache(image: Image.Image, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """gradio's `processing_utils.save_pil_to_cache` without its race. gradio names an output image's file by the
    hash of its bytes and rewrites it in place (truncate, then write) on every call, so when two requests get the
    same answer, the second truncates the file while the first client downloads it ("peer closed connection
    without sending complete message body", at 4 concurrent clients). Here a file is written once, under a
    temporary name then renamed into place (atomic), and later calls only refresh its age for gradio's cleanup."""
    data = processing_utils.encode_pil_to_bytes(image, format)
    path = (Path(cache_dir) / processing_utils.hash_bytes(data) / f"{name}.{format}").resolve()
    if path.exists():
        os.utime(path)
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{name}-", delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)
    return str(path)


# gradio's image components (AnnotatedImage, Image) call it through the module at each answer.
processing_utils.save_pil_to_cache = save_pil_to_cache


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
# What the three segmentation tasks return to `gr.AnnotatedImage`: the base image and (mask layer, label) pairs.
AnnotatedValue = tuple[Image.Image, list[tuple[np.ndarray, str]]]
INSTANCE_COLUMNS = ["#", "label", "score", "pixels", "box (x0, y0, x1, y1)"]


def display_scale(width: int, height: int) -> int:
    """The integer factor that enlarges a `width x height` image until its longer side nears `DISPLAY_SIZE`
    (1 for an image already that large): a 128 px mosaic is shown at 512 px."""
    return max(1, DISPLAY_SIZE // max(width, height))


def enlarge(image: Image.Image, scale: int) -> Image.Image:
    """`image` `scale` times larger with nearest-neighbour sampling, so every pixel the model saw (and every mask
    edge on it) stays a sharp `scale x scale` block instead of a blur."""
    if scale == 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def mask_layer(mask: np.ndarray, scale: int) -> np.ndarray:
    """A bool `(H, W)` mask as an AnnotatedImage layer (its value becomes the painted alpha), enlarged like the
    image it lies on."""
    layer = mask.astype(np.float32) * MASK_OPACITY
    return layer.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else layer


def draw_prompts(image: Image.Image, prompts: Prompts, scale: int = 1) -> Image.Image:
    """Mark points (green positive, red negative) and the box on a copy of `image`, an enlargement by `scale` of
    the image the prompts refer to (a point marks the centre of its pixel)."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    radius = max(3, round(max(image.size) / 80))
    for (x, y), label in zip(prompts.points, prompts.point_labels):
        x, y = (x + 0.5) * scale, (y + 0.5) * scale
        colour = (0, 220, 0) if label == 1 else (230, 0, 0)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(255, 255, 255), width=2)
    if prompts.box is not None:
        draw.rectangle([v * scale for v in prompts.box], outline=(255, 215, 0), width=max(2, radius // 2))
    return image


def coloured(value: AnnotatedValue, palette: list[str] = PALETTE) -> gr.AnnotatedImage:
    """`value` as an AnnotatedImage update whose i-th mask (and legend entry) is painted in `palette[i]` (cycled).
    Without a colour map gradio paints every mask red and tints it in the browser with a hue rotation, which turns
    most masks dark and muddy (an instance on a green shirt was invisible)."""
    labels = [label for _, label in value[1]]
    return gr.AnnotatedImage(
        value=value, color_map={label: palette[i % len(palette)] for i, label in enumerate(labels)}
    )


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The inclusive pixel box `(x0, y0, x1, y1)` of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


# -------------------------------------------------------------------------------------------------- model
def on_gpu(function):
    """`spaces.GPU(function)` where the `spaces` package is installed (a ZeroGPU Space lends a GPU for each call),
    else `function` unchanged."""
    return function if spaces is None else spaces.GPU(function)


def model_fingerprint(model) -> str:
    """A short hash of a model's config and weights: two models share it only when they compute the same thing."""
    digest = hashlib.sha256(model.config.to_json_string().encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class SamClipDemo:
    """A loaded SAM-CLIP model and processor, and the four tasks of the Space as plain functions."""

    def __init__(self, model, processor, description: str):
        self.model = model.eval()
        self.processor = processor
        self.description = description
        # The model's own code holds its mask generator (the package's, or the remote code it was loaded with).
        self.generator = sys.modules[type(model).__module__].SamClipMaskGenerator(self.model)

    @classmethod
    def load(cls, source: str | None = None) -> SamClipDemo:
        """Load `source` (folder or Hub id; default `$SAMCLIP_MODEL`, else the shipped mosaic model), on the GPU
        when one is visible (a ZeroGPU Space shows one once `spaces` is imported)."""
        source = source or os.environ.get("SAMCLIP_MODEL")
        if not source:
            try:
                from transformers_samclip.mosaic import load_mosaic_model
            except ImportError:  # the Space without the package: the Hub copy, as remote code
                source = HUB_MODEL_ID
            else:
                loaded = load_mosaic_model()
                model, processor, description = loaded.model, loaded.processor, loaded.description
        if source:
            from transformers import AutoModel, AutoProcessor

            model = AutoModel.from_pretrained(source, trust_remote_code=True)
            processor, description = AutoProcessor.from_pretrained(source, trust_remote_code=True), f"`{source}`"
        if torch.cuda.is_available():
            model = model.to("cuda")
        return cls(model, processor, description)

    def _on_device(self, inputs) -> dict:
        """The processor's tensors moved to the model's device (the processor makes them on the CPU)."""
        return {key: value.to(self.model.device) for key, value in inputs.items()}

    @torch.no_grad()
    def classify(self, image: Image.Image | None, labels_text: str) -> dict[str, float]:
        """Zero-shot classification: `{label: probability}` over the given labels."""
        image, labels = check_image(image), parse_labels(labels_text)
        class_embeds = self.model.encode_class_names(labels, self.processor.tokenizer)
        inputs = self._on_device(self.processor(images=image, view="clip"))
        image_embeds = self.model(pixel_values=inputs["pixel_values"]).image_embeds
        logits = image_embeds @ class_embeds.T * self.model.logit_scale.exp()
        return dict(zip(labels, logits.softmax(-1)[0].tolist()))

    @torch.no_grad()
    def segment(self, image: Image.Image | None, prompts_text: str) -> tuple[AnnotatedValue, float]:
        """Promptable segmentation: the best of SAM's candidate masks on the (enlarged) image with the prompts
        drawn, and its predicted IoU."""
        image = check_image(image)
        prompts = parse_prompts(prompts_text, image.width, image.height)
        kwargs = {}
        if prompts.points:
            kwargs.update(input_points=[[[list(p) for p in prompts.points]]], input_labels=[[prompts.point_labels]])
        if prompts.box is not None:
            kwargs["input_boxes"] = [[list(prompts.box)]]
        inputs = self.processor(images=image, **kwargs)
        outputs = self.model(**self._on_device(inputs))
        masks = self.processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0][0]
        best = int(outputs.iou_scores[0, 0].argmax())
        iou = round(float(outputs.iou_scores[0, 0, best]), 4)
        scale = display_scale(image.width, image.height)
        base = draw_prompts(enlarge(image, scale), prompts, scale)
        return (base, [(mask_layer(masks[best].numpy(), scale), f"mask (predicted IoU {iou:.2f})")]), iou

    @torch.no_grad()
    def segment_text(
        self,
        image: Image.Image | None,
        labels_text: str,
        method: str = TEXT_TO_MASK_METHODS[0],
        background_threshold: float | None = None,
    ) -> AnnotatedValue:
        """Text-to-mask semantic segmentation: one mask per class name, labelled with the share of the image it
        covers. `method` is one of :data:`TEXT_TO_MASK_METHODS`: the one-pass labelled masks painted (the best
        measured, default), the SAM-refined map or the plain dense map. On the two maps, pixels whose best cosine is
        below `background_threshold` stay uncoloured (default: the threshold the model carries in its config; -1
        turns background off); the painted masks leave uncoloured what no mask covers."""
        image, labels = check_image(image), parse_labels(labels_text)
        if method not in TEXT_TO_MASK_METHODS:
            raise gr.Error(f"Unknown method {method!r}: choose one of {', '.join(TEXT_TO_MASK_METHODS)}.")
        class_embeds = self.model.encode_class_names(labels, self.processor.tokenizer)
        threshold = background_threshold
        if method == TEXT_TO_MASK_METHODS[0]:
            inputs = self.processor(images=image, view="sam")
            output = self.generator.semantic_segmentation_from_instances(
                self._on_device(inputs)["pixel_values"],
                class_embeds,
                input_sizes=inputs["reshaped_input_sizes"].tolist(),
            )
        elif method == TEXT_TO_MASK_METHODS[1]:
            inputs = self.processor(images=image, view="sam")
            output = self.generator.semantic_segmentation_refined(
                self._on_device(inputs)["pixel_values"], class_embeds, background_threshold=threshold
            )
        else:
            inputs = self.processor(images=image, view="dense")
            output = self.generator.semantic_segmentation(
                self._on_device(inputs)["pixel_values"], class_embeds, background_threshold=threshold
            )
        label_map = self.processor.post_process_semantic_segmentation(
            output.logits.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0].numpy()
        scale = display_scale(image.width, image.height)
        annotations = []
        for index, label in enumerate(labels):
            mask = label_map == index + 1
            annotations.append((mask_layer(mask, scale), f"{label} ({mask.mean():.1%})"))
        return enlarge(image, scale), annotations

    @torch.no_grad()
    def label_everything(
        self, image: Image.Image | None, labels_text: str, background_threshold: float | None = None
    ) -> tuple[AnnotatedValue, list[list]]:
        """Open-vocabulary instance segmentation from one encoder pass: each object SAM's automatic masks find,
        labelled `"n. label score"`, and a table of the instances (number, label, score, pixels, box at the
        original size). Masks whose best label cosine is below `background_threshold` (default: the model's
        calibrated one) are dropped as "none of these" (-1: every mask is kept)."""
        image, labels = check_image(image), parse_labels(labels_text)
        class_embeds = self.model.encode_class_names(labels, self.processor.tokenizer)
        inputs = self.processor(images=image, view="sam")
        output = self.generator.instance_segmentation(
            self._on_device(inputs)["pixel_values"],
            class_embeds,
            background_threshold=background_threshold,
            input_sizes=inputs["reshaped_input_sizes"].tolist(),
        )
        (instances,) = self.processor.post_process_panoptic_segmentation(
            output, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        segmentation = instances["segmentation"].numpy()
        scale = display_scale(image.width, image.height)
        annotations, rows = [], []
        for number, segment in enumerate(instances["segments_info"], start=1):
            mask = segmentation == segment["id"]
            label, score = labels[segment["label_id"]], round(float(segment["score"]), 3)
            annotations.append((mask_layer(mask, scale), f"{number}. {label} {score:.2f}"))
            rows.append([number, label, score, int(mask.sum()), ", ".join(str(v) for v in mask_box(mask))])
        return (enlarge(image, scale), annotations), rows


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


def examples_cache_dir(demo: SamClipDemo) -> Path:
    """Where gradio caches the examples' outputs: a folder named for this app file and the model, under
    `$GRADIO_EXAMPLES_CACHE` (default: `samclip-demo-examples` in the system temp dir, writable offline and in CI).
    gradio reuses a cache folder without asking what filled it, so another model or app version gets its own."""
    root = Path(os.environ.get("GRADIO_EXAMPLES_CACHE") or Path(tempfile.gettempdir()) / "samclip-demo-examples")
    digest = hashlib.sha256(Path(__file__).read_bytes() + model_fingerprint(demo.model).encode()).hexdigest()
    return root / digest[:16]


@contextlib.contextmanager
def examples_cached_in(folder: Path):
    """Point gradio's example cache at `folder` while the app is built (each `gr.Examples` reads
    `$GRADIO_EXAMPLES_CACHE` when it is made), then restore the variable."""
    before = os.environ.get("GRADIO_EXAMPLES_CACHE")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            del os.environ["GRADIO_EXAMPLES_CACHE"]
        else:
            os.environ["GRADIO_EXAMPLES_CACHE"] = before


def build_demo(demo: SamClipDemo, cache_dir: Path | None = None) -> gr.Blocks:
    """The four-tab Blocks app around a loaded model; its examples' outputs are computed at launch and cached in
    `cache_dir` (default `examples_cache_dir(demo)`)."""
    cache_dir = cache_dir or examples_cache_dir(demo)
    mosaics = {index: str(EXAMPLES_DIR / f"mosaic-{index}.png") for index in (0, 2, 21, 36)}
    photos = {name: str(path) for name, path in example_photos().items()}
    classify, segment, segment_text, label_everything = (
        on_gpu(task) for task in (demo.classify, demo.segment, demo.segment_text, demo.label_everything)
    )

    # The page's handlers: the same answers with each mask in its own colour (done outside the GPU call, which only
    # returns arrays). That colour map travels as a component update, which gradio_client would hand to API users
    # as is, so API clients get the plain answers through `api_endpoint` instead.
    def segment_coloured(image: Image.Image | None, prompts: str):
        value, iou = segment(image, prompts)
        return coloured(value, [PROMPTED_MASK_COLOUR]), iou

    def segment_text_coloured(image: Image.Image | None, labels: str, method: str, background_threshold: float):
        return coloured(segment_text(image, labels, method, background_threshold))

    def label_everything_coloured(image: Image.Image | None, labels: str, background_threshold: float):
        value, table = label_everything(image, labels, background_threshold)
        return coloured(value), table

    def on_click(button: gr.Button, page_fn, api_fn, inputs: list, outputs: list, api_name: str) -> None:
        """`button` runs `page_fn` for the page (not offered to API clients); `api_name` runs `api_fn` for API
        clients, through a hidden trigger."""
        button.click(page_fn, inputs, outputs, api_visibility="private")
        gr.Button(visible=False).click(api_fn, inputs, outputs, api_name=api_name)

    # The mosaic model's text tower knows ten clothing classes on textured backgrounds; a real photo shows the
    # limits of such a model, so it is offered with those labels and said to be out of domain.
    photo_labels = FASHION_LABELS
    with examples_cached_in(cache_dir), gr.Blocks(title="SAM-CLIP") as app:
        gr.Markdown(
            "# SAM-CLIP: one backbone for CLIP and SAM tasks\n"
            "SAM's image encoder shared by SAM's mask decoder and a CLIP head distilled from a CLIP teacher "
            "([arXiv 2310.15308](https://arxiv.org/abs/2310.15308)).\n\n"
            f"**Model:** {demo.description}\n\n"
            "The mosaic-world model (the default) was distilled from tiny teachers that know ten Fashion-MNIST "
            "classes pasted on textured backgrounds: the mosaic examples show what it can do; the real photos "
            "(scikit-image's astronaut, cat and coffee) show what it cannot, as any such model outside its domain. "
            "Load real SAM and CLIP teachers' merge for photos. Small images are shown enlarged (each pixel a "
            "block); hover a legend entry to pick out its mask."
        )
        with gr.Tab("Zero-shot classification"):
            with gr.Row():
                with gr.Column():
                    cls_image = gr.Image(type="pil", format="png", height=IMAGE_HEIGHT, label="Image")
                    cls_labels = gr.Textbox(label="Labels (comma-separated)", value=FASHION_LABELS)
                    cls_button = gr.Button("Classify", variant="primary")
                cls_output = gr.Label(num_top_classes=MAX_LABELS, label="Ranked labels")
            gr.Examples(
                [[mosaics[index], FASHION_LABELS] for index in (0, 2, 36)] + [[photos["chelsea"], photo_labels]],
                inputs=[cls_image, cls_labels],
                outputs=cls_output,
                fn=classify,
                cache_examples=True,
            )
            cls_button.click(classify, [cls_image, cls_labels], cls_output, api_name="classify")
        with gr.Tab("Promptable segmentation"):
            with gr.Row():
                with gr.Column():
                    seg_image = gr.Image(
                        type="pil", format="png", height=IMAGE_HEIGHT, label="Image (click to add prompts)"
                    )
                    seg_mode = gr.Radio(list(PROMPT_MODES), value=PROMPT_MODES[0], label="A click adds")
                    seg_prompts = gr.Textbox(label="Prompts", lines=3, info=PROMPT_HELP)
                    with gr.Row():
                        seg_button = gr.Button("Segment", variant="primary")
                        gr.ClearButton(seg_prompts, value="Clear prompts")
                with gr.Column():
                    seg_output = gr.AnnotatedImage(format="png", height=DISPLAY_SIZE, label="Mask")
                    seg_iou = gr.Number(label="Predicted IoU")
            gr.Examples(
                [
                    [mosaics[0], "+ 27, 30"],
                    [mosaics[2], "box 11, 8, 74, 75"],
                    [photos["astronaut"], "+ 250, 150\n- 400, 450"],
                ],
                inputs=[seg_image, seg_prompts],
                outputs=[seg_output, seg_iou],
                fn=segment_coloured,
                cache_examples=True,
            )
            seg_image.select(add_click, [seg_prompts, seg_mode], seg_prompts, api_name=False)
            seg_image.upload(lambda: "", None, seg_prompts, api_name=False)  # prompts belong to the old image
            on_click(seg_button, segment_coloured, segment, [seg_image, seg_prompts], [seg_output, seg_iou], "segment")
        with gr.Tab("Text-to-mask segmentation"):
            with gr.Row():
                with gr.Column():
                    sem_image = gr.Image(type="pil", format="png", height=IMAGE_HEIGHT, label="Image")
                    sem_labels = gr.Textbox(label="Class names (comma-separated)", value="Bag, Sandal, Coat")
                    one_pass, refined, _ = TEXT_TO_MASK_METHODS
                    sem_method = gr.Radio(list(TEXT_TO_MASK_METHODS), value=TEXT_TO_MASK_METHODS[0], label="Method")
                    stored = demo.model.config.background_threshold
                    stored = -1 if stored is None else round(stored, 3)
                    sem_threshold = gr.Slider(
                        -1,
                        1,
                        value=stored,
                        step=0.005,
                        label=(
                            "Background threshold (cosine; starts at the model's calibrated one; -1 = no background)"
                        ),
                    )
                    sem_button = gr.Button("Segment", variant="primary")
                sem_output = gr.AnnotatedImage(format="png", height=DISPLAY_SIZE, label="Classes (share of the image)")
            gr.Examples(
                [
                    [mosaics[36], "Ankle boot, Sandal, Coat", one_pass, stored],
                    [mosaics[36], "Ankle boot, Sandal, Coat", refined, stored],
                    [mosaics[21], "Bag, Trouser, Sneaker", one_pass, stored],
                    [photos["coffee"], "Bag, Sandal, Coat", one_pass, stored],
                ],
                inputs=[sem_image, sem_labels, sem_method, sem_threshold],
                outputs=sem_output,
                fn=segment_text_coloured,
                cache_examples=True,
            )
            on_click(
                sem_button,
                segment_text_coloured,
                segment_text,
                [sem_image, sem_labels, sem_method, sem_threshold],
                [sem_output],
                "segment_text",
            )
        with gr.Tab("Label everything"):
            with gr.Row():
                with gr.Column():
                    all_image = gr.Image(type="pil", format="png", height=IMAGE_HEIGHT, label="Image")
                    all_labels = gr.Textbox(label="Labels (comma-separated)", value=FASHION_LABELS)
                    all_threshold = gr.Slider(
                        -1,
                        1,
                        value=-1,
                        step=0.005,
                        label="Reject a mask as 'none of these' below this cosine (-1 = keep every mask)",
                    )
                    all_button = gr.Button("Label everything", variant="primary")
                all_output = gr.AnnotatedImage(format="png", height=DISPLAY_SIZE, label="Instances")
            all_table = gr.Dataframe(
                headers=INSTANCE_COLUMNS, label="Instances (box at the original size)", interactive=False
            )
            gr.Examples(
                [
                    [mosaics[2], FASHION_LABELS, -1],
                    [mosaics[0], FASHION_LABELS, -1],
                    [photos["chelsea"], photo_labels, -1],
                ],
                inputs=[all_image, all_labels, all_threshold],
                outputs=[all_output, all_table],
                fn=label_everything_coloured,
                cache_examples=True,
            )
            on_click(
                all_button,
                label_everything_coloured,
                label_everything,
                [all_image, all_labels, all_threshold],
                [all_output, all_table],
                "label_everything",
            )
    return app


def main(
    model: str | None = None, port: int = 7860, share: bool = False, threads: int = 1, host: str = "127.0.0.1"
) -> None:
    """Load the model and serve the app on `host` (blocks until interrupted)."""
    torch.set_num_threads(threads)
    demo = SamClipDemo.load(model)
    cache_dir = examples_cache_dir(demo)
    app = build_demo(demo, cache_dir)
    app.launch(
        server_name=host,
        server_port=port,
        share=share,
        allowed_paths=[str(EXAMPLES_DIR), str(PHOTOS_DIR), str(cache_dir)],
    )


if __name__ == "__main__":  # on Spaces, which set GRADIO_SERVER_NAME/PORT
    main(
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        threads=int(os.environ.get("SAMCLIP_THREADS", "1")),
        host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
    )

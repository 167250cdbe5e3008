"""The encoder's per-call work removed (issue 14): the same values as SAM's own layers to the bit, caches that
follow the parameters, and a torch.compile'd encoder and head without graph breaks."""

import math

import pytest
import torch
from conftest import make_tiny_teachers
from torch.profiler import ProfilerActivity, profile
from transformers.models.sam.modeling_sam import SamVisionLayer

from transformers_samclip import SamClipModel
from transformers_samclip.modeling.modeling_samclip import SamClipVisionLayer, _rel_pos_table


@pytest.fixture(scope="module")
def sdpa_teachers(tokenizer):
    return make_tiny_teachers(tokenizer, attn_implementation="sdpa")


@pytest.fixture()
def sdpa_merged(sdpa_teachers):
    return SamClipModel.from_teachers(*sdpa_teachers)


def test_rel_pos_table_equals_sams_gather(sdpa_merged):
    attention = sdpa_merged.vision_encoder.layers[0].attn
    generator = torch.Generator().manual_seed(0)
    for length in (7, 15, 27, 127):
        rel_pos = torch.randn(length, 8, generator=generator)
        for q_size, k_size in ((4, 4), (8, 8), (14, 14), (64, 64), (3, 5), (6, 2)):
            expected = attention.get_rel_pos(q_size, k_size, rel_pos)
            assert torch.equal(_rel_pos_table(rel_pos, q_size, k_size), expected), (length, q_size, k_size)


def test_layers_equal_sams_forward_at_every_grid(sdpa_merged):
    """Global and windowed layers (one window, several, padded), trunk and CLIP head, against SAM's own forward."""
    layers = [*sdpa_merged.vision_encoder.layers, *sdpa_merged.clip_head.layers]
    assert {layer.window_size for layer in layers} == {0, 4}
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for grid in (4, 6, 8, 12):
            tokens = torch.randn(2, grid, grid, 32, generator=generator)
            for layer in layers:
                for _ in range(2):  # the second call reads the cached tables
                    assert torch.equal(layer(tokens), SamVisionLayer.forward(layer, tokens)), (grid, layer.window_size)


def test_sam_path_equals_sam_model_to_the_bit(sdpa_teachers, sdpa_merged):
    sam, _ = sdpa_teachers
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = sam.get_image_embeddings(pixels)
        assert torch.equal(sdpa_merged.get_image_embeddings(pixels), expected)
        assert torch.equal(sdpa_merged.get_image_embeddings(pixels), expected)  # from the caches


def test_attention_bias_is_written_once_in_sdpas_layout(sdpa_merged):
    """SAM's layer copies the whole (batch, heads, tokens, tokens) bias once more after building it; this one not."""
    layer = sdpa_merged.clip_head.layers[0]  # global attention: 64 tokens of a 8x8 grid, 4 heads
    tokens = torch.randn(2, 8, 8, 32)
    bias_size = 2 * layer.attn.num_attention_heads * 64 * 64

    def bias_copies(forward) -> int:
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            forward(tokens)
        return sum(
            1
            for e in prof.events()
            if e.name == "aten::copy_" and e.input_shapes and math.prod(e.input_shapes[0]) >= bias_size
        )

    assert bias_copies(lambda x: SamVisionLayer.forward(layer, x)) == 1
    assert bias_copies(layer) == 0


def test_rel_pos_cache_follows_the_parameters(sdpa_merged):
    layer = sdpa_merged.clip_head.layers[0]
    assert isinstance(layer, SamClipVisionLayer) and layer.window_size == 0
    with torch.no_grad():
        first = layer.rel_pos_tables(4, 4)
        assert layer.rel_pos_tables(4, 4) is first  # kept between calls
        layer.attn.rel_pos_h.add_(1.0)  # an in-place update as an optimizer step makes
        updated = layer.rel_pos_tables(4, 4)
    # (interpolated tables: +1 up to rounding)
    assert torch.allclose(updated[0], first[0] + 1, atol=1e-6) and torch.equal(updated[1], first[1])
    # Under autograd with trainable tables: built fresh, so gradients reach rel_pos_h and rel_pos_w.
    tables = layer.rel_pos_tables(4, 4)
    assert tables is not updated and tables[0].grad_fn is not None
    (tables[0].sum() + tables[1].sum()).backward()
    assert layer.attn.rel_pos_h.grad.abs().sum() > 0 and layer.attn.rel_pos_w.grad.abs().sum() > 0
    # Frozen tables cached under inference_mode are not handed to autograd afterwards.
    layer.attn.requires_grad_(False)
    with torch.inference_mode():
        in_inference = layer.rel_pos_tables(4, 4)
    outside = layer.rel_pos_tables(4, 4)
    assert in_inference[0].is_inference() and not outside[0].is_inference()


def test_compiled_encoder_and_head_have_no_graph_breaks_and_match_eager(sdpa_merged):
    """fullgraph=True fails on any graph break. One compile at one fixed size covers the trunk (windowed layers
    with padding, global layers), the neck and the CLIP head (global layers, pooling, projector)."""
    torch._dynamo.reset()

    def both_heads(pixels):
        encoded = sdpa_merged.vision_encoder(pixels)
        _, embedding = sdpa_merged.clip_head(encoded.trunk_hidden_state)
        return encoded.last_hidden_state, embedding

    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))  # grid 6: windows pad to 8
    with torch.no_grad():
        eager = both_heads(pixels)
        compiled = torch.compile(both_heads, fullgraph=True, dynamic=False)(pixels)
    for got, expected in zip(compiled, eager):
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-4, (got - expected).abs().max().item()


def test_prompted_forward_traces_as_one_graph(sdpa_merged):
    """The whole SAM-path forward with point and box prompts (encoder, prompt checks, decoder) and the CLIP path with
    text: one graph each, so neither compiled nor eager GPU runs wait on the host mid-forward."""
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    points, labels = torch.full((2, 1, 1, 2), 32.0), torch.ones(2, 1, 1, dtype=torch.int)
    boxes = torch.tensor([[[1.0, 2.0, 30.0, 40.0]], [[10.0, 10.0, 60.0, 50.0]]])
    input_ids = torch.tensor([[0, 5, 6, 1], [0, 7, 1, 1]])
    calls = {
        "sam_path": lambda: sdpa_merged(
            pixel_values=pixels, input_points=points, input_labels=labels, input_boxes=boxes
        ),
        "clip_path": lambda: sdpa_merged(pixel_values=pixels[..., :32, :32], input_ids=input_ids),
    }
    with torch.no_grad():
        for name, call in calls.items():
            explained = torch._dynamo.explain(call)()
            assert (explained.graph_count, explained.graph_break_count) == (1, 0), (name, explained.break_reasons)

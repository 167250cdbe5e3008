"""Hub release (export, model card, push) and the loader the Gradio demo uses."""

from .card import METRICS, load_results, render_model_card
from .export import HubError, LoadedModel, export_model, load_samclip, push_model
from .onnx import export_onnx, quantize_onnx

__all__ = [
    "METRICS",
    "HubError",
    "LoadedModel",
    "export_model",
    "export_onnx",
    "load_results",
    "load_samclip",
    "push_model",
    "quantize_onnx",
    "render_model_card",
]

"""The metric Space's entry point (evaluate's standard widget)."""

import evaluate
from evaluate.utils import launch_gradio_widget

launch_gradio_widget(evaluate.load("samclip_metrics.py", "semantic_segmentation"))

"""The Gradio Space (`app.py`), shipped inside the package as `transformers_samclip.demo` so that `samclip demo`
works from a wheel; it is deployed to the Hub as its own repo."""

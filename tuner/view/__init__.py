"""The experiment viewer: ``python -m tuner.view experiments/`` serves a local page over
experiment folders, finished or running (``load`` reads them, ``app`` draws them).

Panel (HoloViz, on Bokeh) rather than Gradio: widgets with server-side Python callbacks and
Bokeh plots (log axes, hover, zoom) with no JavaScript of ours, a periodic callback to follow a
running experiment, and every asset bundled with the package (no CDN: offline cluster nodes).
"""

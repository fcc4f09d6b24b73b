"""The visualizer: render.py and charts.py turn events into HTML and Plotly figures, session.py runs the engine for
visitors, app.py lays out the Gradio page. render and charts never import torch."""

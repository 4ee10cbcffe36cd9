"""Every picture the nodes show (mask previews, interference heatmaps, attention-map
panels), drawn with one palette and font (``render.palette``). Pure numpy/PIL/torch."""

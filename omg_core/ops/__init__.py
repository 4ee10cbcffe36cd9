"""The math on concepts and regions: orthogonality, fusion, region masks, regional
attention mixing, layer-wise embeddings. Pure torch, tested without ComfyUI."""

"""What a concept is: its layer updates (one interface for every kind) and trigger
embeddings, and the shared orthogonal basis concepts are trained in. Pure torch."""

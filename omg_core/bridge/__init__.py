"""Everything that touches ComfyUI objects: binding files to a model's layers,
weight patches, attention patches and their recorder, placement wrappers,
trigger tokens in the text encoder, the model the trainer trains.

ComfyUI is imported inside functions, so importing these modules never needs it."""

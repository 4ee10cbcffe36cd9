"""Stable Diffusion XL: CLIP-L and CLIP-G, whose features are concatenated (768 + 1280)."""

from types import MappingProxyType

from omg_core.families.family import CLIP_G, CLIP_L, Family

SDXL = Family(
    name="sdxl",
    label="SDXL",
    context_dim=2048,
    text_encoders=(CLIP_L, CLIP_G),
    unet=MappingProxyType(
        dict(
            model_channels=320,
            in_channels=4,
            out_channels=4,
            num_res_blocks=[2, 2, 2],
            channel_mult=[1, 2, 4],
            transformer_depth=[0, 0, 2, 2, 10, 10],
            transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
            transformer_depth_middle=10,
            num_head_channels=64,
            context_dim=2048,
            use_linear_in_transformer=True,
            use_spatial_transformer=True,
            legacy=False,
            num_classes="sequential",
            adm_in_channels=2816,
            use_temporal_attention=False,
            use_temporal_resblock=False,
            image_size=32,
        )
    ),
)

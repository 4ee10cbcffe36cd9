"""Stable Diffusion 1.x (1.4, 1.5 and their fine-tunes): one CLIP-L text encoder."""

from types import MappingProxyType

from omg_core.families.family import CLIP_L, Family

SD15 = Family(
    name="sd15",
    label="SD1.5",
    context_dim=768,
    text_encoders=(CLIP_L,),
    unet=MappingProxyType(
        dict(
            model_channels=320,
            in_channels=4,
            out_channels=4,
            num_res_blocks=[2, 2, 2, 2],
            channel_mult=[1, 2, 4, 4],
            transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
            transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            transformer_depth_middle=1,
            num_heads=8,
            context_dim=768,
            use_linear_in_transformer=False,
            use_spatial_transformer=True,
            legacy=False,
            adm_in_channels=None,
            use_temporal_attention=False,
            use_temporal_resblock=False,
            image_size=32,
        )
    ),
)

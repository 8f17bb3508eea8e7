"""The settings every training test runs with."""

# Tiny models (d = 32) and few epochs: what every training test runs with (``--set`` items; add more after them).
TINY = ["adapter.dim=32", "adapter.num_heads=4", "adapter.ffn_dim=64", "adapter.num_layers=2",
        "adapter.conv_pos_kernel=16", "adapter.conv_pos_groups=4",
        "pretrain.epochs=2", "pretrain.batch_size=8", "pretrain.num_codes=16", "pretrain.sd_hidden_dim=64",
        "pretrain.sd_bottleneck_dim=32", "pretrain.sd_out_dim=64", "pretrain.short_crop_frames=[10,20]",
        "stage2.epochs=6", "stage2.batch_size=8", "stage2.lr=1e-3",
        "trainer.accelerator=cpu", "val_fraction=0.2"]

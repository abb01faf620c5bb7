"""The tiny train_toy.py settings of test_train_toy.py and test_train_resume.py: every stage end to end
in a few seconds (4 steps of 4 examples, 8-channel U-Nets, 2 sampling steps)."""

STEPS = 4
TINY = ("--train_size 48 --eval_size 4 --log_every 2 --ckpt_every 2 "
        "--clip.vision_width 32 --clip.vision_layers 1 --clip.transformer_width 32 "
        "--clip.transformer_layers 1 --clip.embed_dim 16 "
        "--prior.width 32 --prior.layers 1 --prior.heads 1 "
        "--decoder.channels 8 --decoder.channel_mults 1,2,2 --decoder.head_channels 8 "
        "--decoder.text_layers 1 --decoder.text_width 16 --decoder.text_heads 1 --decoder.num_res_blocks 1 "
        "--up1.channels 8 --up2.channels 8 "
        "--sampling.prior_steps 2 --sampling.decoder_steps 2 --sampling.up_steps 2,2").split()
for _stage in ("clip", "prior", "decoder", "up1", "up2"):
    TINY += [f"--opt_{_stage}.steps", str(STEPS), f"--opt_{_stage}.batch", "4"]

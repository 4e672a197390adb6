"""The image modality, shared by the image families (DCGAN, MLP GAN, VAE, and a plugin that wants them):
training data, PNG encoding, the generation sampler, the evaluation against real data, and report cards."""

"""Controlled studies: a plan of arms × seeds, each pretrained, probed and finetuned under one budget on
one dataset, run resumably and reported with mean ± std and paired differences (``mv2mae experiment``)."""

"""Interoperation with other implementations of Deformable DETR: the official
release's and HF transformers' weights converted into ours (state_dicts,
converter), and HF's model shaped like ours for comparisons (hf_peer, which
needs transformers)."""

"""Scale-out pieces on ``torch.distributed``: ring attention for context parallelism (:mod:`.ring_attention`)."""

"""The end-to-end demo: drive load at a SpeculativeInference and show what the operator did."""

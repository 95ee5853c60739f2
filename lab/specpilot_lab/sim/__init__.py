"""The vLLM stand-in: a calibrated speculative-decoding simulator that speaks vLLM's API."""

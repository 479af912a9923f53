"""What a new prompt length costs the first time, per torch attention backend: `python3 bench/sdpa_lengths.py`.

Prefill attends over each prompt at its own length (awqd.engine.model). This times a Llama-2-7B-shaped causal SDPA
(32 heads of 128, fp16) at 64 distinct lengths (64-191 tokens, a wave of clients' mixed prompts), twice over, with
only one backend allowed, each backend in a fresh process so that nothing is cached from another. A backend that
builds a plan per new length shows it as a first pass far slower than the second. Prints a JSON line per backend.
"""

import json
import subprocess
import sys
import time

BACKENDS = ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION")
LENGTHS = range(64, 192, 2)


def child(backend: str) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def one_pass() -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        for length in LENGTHS:
            q, k, v = (torch.randn(1, 32, length, 128, dtype=torch.float16, device="cuda") for _ in range(3))
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.cuda.synchronize()
        return time.perf_counter() - started

    torch.zeros(1, device="cuda")  # the CUDA context, outside the timing
    with sdpa_kernel(getattr(SDPBackend, backend)):
        first, second = one_pass(), one_pass()
    return {"backend": backend, "lengths": len(LENGTHS), "first_pass_s": round(first, 4), "second_s": round(second, 4)}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
        return 0
    for backend in BACKENDS:
        command = [sys.executable, __file__, "--child", backend]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        print(done.stdout.strip() or json.dumps({"backend": backend, "error": done.stderr.strip()[-500:]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
